"""Client-side checks of the 住基AP and the 共通カードAP, written from docs/card-spec.md §6 and §7.

Each function takes `send` (C-APDU bytes -> R-APDU bytes: the transmit of a card in process or
through pcscd) and reads, parses and verifies as a relying party would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date

from cardtest import Send, apdu, ok, select, select_ef, sw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JUKI_AID = bytes.fromhex("D3921000310001010401")
COMMON_AID = bytes.fromhex("D3921000310001010100")
PIN_EF = 0x001C


def read_record(send: Send, number: int, sfi: int | None = None) -> bytes:
    """READ RECORD with Le 00: of the current EF, or of the EF with that SFI."""
    p2 = 0x04 if sfi is None else sfi << 3 | 0x04
    return send(bytes((0x00, 0xB2, number, p2, 0x00)))


def verify(send: Send, value: str) -> bytes:
    return send(apdu("00200080", value.encode("ascii")))


def parse_simple_tlv(data: bytes) -> list[tuple[int, bytes]]:
    """Simple-TLV objects (JICSAP 4.4.1): 1-byte tag, length 1 byte or FF + 2 bytes."""
    objects = []
    position = 0
    while position < len(data):
        tag, length = data[position], data[position + 1]
        position += 2
        if length == 0xFF:
            length = int.from_bytes(data[position : position + 2], "big")
            position += 2
        value = data[position : position + length]
        assert len(value) == length, f"object {tag:02X} is truncated"
        objects.append((tag, value))
        position += length
    return objects


@dataclass(frozen=True)
class CardInfo:
    serial: str
    municipality_code: str
    expiry: date


def parse_card_info(record: bytes) -> CardInfo:
    """共通カードAP EF 0001 record 1: 01 1C serial(15) municipality(5) expiry(YYYYMMDD)."""
    ((tag, value),) = parse_simple_tlv(record)
    assert tag == 0x01 and len(value) == 28 and value.isdigit()
    text = value.decode("ascii")
    return CardInfo(
        text[:15], text[15:20], date(int(text[20:24]), int(text[24:26]), int(text[26:]))
    )


def read_card_info(send: Send) -> CardInfo:
    """What `myna unknown number` does: READ RECORD 1 by SFI 1, without selecting the EF."""
    select(send, COMMON_AID)
    return parse_card_info(ok(send(bytes.fromhex("00B2010C00"))))


def read_key_reference(send: Send, aid: bytes) -> bytes:
    """EF 0002 record 1 of the 住基AP or the 共通カードAP: one 16-byte key reference."""
    select(send, aid)
    ok(select_ef(send, 0x0002))
    ((_, value),) = parse_simple_tlv(ok(read_record(send, 1)))
    assert len(value) == 16
    return value


def internal_authenticate(send: Send, public_key: rsa.RSAPublicKey, p2: int = 0x99) -> None:
    """INTERNAL AUTHENTICATE 00 88 00 P2 with a fresh challenge; the signature must verify."""
    challenge = os.urandom(32)
    signature = ok(send(bytes((0x00, 0x88, 0x00, p2, len(challenge))) + challenge + b"\x00"))
    public_key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())


def retries(send: Send, aid: bytes) -> str:
    """The retry query on PIN 001C of `aid`: 63Cx."""
    select(send, aid)
    ok(select_ef(send, PIN_EF))
    return sw(send(bytes.fromhex("00200080")))


def change_pin(send: Send, aid: bytes, old: str, new: str) -> str:
    """VERIFY the old PIN, then CHANGE KEY 80 32 00 80 (the JICSAP command); the last SW."""
    select(send, aid)
    ok(select_ef(send, PIN_EF))
    first = verify(send, old)
    if sw(first) != "9000":
        return sw(first)
    return sw(send(apdu("80320080", new.encode("ascii"))))
