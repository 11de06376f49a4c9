"""Client-side checks of the 券面 APs, written from docs/card-spec.md §4/§5 (not from
mynacard/apps).

Each function takes `send` (C-APDU bytes -> R-APDU bytes: the transmit of a card in process or
through pcscd) and reads, parses and verifies as a relying party would: with its own BER-TLV
reader (ber.py) and its own copy of the test roots, not with the code that wrote the objects.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Literal

from ber import Tlv, fields, read_tlv, read_tlvs, rsa_public_key
from cardtest import Send, ok, read_ef, select, select_ef, sw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from PIL import Image

ApKind = Literal["text", "visual"]

TEXT_AID = bytes.fromhex("D3921000310001010408")
VISUAL_AID = bytes.fromhex("D3921000310001010402")
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
JP2_SIGNATURE_BOX = bytes.fromhex("0000000C6A5020200D0A870A")
PKCS1 = padding.PKCS1v15()


def key_id(number: str, group: str) -> bytes:
    """A 16-byte key identifier: 7 ASCII digits, 08 05, 3 ASCII digits, four 00
    (docs/card.md: `6000033/001` = `"6000033" 08 05 "001" 00000000`)."""
    return number.encode("ascii") + b"\x08\x05" + group.encode("ascii") + bytes(4)


# The test roots that issue the CV certificates in EF 0004, as a verifier holds them: key id
# (docs/card-spec.md §4, §5) and RSA-2048 modulus with exponent 65537. A copy, so that the
# checks do not take the emulator's word for them (test_national_aps.py compares the two).
TEST_ROOTS: dict[ApKind, tuple[bytes, int]] = {
    "text": (
        key_id("6000033", "001"),
        int(
            "A7058BD2C55223EC099F8DC7F2B57394FD0E332175CB2503D65B49F199711CD0"
            "F6246F6634A4818A4C3BC762B6626E4F6C98D1AF160222260D38F937522EC21B"
            "4FD9BAC05C2529C4282B5DD5C3A21724FF5648C24A764A8BA16CBEFFFAE2E34B"
            "AB39A1D5417A5088F0099F357B93779E169AAA406AAC8ED37D5BA3931CFDFAAA"
            "BBF310A5F40462AC704DC61F333109086196A0101F5EDE9868EA8C7B6D682BD0"
            "AE06F3D0CDE777D51617D225947AC35338AC9469C65C21B8E83106C2E0F10195"
            "C29970F3D53F2DE1CC46954F3DF75DDBCCB7671634463DB49FC0002995A3C5C3"
            "7CABABB13600B8E49F28CCAB185E5D5B7118645D73F6C4FB07C5580EFB4FF3BF",
            16,
        ),
    ),
    "visual": (
        key_id("6000023", "001"),
        int(
            "BDE86DD30900CA664A06AFC364738603F9A48A30DFA2FE810A272E9DF7A2F50D"
            "A2B702C881A65BDCBC24F0470B534FF1A065F2268FE3AC7CE07772FAF5E302BD"
            "439718FB6F773FAD526C0373BBCBDDE551FE33951D3E613963F700397AE1BBA3"
            "6FEDD07721FA709656E6B5B8F7057FC6F2D1B6C42B89BAA19325C030F4CBBB53"
            "A2C0593103ECCD03DF8E7E3237EC7672D3089607BE0312189149605AB7DC48D5"
            "4B95C842F94363F00C69BF923AD7229B4D6E50CE039E2A8D36BE073D6399865C"
            "68C051D3BD7DF5DD1A393D55155D11D297CE39CE39EA61D0AC9B9195076CB14C"
            "A0DD9394EB857A12D78C9797BFC4284D5C4323D6637B7F33A3353D9FE76C9B1D",
            16,
        ),
    ),
}


def root_public_key(kind: ApKind) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(65537, TEST_ROOTS[kind][1]).public_key()


def verify(send: Send, fid: int, value: str) -> bytes:
    """SELECT the key EF, then VERIFY with P2 = 80 (the current EF)."""
    ok(select_ef(send, fid))
    data = value.encode("ascii")
    return send(bytes((0x00, 0x20, 0x00, 0x80, len(data))) + data)


def read_by_sfi_extended(send: Send, sfi: int) -> bytes:
    """JSA's read: one READ BINARY with P1 = 80|SFI, offset 0 and extended Le 65536."""
    return ok(send(bytes((0x00, 0xB0, 0x80 | sfi, 0x00, 0x00, 0x00, 0x00))))


def check_offset_table(data: bytes, objects: dict[int, Tlv], tags: range) -> None:
    """DF21 lists the 2-byte file offsets of the objects with `tags`, in order."""
    table = objects[0xDF21].value
    assert [int.from_bytes(table[i : i + 2], "big") for i in range(0, len(table), 2)] == [
        objects[tag].offset for tag in tags
    ]
    for tag in tags:
        assert data[objects[tag].offset :].startswith(tag.to_bytes(2, "big"))


