"""Parsers for tests, independent of the code that wrote what they parse: a BER-TLV reader
(ISO 7816-4 §5.2) for the card's data objects, and DER through asn1crypto.

mynacard.personalize.tlv / .cvc / .testca write these encodings; checking them with their own
parsers would only show that the code agrees with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto.core import UTF8String
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class Tlv:
    """One data object as read: `offset` is where its tag starts in the buffer read."""

    tag: int
    value: bytes
    offset: int
    header_size: int

    @property
    def size(self) -> int:
        """Tag, length and value."""
        return self.header_size + len(self.value)


def read_tlv(data: bytes, offset: int = 0) -> Tlv:
    """The BER-TLV object at `offset`: a tag of one byte, or more when its low 5 bits are all
    set (then each further byte with bit 8 set is followed by another); a length of one byte
    under 80, or 81-84 and that many bytes. AssertionError if it is malformed or truncated."""
    position = offset
    tag = data[position]
    position += 1
    if tag & 0x1F == 0x1F:
        while True:
            assert position < len(data), f"tag at {offset} runs past the end"
            tag = tag << 8 | data[position]
            position += 1
            if not tag & 0x80:
                break
    assert position < len(data), f"object at {offset} has no length"
    length = data[position]
    position += 1
    if length & 0x80:
        count = length & 0x7F
        assert 1 <= count <= 4, f"length of {count} bytes at {offset}"
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    value = data[position : position + length]
    assert len(value) == length, f"object {tag:X} at {offset} runs past the end"
    return Tlv(tag, value, offset, position - offset)


def read_tlvs(data: bytes, start: int = 0, end: int | None = None) -> list[Tlv]:
    """The objects from `start` to `end`, up to 00 or FF filler."""
    stop = len(data) if end is None else end
    objects = []
    while start < stop and data[start] not in (0x00, 0xFF):
        obj = read_tlv(data[:stop], start)
        objects.append(obj)
        start += obj.size
    return objects


def fields(data: bytes, outer_tag: int) -> dict[int, Tlv]:
    """The objects inside the object `outer_tag` at the start of `data`, by tag; they must fill
    it exactly. Offsets count from the start of `data`."""
    outer = read_tlv(data)
    assert outer.tag == outer_tag, f"{outer.tag:X} != {outer_tag:X}"
    inner = read_tlvs(data, outer.header_size, outer.size)
    assert sum(obj.size for obj in inner) == len(outer.value)
    return {obj.tag: obj for obj in inner}


def rsa_public_key(data: bytes) -> rsa.RSAPublicKey:
    """An RSA-2048 public key written as 90 (exponent) then 91 (256-byte modulus)."""
    objects = read_tlvs(data)
    assert [obj.tag for obj in objects] == [0x90, 0x91], [hex(obj.tag) for obj in objects]
    exponent, modulus = (obj.value for obj in objects)
    assert len(modulus) == 256 and modulus[0] & 0x80, "the modulus is not 2048 bits"
    numbers = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big"))
    return numbers.public_key()


def other_names(cert: x509.Certificate) -> list[tuple[x509.ObjectIdentifier, str]]:
    """The otherName entries of the subjectAltName, each value a DER UTF8String, in order."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = []
    for entry in san:
        if isinstance(entry, x509.OtherName):
            value = UTF8String.load(entry.value, strict=True)
            names.append((entry.type_id, value.native))
    return names
