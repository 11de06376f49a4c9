"""Layers around the card: T=0 chaining and the APDU log, each clearing its own state."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from mynacard import open_card
from mynacard.layers import ApduLog, CardInterface, Layer, T0Chaining, masked
from mynacard.personalize.profile import Quirks, load_profile

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_SIGN_PIN = bytes.fromhex("00A4020C02001B")
VERIFY_SIGN = bytes.fromhex("0020008006") + b"ABC123"
SELECT_SIGN_CERT = bytes.fromhex("00A4020C020001")
READ_EXTENDED = bytes.fromhex("00B00000000000")
GET_RESPONSE = bytes.fromhex("00C0000000")


def chained_card(tmp_path: Path) -> CardInterface:
    profile = load_profile("default")
    return open_card(dataclasses.replace(profile, quirks=Quirks(t0_chaining=True)), tmp_path)


def read_protected_certificate(card: CardInterface) -> bytes:
    for command in (SELECT_JPKI, SELECT_SIGN_PIN, VERIFY_SIGN, SELECT_SIGN_CERT):
        assert card.transmit(command) == b"\x90\x00"
    return card.transmit(READ_EXTENDED)


@pytest.mark.parametrize("event", ["reset", "power_cycle", "power_off"])
def test_pending_response_does_not_survive_reset_or_power_loss(tmp_path: Path, event: str) -> None:
    """The defect: data pending for GET RESPONSE outlived the session that could read it."""
    with chained_card(tmp_path) as card:
        assert isinstance(card, T0Chaining)
        assert read_protected_certificate(card) == b"\x61\x00"
        if event == "reset":
            card.reset()
        else:
            card.power_off()
            if event == "power_cycle":
                card.power_on()
        assert card.transmit(GET_RESPONSE) == b"\x69\x85"  # nothing pending: the card's answer


def test_another_command_drops_what_is_pending(tmp_path: Path) -> None:
    with chained_card(tmp_path) as card:
        assert read_protected_certificate(card) == b"\x61\x00"
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"
        assert card.transmit(GET_RESPONSE) == b"\x69\x85"


def test_open_card_stacks_no_layer_by_default(tmp_path: Path) -> None:
    with open_card("default", tmp_path) as card:
        assert not isinstance(card, Layer)
        assert isinstance(card, CardInterface)


@pytest.mark.parametrize(
    ("capdu", "shown"),
    [
        ("0020008006414243313233", "00 20 00 80 06 ** ** ** ** ** **"),
        ("0024018004393837360A", "00 24 01 80 04 ** ** ** ** **"),
        ("80320080043132333400", "80 32 00 80 04 ** ** ** ** **"),
        ("0082008110" + "AB" * 16, "00 82 00 81 10" + " **" * 16),
        ("0020008000000231323334", "00 20 00 80 00 00 02 ** ** ** **"),
        ("00200080", "00 20 00 80"),
        ("0032000401010000", "00 32 00 04 01 01 00 00"),  # INCREASE: no secret
        ("00A4020C020018", "00 A4 02 0C 02 00 18"),
    ],
)
def test_masked_hides_secrets_only(capdu: str, shown: str) -> None:
    assert masked(bytes.fromhex(capdu)) == shown


def test_apdu_log_masks_pins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mynacard.test")
    with ApduLog(open_card("default", tmp_path), logging.getLogger("mynacard.test")) as card:
        card.power_on()
        for command in (SELECT_JPKI, SELECT_SIGN_PIN, VERIFY_SIGN):
            assert card.transmit(command) == b"\x90\x00"
    text = caplog.text
    assert "C-APDU 00 20 00 80 06 ** ** ** ** ** **" in text and "R-APDU 90 00" in text
    assert "41 42 43" not in text and "power on" in text
