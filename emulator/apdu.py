"""ISO 7816-4 command APDUs, status words and instruction codes."""

from __future__ import annotations

from enum import IntEnum


class SW(IntEnum):
    """Status words this card answers with (docs/card-spec.md §2.4)."""

    OK = 0x9000
    NO_SESSION_KEY_DELIVERY = 0x66F1  # SET SESSION KEY in the visual and 共通 APs (SOL, measured)
    AUTHENTICATION_FAILED = 0x6300  # EXTERNAL AUTHENTICATE with a key without a counter
    VERIFY_FAILED = 0x63C0  # low nibble: tries left
    MORE_DATA = 0x6100  # low byte: bytes available (T=0 chaining quirk only)
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    COMMAND_CHAINING_NOT_SUPPORTED = 0x6884
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTHENTICATION_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_BLOCKED = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    NO_CURRENT_EF = 0x6986
    SM_OBJECTS_MISSING = 0x6987  # CLA 0C in a secure-messaging session (no checksum key)
    SM_OBJECTS_INCORRECT = 0x6988  # a wrong counter or a malformed SM body: the session breaks
    SM_DATA_OBJECT_MISSING = 0x69FC
    WRONG_DATA = 0x6A80
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1_P2 = 0x6A86
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    OFFSET_OUTSIDE_EF = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00

    def to_bytes_be(self) -> bytes:
        return self.value.to_bytes(2, "big")


class INS(IntEnum):
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    COMPUTE_SIGNATURE = 0x2A  # CLA 80
    DECREASE = 0x30  # CLA 00
    CHANGE_KEY = 0x32  # CLA 80 (JICSAP)
    INCREASE = 0x32  # CLA 00 (ISO); the same byte as CHANGE KEY, so an alias of it here
    EXTERNAL_AUTHENTICATE = 0x82
    GET_CHALLENGE = 0x84
    INTERNAL_AUTHENTICATE = 0x88
    SELECT = 0xA4
    READ_BINARY = 0xB0
    SET_SESSION_KEY = 0xAE  # CLA 80 (docs/card-spec.md §4)
    READ_RECORD = 0xB2
    GET_RESPONSE = 0xC0
    GET_DATA = 0xCA
    UPDATE_BINARY = 0xD6
    UPDATE_RECORD = 0xDC
    APPEND_RECORD = 0xE2
    LAST_COMMAND = 0xFC  # CLA 80: the iPhone JPKI token's last-command indicator


class StatusError(Exception):
    """Raised by a command handler to answer with a status word and no data."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


class CommandApdu:
    """A parsed command APDU (ISO 7816-3 §12.1: cases 1-4, short and extended).

    `le` is None when absent, else the expected length with 00 / 0000 meaning 256 / 65536.
    """

    __slots__ = ("cla", "data", "extended", "ins", "le", "p1", "p2")

    def __init__(
        self,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes = b"",
        le: int | None = None,
        extended: bool = False,
    ) -> None:
        self.cla = cla
        self.ins = ins
        self.p1 = p1
        self.p2 = p2
        self.data = data
        self.le = le
        self.extended = extended

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Parse raw bytes; a malformed length field raises StatusError(6700)."""
        n = len(raw)
        if n == 4:
            return cls(raw[0], raw[1], raw[2], raw[3])
        if n < 4:
            raise StatusError(SW.WRONG_LENGTH)
        b4 = raw[4]
        if n == 5:
            return cls(raw[0], raw[1], raw[2], raw[3], b"", b4 or 256)
        if b4:
            if n == 5 + b4:
                return cls(raw[0], raw[1], raw[2], raw[3], raw[5:])
            if n == 6 + b4:
                return cls(raw[0], raw[1], raw[2], raw[3], raw[5:-1], raw[-1] or 256)
            raise StatusError(SW.WRONG_LENGTH)
        if n == 7:
            return cls(raw[0], raw[1], raw[2], raw[3], b"", (raw[5] << 8 | raw[6]) or 65536, True)
        if n < 7:  # an extended-length marker without its two length bytes
            raise StatusError(SW.WRONG_LENGTH)
        lc = raw[5] << 8 | raw[6]
        if lc:
            if n == 7 + lc:
                return cls(raw[0], raw[1], raw[2], raw[3], raw[7:], None, True)
            if n == 9 + lc:
                le = (raw[-2] << 8 | raw[-1]) or 65536
                return cls(raw[0], raw[1], raw[2], raw[3], raw[7:-2], le, True)
        raise StatusError(SW.WRONG_LENGTH)

    def encode(self) -> bytes:
        """The APDU as bytes, short form unless `extended` or a field needs extended."""
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        le = self.le
        extended = self.extended or len(self.data) > 255 or (le is not None and le > 256)
        if not extended:
            body = bytes((len(self.data),)) + self.data if self.data else b""
            tail = bytes((le & 0xFF,)) if le is not None else b""
            return header + body + tail
        body = b"\x00" + len(self.data).to_bytes(2, "big") + self.data if self.data else b""
        if le is None:
            return header + body
        le_bytes = (le & 0xFFFF).to_bytes(2, "big")
        return header + (body + le_bytes if body else b"\x00" + le_bytes)

    def __repr__(self) -> str:
        return (
            f"CommandApdu(cla={self.cla:02X}, ins={self.ins:02X}, p1={self.p1:02X}, "
            f"p2={self.p2:02X}, data={self.data.hex().upper()}, le={self.le}, "
            f"extended={self.extended})"
        )
