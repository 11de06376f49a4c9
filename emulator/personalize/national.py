"""Profile sections [text_ap] and [visual_ap]: keys, CV certificates and card-face images.

Each AP has two keys: its card key (on the card: EF 0013 of the text AP, EF 001A of the
visual AP; it signs challenges) and a municipality key (issuer-side, never on the card: the
CV certificate in EF 0004 certifies it and it signs the AP's records when the card is built).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from mynacard.personalize.cvc import CVC_ROOTS, ApKind, parse_cvc
from mynacard.personalize.fields import Field, Table
from mynacard.personalize.image_check import image_problem
from mynacard.personalize.rsakeys import read_rsa_key

# Largest image per field: together they keep visual EF 0002 under 32,767 bytes (the
# 15-bit READ BINARY offset, docs/decisions.md #30) with about 1 KB to spare for the rest.
MAX_IMAGE_SIZES = {
    "name_image": 4096,
    "address_image": 8192,
    "photo": 16384,
    "security_code_image": 1024,
    "my_number_image": 1024,
}
IMAGE_KINDS = {
    "name_image": "png",
    "address_image": "png",
    "photo": "jp2",
    "security_code_image": "png",
    "my_number_image": "png",
}


@dataclass(frozen=True)
class ApKeys:
    """The keys and CV certificate of one 券面 AP."""

    card_key: rsa.RSAPrivateKey
    municipality_key: rsa.RSAPrivateKey
    cv_certificate: bytes  # EF 0004, 568 bytes


@dataclass(frozen=True)
class TextApData:
    """What the 券面事項入力補助AP is personalised from besides [holder] and [card]."""

    keys: ApKeys
    # EF 0006's key pair, made at personalisation: the card publishes the public half and
    # decrypts SET SESSION KEY with the private half, which no APDU reads.
    session_key: rsa.RSAPrivateKey

    @property
    def session_public_key(self) -> rsa.RSAPublicKey:
        return self.session_key.public_key()


@dataclass(frozen=True)
class VisualApData:
    """What the 券面事項確認AP is personalised from besides [holder] and [card]."""

    keys: ApKeys
    name_image: bytes  # PNG
    address_image: bytes  # PNG
    photo: bytes  # JP2
    security_code_image: bytes  # PNG
    my_number_image: bytes  # PNG


def read_text_ap(field: Field) -> TextApData:
    """The [text_ap] section."""
    section = field.table(("card_key", "municipality_key", "cv_certificate", "session_key"))
    return TextApData(keys=_keys(section, "text"), session_key=read_rsa_key(section["session_key"]))


def read_visual_ap(field: Field) -> VisualApData:
    """The [visual_ap] section."""
    section = field.table(("card_key", "municipality_key", "cv_certificate", *IMAGE_KINDS))
    images = {
        key: _image(section[key], kind, MAX_IMAGE_SIZES[key]) for key, kind in IMAGE_KINDS.items()
    }
    return VisualApData(
        keys=_keys(section, "visual"),
        name_image=images["name_image"],
        address_image=images["address_image"],
        photo=images["photo"],
        security_code_image=images["security_code_image"],
        my_number_image=images["my_number_image"],
    )


def _keys(section: Table, kind: ApKind) -> ApKeys:
    card_key = read_rsa_key(section["card_key"])
    municipality_key = read_rsa_key(section["municipality_key"])
    if card_key.public_key() == municipality_key.public_key():
        raise section["municipality_key"].fail("a key other than card_key")
    field = section["cv_certificate"]
    cv_certificate = _base64(field)
    try:
        certificate = parse_cvc(cv_certificate)
    except ValueError as exc:
        raise field.fail(f"a CV certificate ({exc})") from None
    root = CVC_ROOTS[kind]
    if certificate.issuer_key_id != root.key_id:
        raise field.fail("a CV certificate issued by the test root of this AP")
    try:
        certificate.verify(root.public_key())
    except InvalidSignature:
        raise field.fail("a CV certificate whose signature verifies") from None
    if certificate.public_key != municipality_key.public_key():
        raise field.fail("a CV certificate of municipality_key")
    return ApKeys(card_key, municipality_key, cv_certificate)


def _base64(field: Field) -> bytes:
    text = field.text(expected="base64")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError as exc:  # binascii.Error, or a character that is not ASCII
        raise field.fail(f"base64 ({exc})") from None


def _image(field: Field, kind: str, limit: int) -> bytes:
    data = _base64(field)
    problem = image_problem(data, kind)
    if problem is None and len(data) > limit:
        problem = f"{len(data)} bytes"
    if problem is not None:
        raise field.fail(f"a {kind.upper()} image of at most {limit} bytes", problem)
    return data
