"""The bytes of the national applications' EFs as docs/card.md lays them out, made from what
a profile says of the holder, the card and the keys (never from the emulator's code).

`national_efs` gives whole EFs where the layout fixes every byte (filler included),
`partial_efs` the bytes it fixes of the others; the signatures inside the records are
PKCS#1 v1.5 and so the same every time: they are made once per run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .spec import COMMON, TEXT, VISUAL

ObjectKey = tuple[bytes, int]
# What follows the data of an EF is the filler (docs/decisions.md #10, the `filler` quirk):
# the two bytes after the My Number, text EF 0005 after its 164 bytes, and the whole of
# text EF 0008 and visual EF 0006 ("sixteen FF", docs/card.md).


def tlv(tag: int, value: bytes) -> bytes:
    """A BER object with the shortest length form (docs/decisions.md #29)."""
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    size = len(value)
    if size < 0x80:
        length = bytes((size,))
    elif size <= 0xFF:
        length = b"\x81" + bytes((size,))
    else:
        length = b"\x82" + size.to_bytes(2, "big")
    return tag_bytes + length + value


def long_tlv(tag: int, value: bytes) -> bytes:
    """A BER object with the 82 xx xx length form, as the fixed-size records use it."""
    return tag.to_bytes(2, "big") + b"\x82" + len(value).to_bytes(2, "big") + value


def key_id(issuer: str) -> bytes:
    """A 16-byte key id: 7 ASCII digits, 08 05, 3 ASCII digits, four 00 ("6000033/001")."""
    number, _, generation = issuer.partition("/")
    return number.encode() + b"\x08\x05" + generation.encode() + bytes(4)


def public_key_objects(key: rsa.RSAPublicKey) -> bytes:
    """90 exponent, 91 modulus (the 90/91 pair of text EF 0006 / 0007, visual DF12 ...)."""
    numbers = key.public_numbers()
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return tlv(0x90, exponent) + tlv(0x91, numbers.n.to_bytes(256, "big"))


def signature(signer: rsa.RSAPrivateKey, signed: bytes) -> bytes:
    """The records' signatures: PKCS#1 v1.5 with SHA-256 over the objects before them."""
    return signer.sign(signed, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class Holder:
    """What [holder] and [card] of a profile say (docs/profiles.md)."""

    name: str
    address: str
    birth_date: date
    sex: str
    my_number: str
    expiry: date
    serial_number: str
    municipality_code: str


@dataclass(frozen=True)
class ApKeys:
    """One 券面 AP's keys from [text_ap] / [visual_ap]: its card key, the municipality key
    that signs its records, its CV certificate (EF 0004)."""

    card_key: rsa.RSAPrivateKey
    municipality_key: rsa.RSAPrivateKey
    cv_certificate: bytes


def text_attributes(holder: Holder) -> bytes:
    """Text EF 0002: FF 20 { DF21 where DF22..DF25 start, DF22 name, DF23 address, DF24
    birth date YYYYMMDD, DF25 sex } in UTF-8 (docs/card-spec.md §4)."""
    fields = [
        tlv(0xDF22, holder.name.encode()),
        tlv(0xDF23, holder.address.encode()),
        tlv(0xDF24, holder.birth_date.strftime("%Y%m%d").encode()),
        tlv(0xDF25, holder.sex.encode()),
    ]
    table_size = len(tlv(0xDF21, bytes(2 * len(fields))))
    body_size = table_size + sum(len(f) for f in fields)
    header = len(tlv(0xFF20, bytes(body_size))) - body_size
    offsets, position = b"", header + table_size
    for item in fields:
        offsets += position.to_bytes(2, "big")
        position += len(item)
    return tlv(0xFF20, tlv(0xDF21, offsets) + b"".join(fields))


def national_efs(
    holder: Holder,
    text: ApKeys | None,
    visual: ApKeys | None,
    session_key: rsa.RSAPublicKey | None,
    my_number_image: bytes | None,
    filler: int = 0xFF,
) -> dict[ObjectKey, bytes]:
    """Whole EFs of the text and visual APs that the layout and the profile fix."""
    efs: dict[ObjectKey, bytes] = {}
    fill = bytes((filler,))
    my_number = b"\xff\x10\x0c" + holder.my_number.encode() + fill * 2
    attributes = text_attributes(holder)
    efs[(TEXT.aid, 0x0001)] = my_number
    efs[(TEXT.aid, 0x0002)] = attributes
    efs[(TEXT.aid, 0x0008)] = fill * 16
    efs[(VISUAL.aid, 0x0006)] = fill * 16
    if session_key is not None:
        efs[(TEXT.aid, 0x0006)] = tlv(0xA1, public_key_objects(session_key))
    if text is not None:
        digests = tlv(0xDF31, hashlib.sha256(my_number).digest())
        start = attributes.index(b"\xdf\x22")
        digests += tlv(0xDF32, hashlib.sha256(attributes[start:]).digest())
        signed = long_tlv(0xDF33, signature(text.municipality_key, digests))
        efs[(TEXT.aid, 0x0003)] = long_tlv(0xFF30, digests + signed)
        efs[(TEXT.aid, 0x0004)] = text.cv_certificate
        card_key = long_tlv(0xDF51, public_key_objects(text.card_key.public_key()))
        signed = long_tlv(0xDF52, signature(text.municipality_key, card_key))
        efs[(TEXT.aid, 0x0007)] = long_tlv(0xFF50, card_key + signed)
    if visual is not None:
        card_key = long_tlv(0xDF12, public_key_objects(visual.card_key.public_key()))
        age = tlv(0xDF11, holder.birth_date.strftime("%Y%m%d").encode()) + card_key
        signed = long_tlv(0xDF13, signature(visual.municipality_key, age))
        efs[(VISUAL.aid, 0x0001)] = long_tlv(0xFF10, age + signed)
        efs[(VISUAL.aid, 0x0004)] = visual.cv_certificate
        if my_number_image is not None:
            card_key = tlv(0xDF42, public_key_objects(visual.card_key.public_key()))
            image = tlv(0xDF41, my_number_image) + card_key
            signed = tlv(0xDF43, signature(visual.municipality_key, image))
            efs[(VISUAL.aid, 0x0005)] = tlv(0xFF40, image + signed)
    return efs


# (size, [(offset, bytes), ...]): what the layout fixes of an EF whose other bytes are not
# public (docs/card-spec.md §4, §5: "meaning unknown").
Partial = tuple[int, tuple[tuple[int, bytes], ...]]


def partial_efs(holder: Holder, filler: int = 0xFF) -> dict[ObjectKey, Partial]:
    """Text EF 0005 (256 bytes: FF 40 82 00 9F { DF41, DF42, DF43 82 00 80 <32 unknown>
    <96 FF> }, FF to the end) and visual EF 0003 (320 bytes: FF 30 82 01 3B { DF31, DF32,
    DF33, DF34 municipality code, DF35 82 01 10 <272 unknown> })."""
    text_head = (
        b"\xff\x40\x82\x00\x9f"
        + tlv(0xDF41, bytes.fromhex("01030E01"))
        + tlv(0xDF42, key_id("6000034/001"))
        + b"\xdf\x43\x82\x00\x80"
    )
    text_data_end = 5 + 0x9F
    text_tail = b"\xff" * (text_data_end - len(text_head) - 32)
    text_tail += bytes((filler,)) * (256 - text_data_end)
    visual_head = (
        b"\xff\x30\x82\x01\x3b"
        + tlv(0xDF31, bytes.fromhex("06030E01"))
        + tlv(0xDF32, key_id("6000024/001"))
        + tlv(0xDF33, b"\x00")
        + tlv(0xDF34, holder.municipality_code.encode())
        + b"\xdf\x35\x82\x01\x10"
    )
    return {
        (TEXT.aid, 0x0005): (256, ((0, text_head), (len(text_head) + 32, text_tail))),
        (VISUAL.aid, 0x0003): (320, ((0, visual_head),)),
    }


def national_records(holder: Holder) -> dict[ObjectKey, tuple[bytes, ...]]:
    """共通カードAP EF 0001: record 1 = 01 1C + serial (15) + municipality (5) + expiry."""
    number = holder.serial_number + holder.municipality_code + holder.expiry.strftime("%Y%m%d")
    return {(COMMON.aid, 0x0001): (tlv(0x01, number.encode()),)}
