"""Values just beside the right ones, derived from what the run knows of the card: near misses
of each PIN, new values one step outside a PIN's format, offsets and Le at the edges of an
EF; and an input made for each signing scheme.  Every function is pure and cached, so a rule
only indexes into its tables.
"""

from __future__ import annotations

import functools
import hashlib
import re

from .apdu import INS, Apdu
from .model import PSS_SCHEMES, SHA256_DIGEST_INFO
from .spec import MAX_VERIFY_LENGTH, EfSpec

NEAR_MISS_KINDS = ("prefix", "extension", "change", "case", "padding", "full-width", "long")
PADDING = (b"\x00", b"\x20", b"\xff")
LONG_LENGTHS = (MAX_VERIFY_LENGTH + 1, 32, 128, 255)  # VERIFY's Lc past the limit, up to 255


def full_width(text: str) -> str:
    """ASCII letters and digits as their full-width forms (U+FF10..., U+FF21..., U+FF41...)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in text)


def _neighbours(byte: int) -> tuple[int, ...]:
    """Bytes one step away: the next and previous character, the other case of a letter."""
    near = {byte + 1, byte - 1}
    if chr(byte).isascii() and chr(byte).isalpha():
        near.add(byte ^ 0x20)
    return tuple(sorted(b for b in near if 0 <= b <= 0xFF and b != byte))


@functools.cache
def near_misses(value: bytes) -> dict[str, tuple[bytes, ...]]:
    """Wrong values close to `value`, by kind (NEAR_MISS_KINDS); none of them is `value`.

    prefix: every proper prefix; extension: one more character; change: one character one
    step away; case: letters in the other case; padding: 00, 20 or FF after it (one, or up
    to 16 bytes); full-width: digits and letters as UTF-8 full-width characters; long: more
    than 16 bytes (VERIFY's Lc up to 255), starting with the value.
    """
    text = value.decode("latin-1")
    kinds: dict[str, list[bytes]] = {kind: [] for kind in NEAR_MISS_KINDS}
    kinds["prefix"] = [value[:length] for length in range(1, len(value))]
    for extra in dict.fromkeys((value[-1:], b"0", b"9", b"A", b"Z")):
        kinds["extension"].append(value + extra)
    for position, byte in enumerate(value):
        for other in _neighbours(byte):
            kinds["change"].append(value[:position] + bytes((other,)) + value[position + 1 :])
    letters = [i for i, c in enumerate(text) if c.isascii() and c.isalpha()]
    if letters:
        kinds["case"] = [text.swapcase().encode("latin-1"), text.lower().encode("latin-1")]
        kinds["case"] += [
            (text[:i] + text[i].swapcase() + text[i + 1 :]).encode("latin-1") for i in letters
        ]
    for pad in PADDING:
        kinds["padding"].append(value + pad)
        if len(value) + 1 < MAX_VERIFY_LENGTH:
            kinds["padding"].append(value.ljust(MAX_VERIFY_LENGTH, pad))
    wide = full_width(text)
    kinds["full-width"] = [wide.encode()]
    ends = (0, len(text) - 1)
    kinds["full-width"] += [(text[:i] + wide[i] + text[i + 1 :]).encode() for i in ends]
    for length in LONG_LENGTHS:
        kinds["long"] += [value.ljust(length, pad) for pad in (b"\x00", value[:1])]
    return {kind: tuple(dict.fromkeys(v for v in values if v and v != value))
            for kind, values in kinds.items()}  # fmt: skip


_SIMPLE_FORMAT = re.compile(r"\[([^\]]+)\]\{(\d+)(?:,(\d+))?\}")


def _alphabet(char_class: str) -> str:
    """The characters of a regular-expression class such as A-Z0-9."""
    chars, position = [], 0
    while position < len(char_class):
        if position + 2 < len(char_class) and char_class[position + 1] == "-":
            first, last = char_class[position], char_class[position + 2]
            chars += [chr(c) for c in range(ord(first), ord(last) + 1)]
            position += 3
        else:
            chars.append(char_class[position])
            position += 1
    return "".join(chars)


OUTSIDE_KINDS = ("length", "alphabet", "limits")


@functools.cache
def outside_format(value_format: str, value: bytes) -> dict[str, tuple[bytes, ...]]:
    """New values one step outside `value_format` (a PIN's format, docs/card-spec.md §7), by
    kind: "length" one character too few or too many, "alphabet" one character outside the
    alphabet (first or last), "limits" nothing or more than 16 bytes; built from `value`
    where it fits the format.  None of them fits it."""
    kinds: dict[str, list[bytes]] = {kind: [] for kind in OUTSIDE_KINDS}
    kinds["limits"] = [b"", value.ljust(MAX_VERIFY_LENGTH + 1, value[:1] or b"0")]
    simple = _SIMPLE_FORMAT.fullmatch(value_format)
    if simple is not None:
        alphabet = _alphabet(simple.group(1))
        low = int(simple.group(2))
        high = int(simple.group(3) or low)
        text = value.decode("latin-1")
        if re.fullmatch(value_format, text) is None:
            text = alphabet[: high or 1]
        filled = (text * (high + 1))[: high + 1]
        kinds["length"] = [filled.encode("latin-1")]
        if low > 1:
            kinds["length"].append(filled[: low - 1].encode("latin-1"))
        strangers = [c for c in "a9A- \x00\xff" if c not in alphabet]
        strangers.append(full_width(alphabet[0]))
        base = filled[:low]
        for stranger in strangers:
            for position in (0, low - 1):
                changed = base[:position] + stranger + base[position + 1 :]
                wide = ord(stranger) > 0xFF
                kinds["alphabet"].append(changed.encode("utf-8" if wide else "latin-1"))
    fits = re.compile(value_format)
    return {
        kind: tuple(dict.fromkeys(c for c in found if fits.fullmatch(c.decode("latin-1")) is None))
        for kind, found in kinds.items()
    }


def edges(size: int, sfi: bool) -> tuple[tuple[int, int], ...]:
    """(offset, Le) pairs at every edge of an EF of `size` bytes: offsets 0, 1, the last
    byte, the end and one past it (an 8-bit offset by SFI: up to 255), with Le of 1, what is
    left, one less and one more, 256 and (where the offset allows) an extended 65536."""
    limit = 0xFF if sfi else 0x7FFF
    offsets = {0, 1, size - 1, size, size + 1, min(size, 256) - 1, 256}
    pairs: list[tuple[int, int]] = []
    for offset in sorted(o for o in offsets if 0 <= o <= limit):
        left = size - offset
        for le in sorted({1, left - 1, left, left + 1, 256, 65536}):
            if 1 <= le <= 65536:
                pairs.append((offset, le))
    return tuple(pairs)


def _pattern(length: int, seed: int) -> bytes:
    """`length` bytes that differ from call to call (what a write puts in)."""
    return bytes((seed + 37 * i) & 0xFF for i in range(length))


def transparent_writes(size: int, pick: int) -> list[tuple[int, bytes]]:
    """(offset, data) for UPDATE BINARY at the edges of an EF of `size` bytes: the first
    and last byte, across the end (6A84), at the end (6B00), the whole EF and one more."""
    cases = [(0, 1), (size - 1, 1), (size - 1, 2), (size, 1), (0, size), (0, size + 1), (1, 4)]
    offset, length = cases[pick % len(cases)]
    return [(offset, _pattern(min(length, 255), pick))]


def record_writes(records: int, record_size: int, pick: int) -> tuple[int, bytes]:
    """(record number, data) for UPDATE RECORD: the first and last record, the one after
    the last (6A83), record 0; 1 byte, `record_size` bytes, one more (6700)."""
    numbers = (1, max(records, 1), records + 1, 0)
    lengths = (1, record_size, record_size + 1)
    number = numbers[pick % len(numbers)]
    return number, _pattern(lengths[pick // len(numbers) % len(lengths)], pick)


def record_update_bounds(ef: EfSpec, records: int) -> list[bytes]:
    """UPDATE RECORD of a record EF holding `records` at its limits (by SFI): on an empty EF
    that takes APPEND a record is appended first, so that one can be updated at all; then
    record 1 with 1 byte, exactly the record size and one byte more (6700), and the record
    after the last (6A83)."""
    p2, size = ef.fid << 3 | 0x04, ef.record_size or 1
    commands = []
    if not records and any(operation == "append" for operation, _rule in ef.writes):
        data = bytes(range(1, size + 1))
        commands.append(Apdu(0x00, INS.APPEND_RECORD, 0x00, ef.fid << 3, data).encode())
        records = 1
    for data in (b"\x5a", b"\x5a" * size, bytes(size + 1)):
        commands.append(Apdu(0x00, INS.UPDATE_RECORD, 0x01, p2, data).encode())
    return [*commands, Apdu(0x00, INS.UPDATE_RECORD, records + 1, p2, b"\x5a").encode()]


def counter_steps(value: int, maximum: int, width: int, pick: int) -> bytes:
    """The amount for DECREASE (pick even) or INCREASE (odd) around the counter's bounds:
    1, down to 0 exactly, one below 0, up to the maximum exactly, one past it; in `width`
    bytes or as few as it takes; rarely one byte too many (6700)."""
    amounts = (1, value, value + 1) if pick % 2 == 0 else (1, maximum - value, maximum - value + 1)
    amount = max(amounts[pick // 2 % len(amounts)], 1)
    size = width if pick // 6 % 2 else max(1, (amount.bit_length() + 7) // 8)
    if pick // 12 % 8 == 0:
        size = width + 1
    return amount.to_bytes(max(size, (amount.bit_length() + 7) // 8), "big")


# -- an input made for each signing scheme -------------------------------------------------

# DigestInfos without the NULL parameters, as some clients send them: P1 00 must pad them as
# they are (docs/decisions.md #21a).
DIGEST_INFO_WITHOUT_NULL = {
    "sha1": bytes.fromhex("301f300706052b0e03021a0414"),
    "sha256": bytes.fromhex("302f300b06096086480165030402010420"),
}
MESSAGE = b"mynacard conformance"
MESSAGE_HASH = hashlib.sha256(MESSAGE).digest()
# An input made for each P1 (docs/card-spec.md §8): P1 00 pads it as sent (DigestInfos with
# and without NULL parameters, the shortest and longest inputs, and one byte too long: 6700),
# 01/03/05 hash a message, 02/04 take a 32-byte hash. The survey signs each with each signing
# key once.
SCHEME_CASES: tuple[tuple[int, bytes], ...] = (
    (0x00, SHA256_DIGEST_INFO + MESSAGE_HASH),
    (0x00, DIGEST_INFO_WITHOUT_NULL["sha256"] + MESSAGE_HASH),
    (0x00, DIGEST_INFO_WITHOUT_NULL["sha1"] + hashlib.sha1(MESSAGE).digest()),
    (0x00, b"\x01"),
    (0x00, b"\x5a" * 245),
    (0x00, b"\x5a" * 246),
    (0x01, MESSAGE),
    (0x01, b"\x00" * 255),
    (0x02, MESSAGE_HASH),
    (0x03, MESSAGE),
    (0x03, b"\xff" * 255),
    (0x04, MESSAGE_HASH),
    (0x05, MESSAGE),
)
PSS_CASES = tuple(case for case in SCHEME_CASES if case[0] in PSS_SCHEMES)
# What the state machine signs again in random sessions: a standard DigestInfo and the
# hashing schemes. The inputs a card must pad as sent (P1 00 otherwise, P1 01) stay with the
# survey: a card without a raw RSA primitive (the emulator) makes each in ~25 ms, twenty
# times a standard signature.
REPEATED_SCHEME_CASES = SCHEME_CASES[:1] + tuple(c for c in SCHEME_CASES if c[0] >= 0x02)
