"""The card at the APDU level, without a client: the same test on either backend
(`pytest --mynacard-backend inproc` runs it in this process)."""

from __future__ import annotations

import pytest

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")
RETRY_QUERY = bytes.fromhex("00200080")


@pytest.mark.mynacard(profile="default")
def test_a_wrong_pin_costs_a_try(mynacard_card) -> None:  # type: ignore[no-untyped-def]
    for command in (SELECT_JPKI, SELECT_AUTH_PIN):
        assert mynacard_card.transmit(command) == b"\x90\x00"
    assert mynacard_card.transmit(RETRY_QUERY) == b"\x63\xc3"
    assert mynacard_card.transmit(RETRY_QUERY + b"\x04" + b"0000") == b"\x63\xc2"
    assert mynacard_card.reset() == mynacard_card.atr  # the count survives a reset
    for command in (SELECT_JPKI, SELECT_AUTH_PIN):
        assert mynacard_card.transmit(command) == b"\x90\x00"
    assert mynacard_card.transmit(RETRY_QUERY) == b"\x63\xc2"
