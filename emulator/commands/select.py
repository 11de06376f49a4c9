"""SELECT: applications by DF name, EFs by FID, and the GlobalPlatform ISD."""

from __future__ import annotations

from ..apdu import SW, CommandApdu, StatusError
from ..session import OK, Context

# GlobalPlatform ISD: selecting it restores the power-on state (docs/card-spec.md §2.1).
ISD_AID = bytes.fromhex("A0000001510000")


def select(ctx: Context, apdu: CommandApdu) -> bytes:
    p1 = apdu.p1
    if p1 == 0x04:
        return _select_application(ctx, apdu)
    if p1 == 0x02:
        return _select_ef(ctx, apdu)
    if p1 == 0x00:
        # No MF: 3F00 is not found; otherwise refused until an application is selected,
        # and then accepted without changing anything (docs/card-spec.md §2.1).
        if apdu.data == b"\x3f\x00":
            raise StatusError(SW.FILE_NOT_FOUND)
        if ctx.session.app is None:
            raise StatusError(SW.INCORRECT_P1_P2)
        return OK
    raise StatusError(SW.INCORRECT_P1_P2)


def _select_ef(ctx: Context, apdu: CommandApdu) -> bytes:
    if apdu.p2 != 0x0C:
        raise StatusError(SW.INCORRECT_P1_P2)
    if len(apdu.data) != 2:
        raise StatusError(SW.WRONG_LENGTH)
    session = ctx.session
    if session.app is None:
        raise StatusError(SW.FILE_NOT_FOUND)
    obj = session.app.objects.get(apdu.data[0] << 8 | apdu.data[1])
    if obj is None:
        raise StatusError(SW.FILE_NOT_FOUND)
    session.ef = obj
    return OK


def _select_application(ctx: Context, apdu: CommandApdu) -> bytes:
    """SELECT by DF name (first match of a prefix). An unknown name is 6A82 whatever P2
    says, so no middleware probe with an odd P2 mistakes this card for another (the order
    of the checks is not known from a card: an assumption)."""
    name, p2 = apdu.data, apdu.p2
    if not name:
        raise StatusError(SW.FILE_NOT_FOUND)
    isd = ctx.form == "card" and ISD_AID.startswith(name)  # a phone's ISD is not reachable
    app = None if isd else next((a for a in ctx.applications if a.aid.startswith(name)), None)
    if app is None and not isd:
        raise StatusError(SW.FILE_NOT_FOUND)
    if p2 not in (0x00, 0x0C):
        raise StatusError(SW.INCORRECT_P1_P2)
    session = ctx.session
    if app is None:  # the ISD: back to the power-on state
        session.clear()
        return b"\x6f\x09\x84\x07" + ISD_AID + OK if p2 == 0x00 else OK
    same = app is session.app and not ctx.quirks.reselect_clears_state
    session.enter(app, keep_security=same)
    return app.fci() + OK if p2 == 0x00 else OK
