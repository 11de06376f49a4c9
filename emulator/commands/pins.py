"""VERIFY, CHANGE REFERENCE DATA (00 24) and CHANGE KEY (80 32)."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ..apdu import SW, CommandApdu, StatusError
from ..files import MAX_PIN_LENGTH, Pin
from ..session import OK, Context, sw
from ..store import PinState


def pin_named(ctx: Context, p2: int) -> tuple[Pin, PinState]:
    """The PIN named by P2: 80 = the current EF, 80|SFI = that key (docs/card-spec.md §2)."""
    if p2 & 0xE0 != 0x80:
        raise StatusError(SW.INCORRECT_P1_P2)
    session = ctx.session
    if p2 == 0x80:
        obj = session.ef
        if not isinstance(obj, Pin):
            raise StatusError(SW.NO_CURRENT_EF)
    else:
        obj = session.app.objects.get(p2 & 0x1F) if session.app is not None else None
        if not isinstance(obj, Pin):
            raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)
    return obj, ctx.pins[ctx.app.aid][obj.fid]


def verify(ctx: Context, apdu: CommandApdu) -> bytes:
    if apdu.p1 != 0x00:
        raise StatusError(SW.INCORRECT_P1_P2)
    pin, state = pin_named(ctx, apdu.p2)
    value = apdu.data
    if apdu.le is not None or len(value) > MAX_PIN_LENGTH:
        raise StatusError(SW.WRONG_LENGTH)
    verified = ctx.session.verified
    if not value:  # retry query: costs no try
        if pin.fid in verified and ctx.quirks.verified_query_sw is not None:
            return sw(ctx.quirks.verified_query_sw)
        return sw(SW.VERIFY_FAILED | state.remaining)
    if state.remaining == 0:
        raise ctx.blocked()
    if spend_try(ctx, state, lambda: hmac.compare_digest(value, state.value)):
        verified.add(pin.fid)
        return OK
    verified.discard(pin.fid)
    return sw(SW.VERIFY_FAILED | state.remaining)


def spend_try(ctx: Context, state: PinState, compare: Callable[[], bool]) -> bool:
    """Decrement the counter durably, then `compare`, then restore the counter if the value
    was right, as a real card does: cutting the power at any point never gives a free try,
    and the first write comes at the same time whether the value is right or wrong."""
    ctx.store.set_remaining(state, state.remaining - 1)
    right = compare()
    if right:
        ctx.store.set_remaining(state, state.max_tries)
    return right


def _change(ctx: Context, apdu: CommandApdu, p1: int) -> bytes:
    """A new value for a verified PIN, in the format the PIN allows (6A80 otherwise)."""
    if apdu.p1 != p1:
        raise StatusError(SW.INCORRECT_P1_P2)
    pin, state = pin_named(ctx, apdu.p2)
    if pin.change_ins != apdu.ins:
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
    if not apdu.data or apdu.le is not None or len(apdu.data) > MAX_PIN_LENGTH:
        raise StatusError(SW.WRONG_LENGTH)  # a value VERIFY could not send is no PIN
    if state.remaining == 0:
        raise ctx.blocked()
    if pin.fid not in ctx.session.verified:
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    if not pin.accepts(apdu.data):
        raise StatusError(SW.WRONG_DATA)
    ctx.store.set_value(state, apdu.data)
    return OK


def change_reference_data(ctx: Context, apdu: CommandApdu) -> bytes:
    """00 24 01 80|SFI."""
    return _change(ctx, apdu, 0x01)


def change_key(ctx: Context, apdu: CommandApdu) -> bytes:
    """80 32 00 80|SFI (JICSAP)."""
    return _change(ctx, apdu, 0x00)
