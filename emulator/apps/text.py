"""券面事項入力補助AP (text AP): My Number, 基本4情報 and their signed digests
(docs/card-spec.md §4)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import rsa

from ..apdu import INS
from ..files import ALWAYS, Application, CardObject, Pin, RsaKey, TransparentEF, any_of
from ..personalize.cvc import key_id, opaque_bytes, sign_sha256
from ..personalize.profile import PIN_MAX_TRIES, Holder, Profile
from ..personalize.tlv import parse_object, rsa_public_key_objects, tlv, with_offset_table

AID = bytes.fromhex("D3921000310001010408")

EF_MY_NUMBER = 0x0001
EF_ATTRIBUTES = 0x0002
EF_INTEGRITY = 0x0003
EF_CERTIFICATE = 0x0004
EF_BASIC_INFO = 0x0005
EF_SESSION_KEY = 0x0006
EF_SIGNED_CARD_KEY = 0x0007
EF_UNKNOWN = 0x0008  # sixteen filler bytes on real cards; purpose unknown
PIN_TEXT = 0x0011  # 券面事項入力補助用暗証番号, 4 digits
KEY_BLOCKED = 0x0012  # blocked at issuance on every card seen
KEY_CARD = 0x0013  # signs challenges, no credential
CODE_A = 0x0014  # 照合番号A: the My Number
CODE_B = 0x0015  # 照合番号B: era YYMMDD + expiry year + security code

TAG_MY_NUMBER = 0xFF10
TAG_ATTRIBUTES = 0xFF20
TAG_OFFSETS = 0xDF21
TAG_NAME = 0xDF22
TAG_ADDRESS = 0xDF23
TAG_BIRTH_DATE = 0xDF24
TAG_SEX = 0xDF25
TAG_INTEGRITY = 0xFF30
TAG_MY_NUMBER_DIGEST = 0xDF31
TAG_ATTRIBUTES_DIGEST = 0xDF32
TAG_INTEGRITY_SIGNATURE = 0xDF33
TAG_BASIC_INFO = 0xFF40
TAG_SESSION_KEY = 0xA1
TAG_SIGNED_KEY = 0xFF50
TAG_CARD_KEY = 0xDF51
TAG_CARD_KEY_SIGNATURE = 0xDF52

BASIC_INFO_SIZE = 256  # MYNA-GO reads exactly 256 bytes (docs/decisions.md #30)
UNKNOWN_EF_SIZE = 16
# DF41 as seen on cards: spec version, extended Lc/Le supported, vendor id, vendor byte.
AP_IDENTIFICATION = bytes.fromhex("01030E01")
# DF42: "x000034" on cards (6 = the test hierarchy); what the key is, is not known.
BASIC_INFO_KEY_ID = key_id("6000034", "001")


def my_number_file(my_number: str, filler: int) -> bytes:
    """EF 0001: FF 10 0C + 12 digits + two filler bytes, 17 bytes (docs/decisions.md #27)."""
    return tlv(TAG_MY_NUMBER, my_number.encode("ascii")) + bytes((filler, filler))


def attributes_file(holder: Holder) -> bytes:
    """EF 0002: FF 20 { DF21 offsets, DF22 氏名, DF23 住所, DF24 生年月日, DF25 性別 }.

    The offsets are 2-byte positions of DF22..DF25 from the start of the file.
    """
    fields = [
        tlv(TAG_NAME, holder.name.encode("utf-8")),
        tlv(TAG_ADDRESS, holder.address.encode("utf-8")),
        tlv(TAG_BIRTH_DATE, holder.birth_date.strftime("%Y%m%d").encode("ascii")),
        tlv(TAG_SEX, holder.sex.encode("ascii")),
    ]
    return with_offset_table(TAG_ATTRIBUTES, TAG_OFFSETS, fields)


def attributes_digest_source(attributes: bytes) -> bytes:
    """What DF32 of EF 0003 hashes: EF 0002's outer value from DF22 on (the table skipped)."""
    outer = parse_object(attributes)
    table = parse_object(attributes, outer.header_size)
    return attributes[table.offset + table.size : outer.size]


def integrity_record(my_number: bytes, attributes: bytes, signer: rsa.RSAPrivateKey) -> bytes:
    """EF 0003, 336 bytes: the two digests and a signature over their objects."""
    digests = tlv(TAG_MY_NUMBER_DIGEST, hashlib.sha256(my_number).digest()) + tlv(
        TAG_ATTRIBUTES_DIGEST, hashlib.sha256(attributes_digest_source(attributes)).digest()
    )
    return tlv(TAG_INTEGRITY, digests + tlv(TAG_INTEGRITY_SIGNATURE, sign_sha256(signer, digests)))


def basic_info(card_key: rsa.RSAPublicKey, filler: int) -> bytes:
    """EF 0005: FF 40 82 00 9F { DF41, DF42, DF43 82 00 80 }, filled to 256 bytes.

    DF43's 128 bytes are 32 bytes then 96 FF on real cards; the 32 bytes are not identified
    (SOL), so stable per-card stand-in bytes are used.
    """
    unknown = opaque_bytes("text AP DF43", card_key, 32) + b"\xff" * 96
    content = (
        tlv(0xDF41, AP_IDENTIFICATION)
        + tlv(0xDF42, BASIC_INFO_KEY_ID)
        + tlv(0xDF43, unknown, length_octets=2)
    )
    data = tlv(TAG_BASIC_INFO, content, length_octets=2)
    return data + bytes((filler,)) * (BASIC_INFO_SIZE - len(data))


def signed_card_key(card_key: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey) -> bytes:
    """EF 0007: FF 50 { DF51 card key (90/91), DF52 signature over the DF51 object }."""
    key_object = tlv(TAG_CARD_KEY, rsa_public_key_objects(card_key))
    return tlv(
        TAG_SIGNED_KEY, key_object + tlv(TAG_CARD_KEY_SIGNATURE, sign_sha256(signer, key_object))
    )


def build(profile: Profile) -> Application:
    """The text AP of `profile`."""
    data = profile.text_ap
    if data is None:
        raise ValueError(f"profile {profile.name} has no [text_ap] keys")
    filler = profile.quirks.filler
    keys = data.keys
    card_public_key = keys.card_key.public_key()
    my_number = my_number_file(profile.my_number, filler)
    attributes = attributes_file(profile.holder)
    any_key = any_of(PIN_TEXT, CODE_A, CODE_B)
    objects: list[CardObject] = [
        TransparentEF(EF_MY_NUMBER, my_number, any_of(PIN_TEXT, CODE_A)),
        TransparentEF(EF_ATTRIBUTES, attributes, any_of(PIN_TEXT, CODE_B)),
        TransparentEF(
            EF_INTEGRITY, integrity_record(my_number, attributes, keys.municipality_key), any_key
        ),
        TransparentEF(EF_CERTIFICATE, keys.cv_certificate),
        TransparentEF(EF_BASIC_INFO, basic_info(card_public_key, filler)),
        TransparentEF(
            EF_SESSION_KEY,
            tlv(TAG_SESSION_KEY, rsa_public_key_objects(data.session_public_key)),
            any_key,
        ),
        TransparentEF(
            EF_SIGNED_CARD_KEY, signed_card_key(card_public_key, keys.municipality_key), any_key
        ),
        TransparentEF(EF_UNKNOWN, bytes((filler,)) * UNKNOWN_EF_SIZE),
        Pin(
            PIN_TEXT, "text", "text", PIN_MAX_TRIES["text"], r"[0-9]{4}", INS.CHANGE_REFERENCE_DATA
        ),
        Pin(KEY_BLOCKED, "text.blocked", None, 0, r"(?!)"),  # no value can ever be set
        RsaKey(KEY_CARD, keys.card_key, use=ALWAYS),
        Pin(CODE_A, "text.code_a", "code_a", PIN_MAX_TRIES["code_a"], r"[0-9]{12}"),
        Pin(CODE_B, "text.code_b", "code_b", PIN_MAX_TRIES["code_b"], r"[0-9]{14}"),
    ]
    # SET SESSION KEY needs the PIN, 照合番号A alone is not enough (docs/secure-messaging.md).
    return Application(
        AID,
        "券面事項入力補助AP",
        {obj.fid: obj for obj in objects},
        KEY_CARD,
        session_key_use=any_of(PIN_TEXT),
        session_key=data.session_key,
    )
