"""BER-TLV data objects as the card stores them (ISO 7816-4 §5.2), and RSA keys in 90/91 form."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

TAG_EXPONENT = 0x90
TAG_MODULUS = 0x91
RSA_2048_BYTES = 256


def encode_length(length: int, octets: int | None = None) -> bytes:
    """A BER length: minimal DER form (docs/decisions.md #29), or the long form in `octets` bytes.

    The long form with a fixed size is how some measured objects are written, e.g. the
    text AP's `FF 40 82 00 9F` (docs/card-spec.md §4).
    """
    if length < 0:
        raise ValueError("a length cannot be negative")
    if octets is None:
        if length < 0x80:
            return bytes((length,))
        octets = (length.bit_length() + 7) // 8
    if not 1 <= octets <= 4 or length >= 1 << (8 * octets):
        raise ValueError(f"length {length} does not fit {octets} length octets")
    return bytes((0x80 | octets,)) + length.to_bytes(octets, "big")


def tag_bytes(tag: int) -> bytes:
    """A tag number as its bytes (FF20 -> FF 20, 90 -> 90)."""
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def tlv(tag: int, value: bytes, *, length_octets: int | None = None) -> bytes:
    """One data object: tag, length, value."""
    return tag_bytes(tag) + encode_length(len(value), length_octets) + value


def with_offset_table(tag: int, table_tag: int, fields: list[bytes]) -> bytes:
    """`tag` { `table_tag` offsets, fields }: each offset the 2-byte position of a field's tag
    counted from the first byte of the file, as in the 券面 APs' EF 0002 (docs/card-spec.md §4,
    §5)."""
    table_size = len(tag_bytes(table_tag)) + 1 + 2 * len(fields)
    content_size = table_size + sum(map(len, fields))
    position = len(tag_bytes(tag)) + len(encode_length(content_size)) + table_size
    offsets = b""
    for field in fields:
        offsets += position.to_bytes(2, "big")
        position += len(field)
    return tlv(tag, tlv(table_tag, offsets) + b"".join(fields))


@dataclass(frozen=True)
class DataObject:
    """A parsed data object: `offset` is where its tag starts in the parsed buffer."""

    tag: int
    value: bytes
    offset: int
    size: int  # header and value

    @property
    def header_size(self) -> int:
        return self.size - len(self.value)


def parse_object(data: bytes, offset: int = 0) -> DataObject:
    """The data object starting at `offset`; ValueError if it is malformed or truncated."""
    position = offset
    if position >= len(data):
        raise ValueError(f"no data object at offset {offset}")
    first = data[position]
    position += 1
    tag = first
    if first & 0x1F == 0x1F:  # the tag number continues in the next byte(s)
        while True:
            if position >= len(data):
                raise ValueError(f"tag at offset {offset} runs past the end")
            tag = tag << 8 | data[position]
            position += 1
            if not data[position - 1] & 0x80:
                break
    if position >= len(data):
        raise ValueError(f"object at offset {offset} has no length")
    length = data[position]
    position += 1
    if length & 0x80:
        octets = length & 0x7F
        if not 1 <= octets <= 4 or position + octets > len(data):
            raise ValueError(f"bad length field at offset {offset}")
        length = int.from_bytes(data[position : position + octets], "big")
        position += octets
    if position + length > len(data):
        raise ValueError(f"object {tag:X} at offset {offset} runs past the end")
    return DataObject(tag, data[position : position + length], offset, position + length - offset)


def parse_objects(data: bytes, offset: int = 0, end: int | None = None) -> list[DataObject]:
    """The data objects from `offset` to `end`, stopping early at 00 or FF filler."""
    stop = len(data) if end is None else end
    objects = []
    while offset < stop and data[offset] not in (0x00, 0xFF):
        obj = parse_object(data[:stop], offset)
        objects.append(obj)
        offset += obj.size
    return objects


def rsa_public_key_objects(key: rsa.RSAPublicKey) -> bytes:
    """An RSA-2048 public key as the card writes it: 90 (exponent) then 91 (modulus)."""
    numbers = key.public_numbers()
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return tlv(TAG_EXPONENT, exponent) + tlv(TAG_MODULUS, numbers.n.to_bytes(RSA_2048_BYTES, "big"))


def parse_rsa_public_key(data: bytes) -> rsa.RSAPublicKey:
    """The key of concatenated 90/91 objects; ValueError if they are missing or not RSA-2048."""
    found = {obj.tag: obj.value for obj in parse_objects(data)}
    if TAG_EXPONENT not in found or TAG_MODULUS not in found:
        raise ValueError("an RSA public key needs objects 90 (exponent) and 91 (modulus)")
    modulus = found[TAG_MODULUS]
    if len(modulus) != RSA_2048_BYTES or not modulus[0] & 0x80:
        raise ValueError("the modulus (91) is not 2048 bits")
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(found[TAG_EXPONENT], "big"), int.from_bytes(modulus, "big")
    )
    return numbers.public_key()
