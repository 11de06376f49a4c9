"""券面事項確認AP (visual AP, 券面AP): the card face as signed data and images
(docs/card-spec.md §5)."""

from __future__ import annotations

import hashlib
from datetime import date

from cryptography.hazmat.primitives.asymmetric import rsa

from ..apdu import SW
from ..files import ALWAYS, Application, CardObject, Pin, RsaKey, TransparentEF, any_of
from ..personalize.cvc import (
    key_id,
    opaque_bytes,
    sha256_digest_info,
    sign_digest_info,
    sign_sha256,
)
from ..personalize.national import VisualApData
from ..personalize.profile import PIN_MAX_TRIES, Holder, Profile
from ..personalize.tlv import rsa_public_key_objects, tlv, with_offset_table

AID = bytes.fromhex("D3921000310001010402")

EF_AGE_RECORD = 0x0001
EF_CARD_FACE = 0x0002
EF_BASIC_INFO = 0x0003
EF_CERTIFICATE = 0x0004
EF_MY_NUMBER_IMAGE = 0x0005
EF_UNKNOWN = 0x0006  # sixteen filler bytes on real cards; purpose unknown
KEY_BIRTH = 0x0011  # 生年月日: era YYMMDD
CODE_B = 0x0012  # 照合番号B
CODE_A = 0x0013  # 照合番号A
KEY_CARD = 0x001A  # signs challenges, no credential

TAG_AGE_RECORD = 0xFF10
TAG_CARD_FACE = 0xFF20
TAG_OFFSETS = 0xDF21
TAG_BASIC_INFO = 0xFF30
TAG_MY_NUMBER_IMAGE = 0xFF40

UNKNOWN_EF_SIZE = 16
MAX_EF_SIZE = 0x7FFF  # READ BINARY offsets are 15 bits (docs/decisions.md #30)
# DF31 as seen on cards; DF33 (version) 00 and DF32 6000024/001 measured on a test card.
AP_IDENTIFICATION = bytes.fromhex("06030E01")
AP_VERSION = b"\x00"
BASIC_INFO_KEY_ID = key_id("6000024", "001")
# DF35: a key id measured as 5900025/001, then 256 bytes whose meaning is not known (SOL).
OPAQUE_BLOCK_KEY_ID = key_id("5900025", "001")


def _yyyymmdd(day: date) -> bytes:
    return day.strftime("%Y%m%d").encode("ascii")


def age_record(birth_date: date, card_key: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey) -> bytes:
    """EF 0001, 547 bytes: FF 10 { DF11 birth date, DF12 card key, DF13 signature }."""
    signed = tlv(0xDF11, _yyyymmdd(birth_date)) + tlv(0xDF12, rsa_public_key_objects(card_key))
    return tlv(TAG_AGE_RECORD, signed + tlv(0xDF13, sign_sha256(signer, signed)))


def card_face_digest(groups: tuple[bytes, bytes, bytes]) -> bytes:
    """The 96 bytes DF28 signs: SHA-256 of (DF22 DF23 DF24), (DF25 DF26) and (DF27)."""
    return b"".join(hashlib.sha256(group).digest() for group in groups)


def card_face(
    holder: Holder,
    expiry: date,
    data: VisualApData,
    card_key: rsa.RSAPublicKey,
    signer: rsa.RSAPrivateKey,
) -> bytes:
    """EF 0002: FF 20 { DF21 offsets, DF22 ... DF2A } (docs/card-spec.md §5).

    DF28 signs a SHA-256 DigestInfo whose digest is the 96 bytes of the three group digests
    (docs/decisions.md #26); DF29 (expiry) and DF2A (security code image) come after it, unsigned.
    """
    signed = [
        tlv(0xDF22, _yyyymmdd(holder.birth_date)),
        tlv(0xDF23, holder.sex.encode("ascii")),
        tlv(0xDF24, rsa_public_key_objects(card_key)),
        tlv(0xDF25, data.name_image),
        tlv(0xDF26, data.address_image),
        tlv(0xDF27, data.photo),
    ]
    groups = (b"".join(signed[0:3]), b"".join(signed[3:5]), signed[5])
    signature = sign_digest_info(signer, sha256_digest_info(card_face_digest(groups)))
    fields = [
        *signed,
        tlv(0xDF28, signature),
        tlv(0xDF29, _yyyymmdd(expiry)),
        tlv(0xDF2A, data.security_code_image),
    ]
    return with_offset_table(TAG_CARD_FACE, TAG_OFFSETS, fields)


