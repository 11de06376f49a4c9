"""Secure messaging on the text AP (docs/secure-messaging.md), in process and through pcscd:
the client flow of myna-card's example, then every fault case of the public description."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cardtest import CardProfile, TestedCard, apdu, ok, select, select_ef, sw, tx
from cryptography.hazmat.primitives.asymmetric import rsa

from mynacard import commands, open_card
from mynacard.apdu import INS, CommandApdu
from mynacard.commands import secure_messaging
from mynacard.conformance.bench import Bench
from mynacard.conformance.profile import read_profile
from mynacard.conformance.runner import RunConfig, make_link, run_bench
from mynacard.conformance.secure_messaging import _OAEP as OAEP
from mynacard.conformance.secure_messaging import (
    SEED_HEADER,
    SmClient,
    ber_object,
    encrypt,
    session_public_key,
    wrapped_answer,
)
from mynacard.conformance.targets import CardLike, EmulatorTarget, RecordingTarget
from mynacard.conformance.transcript import Recorder, format_transcript
from mynacard.session import Context, Handler

TEXT_AP = bytes.fromhex("D3921000310001010408")
JPKI_AP = bytes.fromhex("D392F000260100000001")
CODE_A_SFI = 0x94  # VERIFY P2 = 80 | 14


def read_whole(card: TestedCard[object], fid: int) -> bytes:
    """A plain read of an EF to its end (extended Le)."""
    ok(select_ef(card.transmit, fid))
    return ok(card.transmit(b"\x00\xb0\x00\x00\x00\x00\x00"))


def with_text_pin(card: TestedCard[object]) -> SmClient:
    """Select the text AP, VERIFY its PIN in clear, read EF 0006: a client for a session."""
    select(card.transmit, TEXT_AP)
    ok(select_ef(card.transmit, 0x0011))
    ok(card.transmit(apdu("00200080", card.profile.pins["text"].encode())))
    return SmClient(session_public_key(read_whole(card, 0x0006)))


def opened(card: TestedCard[object]) -> SmClient:
    client = with_text_pin(card)
    ok(card.transmit(client.open()))
    return client


def test_client_flow_reads_the_my_number_and_the_four_facts(card: TestedCard[object]) -> None:
    """myna-card's example: PIN in clear, SET SESSION KEY, 照合番号A under SM (N=1), then
    SELECT + READ of 0001, 0002 and 0001 again (the physical read) under N = 2..7."""
    profile = card.profile
    client = with_text_pin(card)
    in_clear = read_whole(card, 0x0001)
    attributes = read_whole(card, 0x0002)
    assert ok(card.transmit(client.open())) == b""
    assert ok(card.transmit(client.verify(CODE_A_SFI, profile.pins["code_a"].encode()))) == b""
    reads = []
    for fid in (0x0001, 0x0002, 0x0001):
        assert sw(card.transmit(client.select_ef(fid))) == "9000"
        response = card.transmit(client.read_binary())
        reads.append(client.unwrap(response))
        assert response == wrapped_answer(client.key, client.last, reads[-1])  # byte for byte
    my_number, facts, physical = reads
    assert client.last == 7
    assert physical == my_number == in_clear
    assert physical == b"\xff\x10\x0c" + profile.my_number.encode() + b"\xff\xff"
    assert facts == attributes
    for value in (profile.holder.name, profile.holder.address):
        assert value.encode("utf-8") in facts
    assert profile.holder.birth_date.strftime("%Y%m%d").encode() in facts


def test_a_length_and_an_offset_in_do_96(card: TestedCard[object]) -> None:
    client = opened(card)
    ok(card.transmit(client.select_ef(0x0001)))
    part = client.unwrap(card.transmit(client.read_binary(3, 12)))
    assert part == card.profile.my_number.encode()


@pytest.mark.parametrize("verified", ["nothing", "code_a"])
def test_set_session_key_wants_the_pin_first(card: TestedCard[object], verified: str) -> None:
    select(card.transmit, TEXT_AP)
    client = SmClient(session_public_key(read_whole_after_code(card, verified)))
    assert sw(card.transmit(client.open())) == "6982"
    assert sw(card.transmit(client.select_ef(0x0001))) == "6882"  # no session was opened


def read_whole_after_code(card: TestedCard[object], verified: str) -> bytes:
    """EF 0006 read after 照合番号A (or, with nothing verified, from the profile)."""
    if verified == "nothing":
        text_ap = card.profile.text_ap
        assert text_ap is not None
        return _ef_0006(text_ap.session_public_key)
    ok(card.transmit(apdu("00200094", card.profile.pins["code_a"].encode())))
    return read_whole(card, 0x0006)


def _ef_0006(key: rsa.RSAPublicKey) -> bytes:
    numbers = key.public_numbers()
    body = ber_object(0x90, numbers.e.to_bytes(3, "big")) + ber_object(
        0x91, numbers.n.to_bytes(256, "big")
    )
    return ber_object(0xA1, body)


@pytest.mark.parametrize(
    ("cryptogram", "expected"),
    [
        pytest.param("other key", "6A80", id="wrong-public-key"),
        pytest.param("checksum key", "6A80", id="A0-81-form"),
        pytest.param("not below the modulus", "6F00", id="above-modulus"),
        pytest.param("short", "6A80", id="128-bytes"),
    ],
)
def test_set_session_key_refuses_a_bad_cryptogram(
    card: TestedCard[object], cryptogram: str, expected: str
) -> None:
    client = with_text_pin(card)
    seed = bytes(range(32))
    if cryptogram == "other key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        data = other.encrypt(SEED_HEADER + seed, OAEP)
    elif cryptogram == "checksum key":
        data = client.public_key.encrypt(bytes.fromhex("A0228120") + seed, OAEP)
    elif cryptogram == "short":
        data = b"\x01" * 128
    else:
        data = b"\xff" * 256
    command = bytes.fromhex("80AE000000") + len(data).to_bytes(2, "big") + data
    assert sw(card.transmit(command)) == expected
    assert sw(card.transmit(client.select_ef(0x0001))) == "6882"


def test_a_wrong_counter_breaks_the_session_and_a_new_key_opens_another(
    card: TestedCard[object],
) -> None:
    client = opened(card)
    ok(card.transmit(client.select_ef(0x0001)))
    client.counter += 1  # skip one
    assert sw(card.transmit(client.select_ef(0x0002))) == "6988"
    for command in (client.select_ef(0x0001), client.read_binary(), client.verify(0x91, b"0")):
        assert sw(card.transmit(command)) == "69FC"
    assert tx(card, "00A4020C020001", "00B0000003") == "FF100C9000"  # plain still works
    reopened = SmClient(client.public_key)
    ok(card.transmit(reopened.open()))  # the PIN still holds: a new session, N from 1
    ok(card.transmit(reopened.select_ef(0x0001)))
    assert reopened.unwrap(card.transmit(reopened.read_binary())).startswith(b"\xff\x10\x0c")


def test_refused_commands_move_the_counter_and_plain_ones_do_not(
    card: TestedCard[object],
) -> None:
    client = opened(card)
    blocked = card.profile.quirks.blocked_sw
    assert card.transmit(client.verify(0x92, b"1234")) == blocked.to_bytes(2, "big")  # key 0012
    assert sw(card.transmit(client.verify(CODE_A_SFI, b"000000000000"))) == "63C2"  # a try spent
    assert sw(card.transmit(client.select_ef(0x0099))) == "6A82"
    assert tx(card, "00A4020C020002", "00B0000002") == "FF209000"  # plain, in between
    ok(card.transmit(client.select_ef(0x0001)))  # N = 4: three refusals counted
    assert client.unwrap(card.transmit(client.read_binary())).startswith(b"\xff\x10\x0c")
    ok(card.transmit(client.verify(CODE_A_SFI, card.profile.pins["code_a"].encode())))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("96", id="DO-96-on-SELECT"),
        pytest.param("two", id="a-second-DO-86"),
        pytest.param("indicator", id="indicator-02"),
        pytest.param("87", id="DO-87"),
    ],
)
def test_a_malformed_body_is_6988_and_breaks_the_session(
    card: TestedCard[object], body: str
) -> None:
    client = opened(card)
    do86 = ber_object(0x86, b"\x01" + encrypt(client.key, 1, b"\x00\x01"))
    data = {
        "96": ber_object(0x96, b"\x00\x00\x00"),
        "two": do86 + do86,
        "indicator": ber_object(0x86, b"\x02" + encrypt(client.key, 1, b"\x00\x01")),
        "87": ber_object(0x87, b"\x01" + encrypt(client.key, 1, b"\x00\x01")),
    }[body]
    assert sw(card.transmit(bytes((0x08, 0xA4, 0x02, 0x0C, len(data))) + data)) == "6988"
    client.counter = 2
    assert sw(card.transmit(client.select_ef(0x0001))) == "69FC"


def test_long_length_form_and_cla_0c(card: TestedCard[object]) -> None:
    client = opened(card)
    value = b"\x01" + encrypt(client.key, 1, b"\x00\x01")
    data = b"\x86\x81" + bytes((len(value),)) + value
    assert sw(card.transmit(bytes((0x08, 0xA4, 0x02, 0x0C, len(data))) + data)) == "9000"
    client.counter = 2
    assert sw(card.transmit(b"\x0c" + client.select_ef(0x0002)[1:])) == "6987"
    client.counter = 2  # 6987 neither moved the counter nor broke the session
    ok(card.transmit(client.select_ef(0x0002)))


def test_secure_messaging_with_no_session(card: TestedCard[object]) -> None:
    select(card.transmit, TEXT_AP)
    assert tx(card, "08A4020C0486020000") == "6882"
    assert tx(card, "08B0000000000596030000000000") == "69FC"
    assert tx(card, "082000940486020000") == "69FC"
    assert tx(card, "0CB0000000") == "69FC"


@pytest.mark.parametrize("how", ["select-text-ap", "select-jpki", "reset", "power-off"])
def test_the_session_ends(card: TestedCard[object], how: str) -> None:
    client = opened(card)
    ok(card.transmit(client.select_ef(0x0001)))
    if how == "select-text-ap":
        select(card.transmit, TEXT_AP)
    elif how == "select-jpki":
        select(card.transmit, JPKI_AP)
        select(card.transmit, TEXT_AP)
    elif how == "reset":
        card.reset()
        select(card.transmit, TEXT_AP)
    else:
        card.power_cycle()
        select(card.transmit, TEXT_AP)
    assert sw(card.transmit(client.select_ef(0x0002))) == "6882"
    assert sw(card.transmit(client.read_binary())) == "69FC"


@pytest.mark.parametrize(
    ("card_profile", "plain"),
    [
        (CardProfile(), "FF100C9000"),
        (
            CardProfile.of(
                edits={"t0_chaining = false": "t0_chaining = false\nsm_break_blocks_plain = true"}
            ),
            "69FC",
        ),
    ],
    ids=["plain-goes-on", "quirk-plain-69FC"],
    indirect=["card_profile"],
)
def test_plain_commands_after_a_break(card: TestedCard[object], plain: str) -> None:
    """docs/decisions.md #37: after 6988 only SM commands answer 69FC, unless the quirk
    `sm_break_blocks_plain` makes every command but SELECT of an application do so."""
    client = opened(card)
    client.counter = 5
    assert sw(card.transmit(client.select_ef(0x0001))) == "6988"
    assert tx(card, "00A4020C020001", "00B0000003") == plain
    select(card.transmit, TEXT_AP)  # a new selection ends the broken session, the PIN stays
    assert tx(card, "00A4020C020001", "00B0000003") == "FF100C9000"
    assert tx(card, "08A4020C0486020000") == "6882"


# -- the conformance bench's SM reference ------------------------------------------------------


def _key_from_the_wrong_half(ctx: Context, apdu: CommandApdu) -> bytes:
    """SET SESSION KEY keeping seed[16:32] as the key (the source says seed[0:16])."""
    answer = secure_messaging.set_session_key(ctx, apdu)
    channel = ctx.session.channel
    assert channel is not None
    session_key = ctx.session.app.session_key if ctx.session.app else None
    assert session_key is not None
    seed = session_key.decrypt(apdu.data, OAEP)[4:]
    channel.key = seed[16:]
    return answer


def _counter_from_zero(ctx: Context, apdu: CommandApdu) -> bytes:
    """SET SESSION KEY starting the counter at 0 (the source says 1)."""
    answer = secure_messaging.set_session_key(ctx, apdu)
    assert ctx.session.channel is not None
    ctx.session.channel.counter = 0
    return answer


def _mutant(handler: Handler) -> Callable[[Path], CardLike]:
    handlers = {cla: dict(table) for cla, table in commands.DISPATCH.items()}
    handlers[0x80][INS.SET_SESSION_KEY] = handler
    return lambda state: open_card("default", state, handlers=handlers)


@pytest.mark.parametrize(
    "mutant",
    [
        pytest.param(_key_from_the_wrong_half, id="key-from-seed-16-32"),
        pytest.param(_counter_from_zero, id="counter-from-0"),
    ],
)
def test_the_bench_catches_a_wrong_session(mutant: Handler) -> None:
    """The bench's SM rule checks answers byte for byte: a card with the wrong key or the
    wrong first counter deviates, and the transcript shows the plaintext of SM exchanges."""
    target = EmulatorTarget("default", opener=_mutant(mutant))
    try:
        bench = Bench(make_link(target, read_profile("default"), {}, 0))
        result = run_bench(bench, RunConfig(seed=2024, max_examples=100))
    finally:
        target.close()
    assert result.deviations
    text = format_transcript(result.deviations[0].transcript)
    assert "SET SESSION KEY: a seed of 32 bytes" in text
    assert "80AE0000000100" in text and "\n08" in text


def test_the_bench_opens_uses_breaks_and_reopens_sessions() -> None:
    """On the real emulator the SM rule finds nothing, and its traffic has every case."""
    recorder = Recorder()
    target = EmulatorTarget("default")
    try:
        bench = Bench(make_link(RecordingTarget(target, recorder), read_profile("default"), {}, 0))
        result = run_bench(bench, RunConfig(seed=2, max_examples=40))
    finally:
        target.close()
    assert not result.deviations
    answers = {
        exchange.command[:4].hex().upper() + exchange.expected.text[-4:]
        for exchange in recorder
        if exchange.command[:1] in (b"\x80", b"\x08", b"\x0c")
    }
    cases = ("80AE00009000", "08B000009000", "08B000006988", "08A4020C6988", "08A4020C69FC")
    for seen in (*cases, "0CA4020C6987"):
        assert seen in answers, seen
