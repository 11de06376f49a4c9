"""Structural checks of the PNG and JP2 images a profile carries (no image library needed).

Opening a card validates its profile; the checks walk the container (PNG chunks with their
CRCs and the inflated pixel data, JP2 boxes and the codestream's SOC/SIZ/EOC markers) so
that a damaged image is a profile error without loading Pillow.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JP2_SIGNATURE = bytes.fromhex("0000000C6A5020200D0A870A")  # JP2 signature box (ISO 15444-1)

# PNG colour type: samples per pixel (ISO/IEC 15948 §6.1).
_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class _Bad(Exception):
    pass


def image_problem(data: bytes, kind: str) -> str | None:
    """What `data` is if not a valid image of `kind` ("png" or "jp2"), or None if it is one."""
    signature = PNG_SIGNATURE if kind == "png" else JP2_SIGNATURE
    if not data.startswith(signature):
        return f"a file without the {kind.upper()} signature"
    try:
        (_check_png if kind == "png" else _check_jp2)(data)
    except _Bad as bad:
        return f"a damaged {kind.upper()} file ({bad})"
    return None


def _check_png(data: bytes) -> None:
    chunks: list[tuple[bytes, bytes]] = []
    at = len(PNG_SIGNATURE)
    while at < len(data):
        if at + 12 > len(data):
            raise _Bad(f"truncated chunk at byte {at}")
        (length,) = struct.unpack_from(">I", data, at)
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if len(body) != length or at + 12 + length > len(data):
            raise _Bad(f"chunk {kind!r} runs past the end")
        (crc,) = struct.unpack_from(">I", data, at + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise _Bad(f"chunk {kind!r} has a wrong CRC")
        chunks.append((kind, body))
        at += 12 + length
        if kind == b"IEND":
            break
    if at != len(data):
        raise _Bad("bytes after IEND")
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise _Bad("no IHDR chunk first")
    if chunks[-1][0] != b"IEND":
        raise _Bad("no IEND chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour not in _SAMPLES or not width or not height:
        raise _Bad("bad IHDR")
    try:
        pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as error:
        raise _Bad(f"pixel data does not inflate: {error}") from None
    row = (width * depth * _SAMPLES[colour] + 7) // 8 + 1
    if interlace == 0 and len(pixels) != row * height:
        raise _Bad(f"{len(pixels)} bytes of pixel data, {row * height} expected")


def _check_jp2(data: bytes) -> None:
    boxes: list[tuple[bytes, bytes]] = []
    at = 0
    while at < len(data):
        if at + 8 > len(data):
            raise _Bad(f"truncated box at byte {at}")
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1:
            if at + 16 > len(data):
                raise _Bad(f"truncated box at byte {at}")
            (length,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif length == 0:
            length = len(data) - at
        if length < header or at + length > len(data):
            raise _Bad(f"box {kind!r} at byte {at} has a bad length")
        boxes.append((kind, data[at + header : at + length]))
        at += length
    kinds = [kind for kind, _ in boxes]
    if kinds[:2] != [b"jP  ", b"ftyp"] or b"jp2h" not in kinds or b"jp2c" not in kinds:
        raise _Bad(f"boxes {', '.join(k.decode('latin-1') for k in kinds)}")
    codestream = next(body for kind, body in boxes if kind == b"jp2c")
    if not codestream.startswith(b"\xff\x4f\xff\x51") or not codestream.endswith(b"\xff\xd9"):
        raise _Bad("the codestream lacks its SOC/SIZ or EOC marker")
