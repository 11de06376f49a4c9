"""Faulty-card modes: each fault a layer, chosen by a TOML plan; off unless named."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mynacard import open_card
from mynacard.faults import CardRemoved, Fault, read_plan, stack_faults
from mynacard.layers import CardInterface
from mynacard.personalize.fields import ProfileError

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_TOKEN = bytes.fromhex("00A4020C020006")
READ_TOKEN = bytes.fromhex("00B0000000")  # 256 bytes asked, the EF holds 160
READ_CERT = bytes.fromhex("00A4020C02000A")


def faulty(tmp_path: Path, *faults: Fault, seed: int = 1) -> tuple[CardInterface, list[str]]:
    notes: list[str] = []
    card = stack_faults(open_card("default", tmp_path), list(faults), seed, notes.append)
    card.power_on()
    return card, notes


def token(card: CardInterface) -> bytes:
    assert card.transmit(SELECT_JPKI) == b"\x90\x00"
    assert card.transmit(SELECT_TOKEN) == b"\x90\x00"
    return card.transmit(READ_TOKEN)


def test_no_fault_no_change(tmp_path: Path) -> None:
    plain = token(open_card("default", tmp_path / "a"))
    card, notes = faulty(tmp_path / "b")
    assert token(card) == plain and len(plain) == 162 and notes == []


def test_wrong_le_then_the_right_answer(tmp_path: Path) -> None:
    card, notes = faulty(tmp_path, Fault("wrong-le", ins=frozenset({0xB0})))
    assert token(card) == b"\x6c\xa0"
    answer = card.transmit(READ_TOKEN[:4] + b"\xa0")
    assert len(answer) == 162 and answer.endswith(b"\x90\x00") and notes == ["fault wrong-le"]


def test_wrong_le_forgets_its_answer_when_another_command_comes(tmp_path: Path) -> None:
    card, _ = faulty(tmp_path, Fault("wrong-le", ins=frozenset({0xB0})))
    assert token(card) == b"\x6c\xa0"
    assert card.transmit(READ_CERT) == b"\x90\x00"  # SELECT: no fault names it
    answer = card.transmit(READ_TOKEN[:4] + b"\xa0")  # the certificate's first bytes now
    assert answer[:2] == b"\x30\x82" and answer[-2:] == b"\x90\x00"


@pytest.mark.parametrize(("kind", "check"), [("truncate", 161), ("corrupt", 162)])
def test_broken_frames(tmp_path: Path, kind: str, check: int) -> None:
    plain = token(open_card("default", tmp_path / "plain"))
    card, _ = faulty(tmp_path / "f", Fault(kind, ins=frozenset({0xB0})))
    answer = token(card)
    assert len(answer) == check and answer != plain


def test_delay_every_nth(tmp_path: Path) -> None:
    card, notes = faulty(tmp_path, Fault("delay", every=2, ms=150))
    started = time.monotonic()
    card.transmit(SELECT_JPKI)
    fast = time.monotonic() - started
    card.transmit(SELECT_JPKI)
    assert time.monotonic() - started - fast >= 0.15 and notes == ["fault delay"]


def test_removed_and_power_loss_answer_nothing(tmp_path: Path) -> None:
    card, _ = faulty(tmp_path / "r", Fault("remove", after=1))
    card.transmit(SELECT_JPKI)
    with pytest.raises(CardRemoved):
        card.transmit(SELECT_TOKEN)
    card, _ = faulty(tmp_path / "p", Fault("power-loss", ins=frozenset({0x20})))
    assert card.transmit(SELECT_JPKI) == b"\x90\x00"
    with pytest.raises(CardRemoved):
        card.transmit(bytes.fromhex("00200081"))


def test_reset_after_the_command_ends_the_session(tmp_path: Path) -> None:
    card, _ = faulty(tmp_path, Fault("reset", ins=frozenset({0xA4}), after=1))
    assert card.transmit(SELECT_JPKI) == b"\x90\x00"
    assert card.transmit(SELECT_JPKI) == b"\x90\x00"  # answered, then the card reset
    assert card.transmit(SELECT_TOKEN) == b"\x6a\x82"  # no application selected any more


def test_after_counts_the_commands_no_fault_names(tmp_path: Path) -> None:
    """Commands no fault names pass the fault layers by, yet count for `after`."""
    card, notes = faulty(tmp_path, Fault("truncate", ins=frozenset({0xB0}), after=3))
    assert len(token(card)) == 162  # the 3rd command: not yet
    assert len(card.transmit(READ_TOKEN)) == 161 and notes == ["fault truncate"]


def test_two_faults_on_one_command_stack_in_plan_order(tmp_path: Path) -> None:
    plain = token(open_card("default", tmp_path / "plain"))
    reading = frozenset({0xB0})
    card, notes = faulty(
        tmp_path / "f", Fault("truncate", ins=reading), Fault("corrupt", ins=reading)
    )
    answer = token(card)
    assert len(answer) == 161 and answer != plain[:-1]  # corrupted inside, truncated outside
    assert notes == ["fault truncate", "fault corrupt"]


def test_chain_and_atr(tmp_path: Path) -> None:
    atr = bytes.fromhex("3B888001000005E0B381A1007F")
    card, _ = faulty(tmp_path, Fault("chain"), Fault("atr", atr=atr))
    assert card.power_on() == atr and card.atr == atr
    for command in (SELECT_JPKI, READ_CERT):
        card.transmit(command)
    assert card.transmit(bytes.fromhex("00B00000000000")) == b"\x61\x00"


def test_probability_follows_the_seed(tmp_path: Path) -> None:
    def hits(seed: int, where: Path) -> list[int]:
        card, _ = faulty(where, Fault("truncate", probability=0.5), seed=seed)
        return [len(card.transmit(SELECT_JPKI)) for _ in range(20)]

    first = hits(7, tmp_path / "a")
    assert first == hits(7, tmp_path / "b") and {1, 2} == set(first)
    assert first != hits(8, tmp_path / "c")


def test_plan_file(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'seed = 3\n[[fault]]\nkind = "delay"\nins = ["B0", "2a"]\nevery = 2\nms = 5\n'
        '[[fault]]\nkind = "atr"\natr = "3B888001000005E0B381A1007F"\n'
    )
    faults, seed = read_plan(plan)
    assert seed == 3 and faults[0] == Fault("delay", frozenset({0xB0, 0x2A}), every=2, ms=5)
    assert faults[1].atr[0] == 0x3B


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[fault]]\nkind = "melt"\n', "fault[0].kind: expected 'delay', 'wrong-le'"),
        ('[[fault]]\nkind = "delay"\nevery = 0\n', "fault[0].every: expected an integer 1 to"),
        ('[[fault]]\nkind = "delay"\nins = ["ZZ"]\n', "fault[0].ins[0]: expected 1 byte in hex"),
        ('[[fault]]\nkind = "delay"\nspeed = 1\n', "fault[0].speed: expected one of the fields"),
        ('[[fault]]\nkind = "atr"\n', "fault[0].atr: expected 2 to 33 bytes in hex, got nothing"),
        ("seed = 1\nfaults = 2\n", "faults: expected one of the fields seed, fault"),
        ('[[fault]]\nkind = "delay"\nprobability = 2\n', "probability: expected a number 0 to 1"),
        ("seed = ", "TOML"),
    ],
)
def test_bad_plans_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_plan(plan)
