"""The free area's counters (DECREASE, INCREASE) and its authentication (GET CHALLENGE,
EXTERNAL AUTHENTICATE with AES-CMAC)."""

from __future__ import annotations

import hmac
import os

from ..apdu import SW, CommandApdu, StatusError
from ..files import CounterEF, key_access
from ..session import OK, Context, sw
from .files import record_file, record_index, store_records
from .pins import spend_try

_CMAC_LENGTH = 16
_CHALLENGE_LENGTHS = (8, 16)  # what EXTERNAL AUTHENTICATE accepts from GET CHALLENGE


def _amount_fits(ef: CounterEF, apdu: CommandApdu) -> bool:
    return 1 <= len(apdu.data) <= ef.width


def _step_counter(ctx: Context, apdu: CommandApdu, decrease: bool) -> bytes:
    """DECREASE / INCREASE record P1 of a counter EF by the amount in the data field
    (1..width bytes, big-endian); the new value is returned when Le is present. Going
    below 0 or above the counter's maximum is 6985 and changes nothing."""
    rule = (lambda ef: ef.decrease) if decrease else (lambda ef: ef.increase)
    ef = record_file(ctx, apdu, CounterEF, _amount_fits, rule)
    index = record_index(ef, apdu)
    step = int.from_bytes(apdu.data, "big")
    value = int.from_bytes(ef.records[index], "big") + (-step if decrease else step)
    if not 0 <= value <= ef.maximum:
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
    record = value.to_bytes(ef.width, "big")
    records = ef.records.copy()
    records[index] = record
    store_records(ctx, ef, records)
    return (b"" if apdu.le is None else record[: apdu.le]) + OK


def decrease(ctx: Context, apdu: CommandApdu) -> bytes:
    return _step_counter(ctx, apdu, decrease=True)


def increase(ctx: Context, apdu: CommandApdu) -> bytes:
    return _step_counter(ctx, apdu, decrease=False)


def get_challenge(ctx: Context, apdu: CommandApdu) -> bytes:
    if apdu.p1 or apdu.p2:
        raise StatusError(SW.INCORRECT_P1_P2)
    if apdu.extended:
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
    if apdu.le is None or apdu.data:
        raise StatusError(SW.WRONG_LENGTH)
    ctx.session.challenge = os.urandom(apdu.le)
    return ctx.session.challenge + OK


def external_authenticate(ctx: Context, apdu: CommandApdu) -> bytes:
    """EXTERNAL AUTHENTICATE 00 82 00 (80|key): the host's AES-CMAC of the last 8- or
    16-byte challenge opens key:<n> until reset or application change (free area)."""
    if apdu.p1 != 0x00 or apdu.p2 & 0xE0 != 0x80:
        raise StatusError(SW.INCORRECT_P1_P2)
    session = ctx.session
    key = session.app.keys.get(apdu.p2 & 0x1F) if session.app is not None else None
    if key is None:
        raise StatusError(SW.REFERENCE_DATA_NOT_FOUND)
    if len(apdu.data) != _CMAC_LENGTH or apdu.le is not None:
        raise StatusError(SW.WRONG_LENGTH)
    state = None if key.state_name is None else ctx.store.pins[key.state_name]
    if state is not None and state.remaining == 0:
        raise ctx.blocked()
    challenge, session.challenge = session.challenge, b""  # one answer per challenge
    if len(challenge) not in _CHALLENGE_LENGTHS:
        raise StatusError(SW.CONDITIONS_NOT_SATISFIED)
    opened = key_access(key.number)

    def compare() -> bool:
        return hmac.compare_digest(apdu.data, key.mac(challenge))

    right = compare() if state is None else spend_try(ctx, state, compare)
    if right:
        session.verified.add(opened)
        return OK
    session.verified.discard(opened)
    if state is None:
        raise StatusError(SW.AUTHENTICATION_FAILED)
    return sw(SW.VERIFY_FAILED | state.remaining)