def basic_info(municipality_code: str, card_key: rsa.RSAPublicKey) -> bytes:
    """EF 0003: FF 30 { DF31, DF32 key id, DF33 version, DF34 municipality, DF35 }.

    DF35's 256 bytes are opaque on real cards (SOL); stable per-card stand-in bytes are used.
    """
    opaque = OPAQUE_BLOCK_KEY_ID + opaque_bytes("visual AP DF35", card_key, 256)
    return tlv(
        TAG_BASIC_INFO,
        tlv(0xDF31, AP_IDENTIFICATION)
        + tlv(0xDF32, BASIC_INFO_KEY_ID)
        + tlv(0xDF33, AP_VERSION)
        + tlv(0xDF34, municipality_code.encode("ascii"))
        + tlv(0xDF35, opaque),
    )


def my_number_image(image: bytes, card_key: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey) -> bytes:
    """EF 0005: FF 40 { DF41 PNG of the My Number, DF42 card key, DF43 signature }."""
    signed = tlv(0xDF41, image) + tlv(0xDF42, rsa_public_key_objects(card_key))
    return tlv(TAG_MY_NUMBER_IMAGE, signed + tlv(0xDF43, sign_sha256(signer, signed)))


def build(profile: Profile) -> Application:
    """The visual AP of `profile`."""
    data = profile.visual_ap
    if data is None:
        raise ValueError(f"profile {profile.name} has no [visual_ap] keys and images")
    keys = data.keys
    card_public_key = keys.card_key.public_key()
    signer = keys.municipality_key
    face = card_face(profile.holder, profile.card_expiry, data, card_public_key, signer)
    if len(face) > MAX_EF_SIZE:
        raise ValueError(f"profile {profile.name}: card face EF is {len(face)} bytes, too big")
    either_code = any_of(CODE_A, CODE_B)
    objects: list[CardObject] = [
        TransparentEF(
            EF_AGE_RECORD,
            age_record(profile.holder.birth_date, card_public_key, signer),
            any_of(KEY_BIRTH),
        ),
        TransparentEF(EF_CARD_FACE, face, either_code),
        TransparentEF(EF_BASIC_INFO, basic_info(profile.municipality_code, card_public_key)),
        TransparentEF(EF_CERTIFICATE, keys.cv_certificate),
        TransparentEF(
            EF_MY_NUMBER_IMAGE,
            my_number_image(data.my_number_image, card_public_key, signer),
            any_of(CODE_A),
        ),
        TransparentEF(EF_UNKNOWN, bytes((profile.quirks.filler,)) * UNKNOWN_EF_SIZE, either_code),
        Pin(KEY_BIRTH, "visual.birth", "birth", PIN_MAX_TRIES["birth"], r"[0-9]{6}"),
        Pin(CODE_B, "visual.code_b", "code_b", PIN_MAX_TRIES["code_b"], r"[0-9]{14}"),
        Pin(CODE_A, "visual.code_a", "code_a", PIN_MAX_TRIES["code_a"], r"[0-9]{12}"),
        RsaKey(KEY_CARD, keys.card_key, use=ALWAYS),
    ]
    return Application(
        AID,
        "券面事項確認AP",
        {obj.fid: obj for obj in objects},
        KEY_CARD,
        session_key_sw=SW.NO_SESSION_KEY_DELIVERY,  # SET SESSION KEY, measured (SOL)
    )
