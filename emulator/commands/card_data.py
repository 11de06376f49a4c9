"""GET DATA, GET RESPONSE and the iPhone's last-command indicator, as the card answers them
itself (no application involved)."""

from __future__ import annotations

from ..apdu import SW, CommandApdu, StatusError
from ..personalize.profile import DEFAULT_ATR, Profile
from ..session import OK, Context

# MF-level GET DATA tags whose content public sources give (docs/card-spec.md §2.3, SOL mf.rs).
TAG_CARD_IDENTIFICATION = 0x0045  # ASCII
TAG_MUNICIPALITY_CODE = 0x00F0  # 5 ASCII digits
TAG_EXPIRY = 0x00F2  # YYYYMMDD, ASCII
TAG_CONTACT_ATR = 0x5F51  # the contact ATR without TS
SHORT_LE_LIMIT = 256  # larger objects need an extended Le (short Le: 6700, SOL mf.rs)


def contact_atr(atr: bytes) -> bytes:
    """The card's contact ATR: the profile's, unless that is one a contactless reader made
    (PC/SC part 3: 3B 8n 80 01 ...), then the default contact ATR."""
    synthesised = atr[1] & 0xF0 == 0x80 and atr[2:4] == b"\x80\x01"
    return DEFAULT_ATR if synthesised else atr


def card_data_objects(profile: Profile) -> dict[int, bytes]:
    """The MF-level GET DATA objects of a plastic card made from `profile`.

    0045 is taken to be the 15-digit serial of 共通カードAP EF 0001, which carries 00F0 and
    00F2 too (an assumption: docs/decisions.md). 0042, 0066 and the CV chain (00F7, 00F8,
    7F21) need issuer data that is not public, so they stay absent (6A88).
    """
    return {
        TAG_CARD_IDENTIFICATION: profile.card_serial.encode("ascii"),
        TAG_MUNICIPALITY_CODE: profile.municipality_code.encode("ascii"),
        TAG_EXPIRY: profile.card_expiry.strftime("%Y%m%d").encode("ascii"),
        TAG_CONTACT_ATR: contact_atr(profile.atr)[1:],
    }


def get_data(ctx: Context, apdu: CommandApdu) -> bytes:
    """GET DATA, P1-P2 = the tag: the MF-level objects while no application is selected
    (after a reset, or after selecting the ISD); 6A88 for anything else."""
    if apdu.data or apdu.le is None:
        raise StatusError(SW.WRONG_LENGTH)
    value = None if ctx.session.app is not None else ctx.card_objects.get(apdu.p1 << 8 | apdu.p2)
    if value is None:
        raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)
    if len(value) > SHORT_LE_LIMIT and not apdu.extended:
        raise StatusError(SW.WRONG_LENGTH)
    return value[: apdu.le] + OK


def get_response(ctx: Context, apdu: CommandApdu) -> bytes:
    """Answers come whole (T=1); with the t0_chaining quirk the T0Chaining layer answers."""
    raise StatusError(SW.CONDITIONS_NOT_SATISFIED)


def last_command(ctx: Context, apdu: CommandApdu) -> bytes:
    """80 FC 00 00, the last-command indicator of the iPhone's JPKI token (SOL card.rs): 9000
    there, with no other effect; the plastic card refuses the exact command with 6700."""
    if ctx.form == "smartphone-ios" and (apdu.p1, apdu.p2, apdu.data, apdu.le) == (0, 0, b"", None):
        return OK
    raise StatusError(SW.WRONG_LENGTH)
