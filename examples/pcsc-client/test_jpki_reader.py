"""Tests of jpki_reader.py against an emulated My Number Card served through pcscd.

pytest --mynacard-backend pcsc     (pytest.ini here sets it)
"""

from __future__ import annotations

import pytest
from jpki_reader import CardRemovedError, read_auth_certificate


def test_reads_the_certificate(mynacard_card) -> None:  # type: ignore[no-untyped-def]
    certificate = read_auth_certificate(mynacard_card.reader)
    assert certificate == mynacard_card.profile.jpki.auth_cert


@pytest.mark.mynacard(quirks={"t0_chaining": True})
def test_collects_an_answer_in_61xx_pieces(mynacard_card) -> None:  # type: ignore[no-untyped-def]
    # The card answers the long READ BINARY with 61xx; the client must send GET RESPONSE.
    certificate = read_auth_certificate(mynacard_card.reader)
    assert certificate == mynacard_card.profile.jpki.auth_cert


# The card is pulled out in the middle of the fourth command (the long READ BINARY): the
# client sees the transmit fail and must say so. The card is back a second later (and is
# pulled out again at every later READ BINARY: the plan hits each one after the third command).
@pytest.mark.mynacard(faults=[{"kind": "remove", "ins": ["B0"], "after": 3, "ms": 1000}])
def test_reports_a_removal(mynacard_card) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CardRemovedError):
        read_auth_certificate(mynacard_card.reader)
    assert mynacard_card.wait_for_card(present=False, timeout=5)  # pcscd saw it go
    assert mynacard_card.wait_for_card(present=True, timeout=5)  # and come back
