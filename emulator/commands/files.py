"""READ / UPDATE BINARY and READ / UPDATE / APPEND RECORD.

Each family resolves its EF in one place, and the order of the checks there (EF, its type,
the lengths, access, the record number) is the status-word precedence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..apdu import SW, CommandApdu, StatusError
from ..files import Access, CardObject, CounterEF, RecordEF, TransparentEF, encode_records
from ..session import OK, Context

RecordFile = RecordEF | CounterEF
EF = TypeVar("EF", bound=RecordFile)


def binary_file(ctx: Context, apdu: CommandApdu) -> tuple[TransparentEF, int]:
    """The EF and offset of READ/UPDATE BINARY: P1 bit 8 clear, a 15-bit offset in the
    current EF; P1 = 80|SFI, that EF (made current) and an 8-bit offset in P2."""
    p1, session = apdu.p1, ctx.session
    ef: CardObject | None
    if p1 & 0x80:
        if p1 & 0x60:
            raise StatusError(SW.INCORRECT_P1_P2)
        ef = session.ef = session.object_by_sfi(p1 & 0x1F)
        offset = apdu.p2
    else:
        ef = session.ef
        if ef is None:
            raise StatusError(SW.NO_CURRENT_EF)
        offset = p1 << 8 | apdu.p2
    if not isinstance(ef, TransparentEF):
        raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
    return ef, offset


def read_binary(ctx: Context, apdu: CommandApdu) -> bytes:
    ef, offset = binary_file(ctx, apdu)
    le = apdu.le
    if le is None or apdu.data:
        raise StatusError(SW.WRONG_LENGTH)
    if not ef.read.granted(ctx.session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    data = ef.data
    if offset >= len(data):
        raise StatusError(SW.OFFSET_OUTSIDE_EF)
    return data[offset : offset + le] + OK


def update_binary(ctx: Context, apdu: CommandApdu) -> bytes:
    """UPDATE BINARY: offsets as READ BINARY; data past the end of the EF is 6A84."""
    ef, offset = binary_file(ctx, apdu)
    data = apdu.data
    if not data or apdu.le is not None:
        raise StatusError(SW.WRONG_LENGTH)
    if not ef.update.granted(ctx.session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    old = ef.data
    if offset >= len(old):
        raise StatusError(SW.OFFSET_OUTSIDE_EF)
    end = offset + len(data)
    if end > len(old):
        raise StatusError(SW.NOT_ENOUGH_MEMORY)
    new = old[:offset] + data + old[end:]
    ctx.save(ef.fid, new)
    ef.data = new
    return OK


def record_file(
    ctx: Context,
    apdu: CommandApdu,
    kinds: type[EF] | tuple[type[EF], ...],
    lengths_ok: Callable[[EF, CommandApdu], bool],
    rule: Callable[[EF], Access],
    mode: int = 0x04,
) -> EF:
    """The EF of a record command, checked in precedence order: P2 names it (SFI << 3 |
    `mode`: that EF, made current; `mode` alone: the current EF; no record pointer is kept,
    so other modes are 6A86), its type (6981), the lengths (6700), `rule` (6982)."""
    p2, session = apdu.p2, ctx.session
    if p2 & 0x07 != mode:
        raise StatusError(SW.INCORRECT_P1_P2)
    if p2 >> 3:
        session.ef = session.object_by_sfi(p2 >> 3)
    elif session.ef is None:
        raise StatusError(SW.NO_CURRENT_EF)
    ef = session.ef
    if not isinstance(ef, kinds):
        raise StatusError(SW.COMMAND_INCOMPATIBLE_WITH_FILE)
    if not lengths_ok(ef, apdu):
        raise StatusError(SW.WRONG_LENGTH)
    if not rule(ef).granted(session.verified):
        raise StatusError(SW.SECURITY_STATUS_NOT_SATISFIED)
    return ef


def record_index(ef: RecordFile, apdu: CommandApdu) -> int:
    """The index of the record P1 numbers (from 1); 6A83 if there is none."""
    if not 1 <= apdu.p1 <= len(ef.records):
        raise StatusError(SW.RECORD_NOT_FOUND)
    return apdu.p1 - 1


def store_records(ctx: Context, ef: RecordFile, records: list[bytes]) -> None:
    """Write `records` durably, then make them the EF's."""
    ctx.save(ef.fid, encode_records(records))
    ef.records = records


def _expects_answer(ef: RecordFile, apdu: CommandApdu) -> bool:
    return apdu.le is not None and not apdu.data


def _carries_data(ef: RecordFile, apdu: CommandApdu) -> bool:
    return bool(apdu.data) and apdu.le is None


def read_record(ctx: Context, apdu: CommandApdu) -> bytes:
    """READ RECORD P1 (P2 = 04: the current EF; (SFI << 3) | 04: that EF, made current).
    An Le shorter than the record returns its first Le bytes, as READ BINARY does."""
    ef = record_file(ctx, apdu, (RecordEF, CounterEF), _expects_answer, lambda ef: ef.read)
    record = ef.records[record_index(ef, apdu)]
    return record[: apdu.le] + OK


def update_record(ctx: Context, apdu: CommandApdu) -> bytes:
    """UPDATE RECORD P1: replace that record; longer than the EF's records is 6700."""
    ef = record_file(ctx, apdu, (RecordEF, CounterEF), _carries_data, lambda ef: ef.update)
    index = record_index(ef, apdu)
    data = apdu.data
    if isinstance(ef, CounterEF):
        if len(data) != ef.width:
            raise StatusError(SW.WRONG_LENGTH)
        if int.from_bytes(data, "big") > ef.maximum:
            raise StatusError(SW.WRONG_DATA)
    elif len(data) > ef.record_size:
        raise StatusError(SW.WRONG_LENGTH)
    records = ef.records.copy()
    records[index] = data
    store_records(ctx, ef, records)
    return OK


def append_record(ctx: Context, apdu: CommandApdu) -> bytes:
    """APPEND RECORD (P1 00): a new last record; a full EF is 6A84."""
    if apdu.p1 != 0x00:
        raise StatusError(SW.INCORRECT_P1_P2)
    ef = record_file(ctx, apdu, RecordEF, _carries_data, lambda ef: ef.append, mode=0x00)
    if len(apdu.data) > ef.record_size:
        raise StatusError(SW.WRONG_LENGTH)
    if len(ef.records) >= ef.max_records:
        raise StatusError(SW.NOT_ENOUGH_MEMORY)
    store_records(ctx, ef, [*ef.records, apdu.data])
    return OK
