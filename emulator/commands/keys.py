"""The RSA keys: COMPUTE DIGITAL SIGNATURE (80 2A) and INTERNAL AUTHENTICATE (SET SESSION
KEY is in secure_messaging)."""

from __future__ import annotations

from ..apdu import SW, CommandApdu, StatusError
from ..files import CardObject, RsaKey
from ..session import OK, Context


def key_named(ctx: Context, p2: int) -> RsaKey:
    """The key named by P2: 80 = the current EF, 80|SFI = that key EF, 00 = the AP's."""
    session = ctx.session
    obj: CardObject | None
    if p2 == 0x80:
        obj = session.ef
    elif p2 == 0x00:
        app = session.app
        if app is None or app.default_key is None:
            raise StatusError(SW.INCORRECT_P1_P2)
        obj = app.objects[app.default_key]
    elif p2 & 0xE0 == 0x80:
        obj = session.object_by_sfi(p2 & 0x1F)
    else:
        raise StatusError(SW.INCORRECT_P1_P2)
    if not isinstance(obj, RsaKey):
        raise StatusError(SW.NO_CURRENT_EF)
    return obj


def compute_signature(ctx: Context, apdu: CommandApdu) -> bytes:
    if apdu.extended:
        raise StatusError(SW.WRONG_LENGTH)
    if apdu.p1 > 0x05:
        raise StatusError(SW.INCORRECT_P1_P2)
    key = key_named(ctx, apdu.p2)
    if not key.use.granted(ctx.session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    return key.sign(apdu.p1, apdu.data) + OK


def internal_authenticate(ctx: Context, apdu: CommandApdu) -> bytes:
    """Only keys made for it answer; JPKI keys sign only with 80 2A (docs/decisions.md #32)."""
    if apdu.p1 != 0x00 or apdu.p2 == 0x00:
        raise StatusError(SW.INCORRECT_P1_P2)
    key = key_named(ctx, apdu.p2)
    if not key.use.granted(ctx.session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    if not key.internal_authenticate:
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
    if apdu.extended or apdu.le is None:
        raise StatusError(SW.WRONG_LENGTH)
    return key.authenticate(apdu.data) + OK
