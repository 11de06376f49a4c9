"""Contact and contactless personalities: the ATR each presents, and what pcscd makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ServeCard

from mynacard import load_profile, open_card
from mynacard.cli import main
from mynacard.personalize.profile import KNOWN_ATRS, ProfileError, with_atr

CONTACT = bytes.fromhex("3BE000FF8131FE4514")
CONTACTLESS = bytes.fromhex("3B888001000005E0B381A1007F")
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_AUTH_CERT = bytes.fromhex("00A4020C02000A")
READ_EXTENDED = bytes.fromhex("00B0000000062E")  # the certificate EF, 1582 bytes


@pytest.mark.parametrize(
    ("name", "atr"),
    [("contact", CONTACT), ("contactless", CONTACTLESS), ("jpki-08", KNOWN_ATRS["jpki-08"]),
     ("3BC5FF8131FB458073C6010000", KNOWN_ATRS["jpki-03"])],
)  # fmt: skip
def test_the_chosen_atr_in_process(name: str, atr: bytes, tmp_path: Path) -> None:
    profile = with_atr(load_profile("default"), name)
    with open_card(profile, tmp_path) as card:
        assert card.power_on() == atr and card.reset() == atr
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"


def test_an_unknown_atr_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ProfileError, match="or an interface: contact, contactless"):
        with_atr(load_profile("default"), "nfc-b")
    assert main(["serve", "--atr", "3B88", "--state", "/nonexistent/x"]) == 2
    assert "--atr 3B88: expected a well-formed ATR" in capsys.readouterr().err


@pytest.mark.pcsc
def test_pcscd_sees_the_chosen_interface(serve: ServeCard, tmp_path: Path) -> None:
    from pcsc import ScardConnection
    from smartcard import scard

    for interface, atr, t0_only in (
        ("contact", CONTACT, scard.SCARD_E_PROTO_MISMATCH),
        ("contactless", CONTACTLESS, scard.SCARD_S_SUCCESS),
    ):
        with serve("default", tmp_path / interface, extra_args=("--interface", interface)) as name:
            # A client that speaks T=0 only, first (pcscd keeps the protocol it negotiated
            # until the card is powered off): the contactless ATR also offers T=0.
            rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            rc, handle, protocol = scard.SCardConnect(
                context, name, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0
            )
            assert rc == t0_only
            if rc == scard.SCARD_S_SUCCESS:
                assert protocol == scard.SCARD_PROTOCOL_T0
                scard.SCardDisconnect(handle, scard.SCARD_UNPOWER_CARD)
            scard.SCardReleaseContext(context)
            connection = ScardConnection(name)
            assert connection.atr() == atr
            assert connection._protocol == scard.SCARD_PROTOCOL_T1  # chosen from T0|T1
            for command in (SELECT_JPKI, SELECT_AUTH_CERT):
                assert connection.transmit(command) == b"\x90\x00"
            answer = connection.transmit(READ_EXTENDED)  # extended length on both
            assert len(answer) == 0x62E + 2 and answer[-2:] == b"\x90\x00"
            connection.close()