def raw(data: bytes, obj: Tlv) -> bytes:
    """An object as written, header included."""
    return data[obj.offset : obj.offset + obj.size]


def verify_sha256(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> None:
    key.verify(signature, message, PKCS1, hashes.SHA256())


def municipality_key(cvc: bytes, kind: ApKind) -> rsa.RSAPublicKey:
    """Check a 568-byte EF 0004 against the test root; return the key it certifies.

    7F21 { 5F4E (issuer key id 16, subject key id 16, 90/91 key), 5F37 signature }: PKCS#1
    v1.5, SHA-256 over the 297-byte 5F4E value (docs/card.md, "The national applications").
    """
    assert len(cvc) == 568
    assert cvc[:5] == bytes.fromhex("7F21820233")
    assert cvc[5:10] == bytes.fromhex("5F4E820129") and cvc[307:312] == bytes.fromhex("5F37820100")
    certificate = read_tlv(cvc)
    assert certificate.tag == 0x7F21 and certificate.size == len(cvc)
    body, signature = read_tlvs(certificate.value)
    assert (body.tag, len(body.value)) == (0x5F4E, 297)
    assert (signature.tag, len(signature.value)) == (0x5F37, 256)
    issuer, subject = body.value[:16], body.value[16:32]
    assert issuer == TEST_ROOTS[kind][0]
    root_public_key(kind).verify(signature.value, body.value, PKCS1, hashes.SHA256())
    assert body.value == cvc[10:307]
    assert subject[7:9] == b"\x08\x05" and subject[:7].isdigit() and subject[12:] == bytes(4)
    return rsa_public_key(body.value[32:])


def challenge_signature(send: Send, p2: int = 0x00) -> tuple[bytes, bytes]:
    """GET CHALLENGE, then 80 2A 00 P2 with the SHA-256 DigestInfo of it: (challenge, sig)."""
    challenge = ok(send(b"\x00\x84\x00\x00\x10"))
    assert len(challenge) == 16
    digest_info = SHA256_DIGEST_INFO + hashlib.sha256(challenge).digest()
    command = bytes((0x80, 0x2A, 0x00, p2, len(digest_info))) + digest_info + b"\x00"
    signature = ok(send(command))
    assert len(signature) == 256
    return challenge, signature


def open_image(data: bytes, kind: str) -> Image.Image:
    """A PNG or JP2 opened with Pillow (the JP2 must be a real JP2 container)."""
    if kind == "jp2":
        assert data.startswith(JP2_SIGNATURE_BOX)
    else:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == ("JPEG2000" if kind == "jp2" else "PNG")
    return image


@dataclass
class TextAp:
    """Everything read from the text AP, after every check."""

    my_number: str
    name: str
    address: str
    birth_date: str
    sex: str
    card_key: rsa.RSAPublicKey


def read_text_ap(send: Send, pin: str) -> TextAp:
    """Read and verify every object of the text AP, opening it with the 4-digit PIN."""
    select(send, TEXT_AID)
    signer = municipality_key(read_ef(send, 0x0004), "text")
    basic = read_ef(send, 0x0005)
    assert len(basic) == 256 and basic[:5] == bytes.fromhex("FF4082009F")
    info = fields(basic, 0xFF40)
    assert info[0xDF41].value == bytes.fromhex("01030E01")
    assert len(info[0xDF42].value) == 16
    assert basic[info[0xDF43].offset :][:5] == bytes.fromhex("DF43820080")
    assert info[0xDF43].value[32:] == b"\xff" * 96 and basic[164:] == b"\xff" * 92
    assert read_ef(send, 0x0008) == b"\xff" * 16
    assert sw(read_ef_first(send, 0x0001)) == "6982"

    assert sw(verify(send, 0x0011, pin)) == "9000"
    number_file = read_ef(send, 0x0001)
    assert len(number_file) == 17
    assert number_file[:3] == b"\xff\x10\x0c" and number_file[15:] == b"\xff\xff"
    attributes = read_ef(send, 0x0002)
    objects = fields(attributes, 0xFF20)
    check_offset_table(attributes, objects, range(0xDF22, 0xDF26))
    integrity = read_ef(send, 0x0003)
    assert len(integrity) == 336 and integrity[:5] == bytes.fromhex("FF3082014B")
    record = fields(integrity, 0xFF30)
    assert record[0xDF31].value == hashlib.sha256(number_file).digest()
    from_df22 = attributes[objects[0xDF22].offset :]
    assert record[0xDF32].value == hashlib.sha256(from_df22).digest()
    signed = integrity[record[0xDF31].offset : record[0xDF33].offset]
    verify_sha256(signer, record[0xDF33].value, signed)

    session = read_ef(send, 0x0006)
    assert read_tlv(session).tag == 0xA1
    rsa_public_key(read_tlv(session).value)
    signed_key = read_ef(send, 0x0007)
    assert signed_key[:5] == bytes.fromhex("FF50820213") and len(signed_key) == 536
    key_objects = fields(signed_key, 0xFF50)
    verify_sha256(signer, key_objects[0xDF52].value, raw(signed_key, key_objects[0xDF51]))
    card_key = rsa_public_key(key_objects[0xDF51].value)
    assert card_key != signer

    challenge, signature = challenge_signature(send)
    verify_sha256(card_key, signature, challenge)
    return TextAp(
        my_number=number_file[3:15].decode("ascii"),
        name=objects[0xDF22].value.decode("utf-8"),
        address=objects[0xDF23].value.decode("utf-8"),
        birth_date=objects[0xDF24].value.decode("ascii"),
        sex=objects[0xDF25].value.decode("ascii"),
        card_key=card_key,
    )


def read_ef_first(send: Send, fid: int) -> bytes:
    """SELECT an EF and READ its first byte (the SW tells whether it may be read)."""
    ok(select_ef(send, fid))
    return send(b"\x00\xb0\x00\x00\x01")


# Which keys open which EF, as measured (docs/card-spec.md §4, §5); None = free.
TEXT_ACCESS: dict[int, set[int] | None] = {
    0x0001: {0x0011, 0x0014},  # PIN or 照合番号A
    0x0002: {0x0011, 0x0015},  # PIN or 照合番号B
    0x0003: {0x0011, 0x0014, 0x0015},
    0x0004: None,
    0x0005: None,
    0x0006: {0x0011, 0x0014, 0x0015},
    0x0007: {0x0011, 0x0014, 0x0015},
    0x0008: None,
}
VISUAL_ACCESS: dict[int, set[int] | None] = {
    0x0001: {0x0011},  # 生年月日
    0x0002: {0x0013, 0x0012},  # 照合番号A or B
    0x0003: None,
    0x0004: None,
    0x0005: {0x0013},  # 照合番号A only
    0x0006: {0x0013, 0x0012},
}


def check_access_matrix(
    send: Send, access: dict[int, set[int] | None], key: int | None, value: str
) -> None:
    """In the selected AP, after VERIFY of `key` (None: nothing verified), each EF of
    `access` reads (9000) exactly when it is free or `key` opens it, else 6982; both by
    SELECT + READ BINARY and by SFI."""
    if key is not None:
        assert sw(verify(send, key, value)) == "9000"
    for fid, openers in access.items():
        expected = "9000" if openers is None or key in openers else "6982"
        assert sw(read_ef_first(send, fid)) == expected, f"EF {fid:04X} after {key}"
        by_sfi = send(bytes((0x00, 0xB0, 0x80 | fid, 0x00, 0x01)))
        assert sw(by_sfi) == expected, f"EF {fid:04X} by SFI after {key}"


@dataclass
class CardFace:
    """The verified card face of the visual AP."""

    birth_date: str
    sex: str
    expiry: str
    images: dict[str, Image.Image]
    size: int


def card_face_digest_info(face: bytes, objects: dict[int, Tlv]) -> bytes:
    """What DF28 signs: a SHA-256 DigestInfo of the three group digests (docs/decisions.md #26)."""
    groups = (
        face[objects[0xDF22].offset : objects[0xDF25].offset],
        face[objects[0xDF25].offset : objects[0xDF27].offset],
        raw(face, objects[0xDF27]),
    )
    digest = b"".join(hashlib.sha256(group).digest() for group in groups)
    return bytes.fromhex("3071300d0609608648016503040201050004 60".replace(" ", "")) + digest


def check_card_face(face: bytes, signer: rsa.RSAPublicKey) -> tuple[CardFace, rsa.RSAPublicKey]:
    """Parse and verify visual EF 0002; return it and the card key it carries."""
    assert len(face) < 32767
    objects = fields(face, 0xFF20)
    check_offset_table(face, objects, range(0xDF22, 0xDF2B))
    assert len(objects[0xDF21].value) == 18
    recovered = signer.recover_data_from_signature(objects[0xDF28].value, PKCS1, None)
    assert recovered == card_face_digest_info(face, objects)
    images = {
        "name": open_image(objects[0xDF25].value, "png"),
        "address": open_image(objects[0xDF26].value, "png"),
        "photo": open_image(objects[0xDF27].value, "jp2"),
        "security_code": open_image(objects[0xDF2A].value, "png"),
    }
    card_key = rsa_public_key(objects[0xDF24].value)
    parsed = CardFace(
        birth_date=objects[0xDF22].value.decode("ascii"),
        sex=objects[0xDF23].value.decode("ascii"),
        expiry=objects[0xDF29].value.decode("ascii"),
        images=images,
        size=len(face),
    )
    return parsed, card_key


def check_signed_record(
    data: bytes, outer_tag: int, signature_tag: int, signer: rsa.RSAPublicKey
) -> dict[int, Tlv]:
    """A record whose last object signs (PKCS#1 v1.5, SHA-256) every object before it."""
    objects = fields(data, outer_tag)
    outer_header = read_tlv(data).header_size
    verify_sha256(
        signer, objects[signature_tag].value, data[outer_header : objects[signature_tag].offset]
    )
    return objects
