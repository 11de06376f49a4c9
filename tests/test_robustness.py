"""Any byte string gets a well-formed answer; state survives kill -9; keys never leave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mynacard import Card, open_card
from mynacard.personalize.profile import Profile, load_profile

JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
TOKEN_READ = bytes.fromhex("00A4020C02000600B0000004")


@pytest.fixture(scope="module", params=["default", "taxi-tickets"])
def profile(request: pytest.FixtureRequest) -> Profile:
    return load_profile(request.param)


@pytest.fixture(scope="module")
def card(profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Card]:
    with open_card(profile, tmp_path_factory.mktemp("state")) as c:
        yield c


def key_windows(profile: Profile) -> list[bytes]:
    """16-byte windows of every private-key secret (primes and exponents) of the card."""
    assert profile.jpki is not None
    windows = []
    for key in (profile.jpki.auth_key, profile.jpki.sign_key):
        assert key is not None
        numbers = key.private_numbers()
        for secret in (numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1):
            raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
            windows += [raw[i : i + 16] for i in range(0, len(raw) - 16, 16)]
    return windows


AIDS = [
    "D392F000260100000001",
    "D3921000310001010408",
    "D3921000310001010402",
    "D3921000310001010401",
    "D3921000310001010100",
    "F0544158490001",  # taxi-tickets' free-area application
]
# Every instruction the card knows, the free-area writes included.
INSTRUCTIONS = [0xA4, 0xB0, 0x20, 0x24, 0x2A, 0x32, 0x84, 0x88, 0xB2, 0xCA, 0xC0, 0xAE]
INSTRUCTIONS += [0xD6, 0xDC, 0xE2, 0x30, 0x82]
commands = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(AIDS).map(
        lambda aid: bytes((0, 0xA4, 4, 0x0C, len(aid) // 2)) + bytes.fromhex(aid)
    ),
    st.builds(
        lambda cla, ins, p1, p2, body: bytes((cla, ins, p1, p2)) + body,
        st.sampled_from([0x00, 0x80, 0x0C, 0x01, 0xFF]),
        st.sampled_from(INSTRUCTIONS),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=270),
    ),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(commands, max_size=8))
def test_any_bytes_get_a_well_formed_answer(
    card: Card, profile: Profile, apdus: list[bytes]
) -> None:
    secrets = key_windows(profile)
    card.transmit(JPKI)
    for apdu in apdus:
        response = card.transmit(apdu)
        assert len(response) >= 2
        # Never 6F00: that is what an exception inside a handler turns into.
        assert response[-2] in (0x63, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6D, 0x6E, 0x90)
        assert not any(window in response for window in secrets)
    assert card.transmit(JPKI) == b"\x90\x00"
    assert card.transmit(TOKEN_READ[:7]) == b"\x90\x00"
    assert card.transmit(TOKEN_READ[7:]) == b"JPKI\x90\x00"


def test_wrong_try_survives_kill_9(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import sys, time
        from mynacard import open_card
        card = open_card("default", {str(tmp_path)!r})
        card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))
        card.transmit(bytes.fromhex("00A4020C020018"))
        print(card.transmit(bytes.fromhex("0020008004") + b"0000").hex(), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "63c2"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with open_card("default", tmp_path) as c:
        c.transmit(JPKI)
        c.transmit(bytes.fromhex("00A4020C020018"))
        assert c.transmit(bytes.fromhex("00200080")).hex() == "63c2"


@pytest.mark.parametrize(
    ("aid", "expected"),
    [
        ("D392F000260100000001", "6982"),  # JPKI-AP
        ("D3921000310001010408", "6982"),  # text AP, before its PIN
        ("D3921000310001010402", "66F1"),  # visual AP
        ("D3921000310001010401", "6982"),  # 住基AP
        ("D3921000310001010100", "66F1"),  # 共通カードAP
        ("F0544158490001", "6D00"),  # a free-area application
    ],
)
def test_set_session_key_is_refused_as_measured(tmp_path: Path, aid: str, expected: str) -> None:
    """SET SESSION KEY (80 AE, a 256-byte cryptogram): docs/card-spec.md §2.4's measured answers."""
    with open_card("taxi-tickets", tmp_path) as c:
        assert (
            c.transmit(bytes((0, 0xA4, 4, 0x0C, len(aid) // 2)) + bytes.fromhex(aid)) == b"\x90\x00"
        )
        answer = c.transmit(bytes.fromhex("80AE0000000100") + bytes(range(256)))
        assert answer.hex().upper() == expected
        assert c.transmit(bytes.fromhex("80AE0000")).hex().upper() == expected  # whatever the data
