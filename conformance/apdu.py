"""Command APDUs as the bench builds and reads them (ISO 7816-4 cases 1-4, short and extended).

Written from ISO 7816-3 §12.1 for the bench; the emulator's own parser is not used, so a
parsing bug there cannot hide behind the same bug here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class SW(IntEnum):
    """Status words of docs/card-spec.md §2.4 and docs/decisions.md."""

    OK = 0x9000
    NO_SESSION_KEY_DELIVERY = 0x66F1  # SET SESSION KEY in the visual and 共通 APs
    VERIFY_FAILED = 0x63C0  # low nibble: tries left
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTHENTICATION_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_BLOCKED = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    NO_CURRENT_EF = 0x6986
    SM_DATA_OBJECT_MISSING = 0x69FC
    WRONG_DATA = 0x6A80
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    INCORRECT_P1_P2 = 0x6A86
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    OFFSET_OUTSIDE_EF = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


class INS(IntEnum):
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    COMPUTE_SIGNATURE = 0x2A  # CLA 80
    CHANGE_KEY = 0x32  # CLA 80 (JICSAP)
    GET_CHALLENGE = 0x84
    INTERNAL_AUTHENTICATE = 0x88
    SELECT = 0xA4
    SET_SESSION_KEY = 0xAE  # CLA 80 (docs/card-spec.md §4)
    READ_BINARY = 0xB0
    READ_RECORD = 0xB2
    GET_RESPONSE = 0xC0
    GET_DATA = 0xCA
    UPDATE_BINARY = 0xD6  # free area (docs/decisions.md, "The free storage area")
    UPDATE_RECORD = 0xDC
    APPEND_RECORD = 0xE2
    DECREASE = 0x30
    INCREASE = 0x32  # CLA 00; CLA 80 INS 32 is CHANGE KEY
    EXTERNAL_AUTHENTICATE = 0x82


# Instructions by class byte (docs/decisions.md #20: a known INS under the other CLA is a
# CLA error).
ISO_INS = frozenset(
    {
        INS.VERIFY,
        INS.CHANGE_REFERENCE_DATA,
        INS.GET_CHALLENGE,
        INS.INTERNAL_AUTHENTICATE,
        INS.SELECT,
        INS.READ_BINARY,
        INS.READ_RECORD,
        INS.GET_RESPONSE,
        INS.GET_DATA,
        INS.UPDATE_BINARY,
        INS.UPDATE_RECORD,
        INS.APPEND_RECORD,
        INS.DECREASE,
        INS.INCREASE,
        INS.EXTERNAL_AUTHENTICATE,
    }
)
WRITE_INS = frozenset(
    {
        INS.UPDATE_BINARY,
        INS.UPDATE_RECORD,
        INS.APPEND_RECORD,
        INS.DECREASE,
        INS.INCREASE,
        INS.EXTERNAL_AUTHENTICATE,
    }
)
PROPRIETARY_INS = frozenset({INS.COMPUTE_SIGNATURE, INS.CHANGE_KEY, INS.SET_SESSION_KEY})


class MalformedApdu(ValueError):
    """Bytes whose length fields do not describe them (the card answers 6700)."""


@dataclass(frozen=True, slots=True)
class Apdu:
    """A command APDU; `le` is None when absent, 256 / 65536 for 00 / 0000."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    extended: bool = False

    def encode(self) -> bytes:
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        if not self.extended:
            body = bytes((len(self.data),)) + self.data if self.data else b""
            return header + body + (b"" if self.le is None else bytes((self.le & 0xFF,)))
        body = b"\x00" + len(self.data).to_bytes(2, "big") + self.data if self.data else b""
        if self.le is None:
            return header + body
        le = (self.le & 0xFFFF).to_bytes(2, "big")
        return header + (body + le if body else b"\x00" + le)

    @classmethod
    def parse(cls, raw: bytes) -> Apdu:
        """Decode `raw`; MalformedApdu when the length fields do not fit."""
        n = len(raw)
        if n < 4:
            raise MalformedApdu(f"{n} bytes is shorter than a header")
        head = raw[0], raw[1], raw[2], raw[3]
        if n == 4:
            return cls(*head)
        b4 = raw[4]
        if n == 5:
            return cls(*head, le=b4 or 256)
        if b4:
            if n == 5 + b4:
                return cls(*head, data=raw[5:])
            if n == 6 + b4:
                return cls(*head, data=raw[5:-1], le=raw[-1] or 256)
            raise MalformedApdu(f"Lc {b4} does not match {n - 5} body bytes")
        if n == 7:
            return cls(*head, le=int.from_bytes(raw[5:7], "big") or 65536, extended=True)
        lc = int.from_bytes(raw[5:7], "big")
        if lc and n == 7 + lc:
            return cls(*head, data=raw[7:], extended=True)
        if lc and n == 9 + lc:
            le = int.from_bytes(raw[-2:], "big") or 65536
            return cls(*head, data=raw[7:-2], le=le, extended=True)
        raise MalformedApdu(f"extended length fields do not match {n} bytes")


def sw_of(response: bytes) -> int:
    """The status word of a response APDU (0 when it is shorter than two bytes)."""
    return int.from_bytes(response[-2:], "big") if len(response) >= 2 else 0


def select_aid(aid: bytes, p2: int = 0x0C) -> bytes:
    return Apdu(0x00, INS.SELECT, 0x04, p2, aid).encode()


def select_ef(fid: int) -> bytes:
    return Apdu(0x00, INS.SELECT, 0x02, 0x0C, fid.to_bytes(2, "big")).encode()


def verify(value: bytes, p2: int = 0x80) -> bytes:
    return Apdu(0x00, INS.VERIFY, 0x00, p2, value).encode()


def change_command(ins: int, value: bytes, p2: int = 0x80) -> bytes:
    """CHANGE REFERENCE DATA (00 24 01 P2) or CHANGE KEY (80 32 00 P2) to `value`."""
    if ins == INS.CHANGE_KEY:
        return Apdu(0x80, INS.CHANGE_KEY, 0x00, p2, value).encode()
    return Apdu(0x00, INS.CHANGE_REFERENCE_DATA, 0x01, p2, value).encode()


def read_binary(offset: int, le: int, extended: bool = False) -> bytes:
    return Apdu(
        0x00, INS.READ_BINARY, offset >> 8, offset & 0xFF, le=le, extended=extended
    ).encode()
