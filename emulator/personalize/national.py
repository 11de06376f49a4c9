"""Profile sections [text_ap] and [visual_ap]: keys, CV certificates and card-face images.

Each AP has two keys: its card key (on the card: EF 0013 of the text AP, EF 001A of the
visual AP; it signs challenges) and a municipality key (issuer-side, never on the card: the
CV certificate in EF 0004 certifies it and it signs the AP's records when the card is built).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from mynacard.personalize.cvc import CVC_ROOTS, ApKind, parse_cvc
from mynacard.personalize.image_check import image_problem

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


class SectionError(ValueError):
    """A bad field of [text_ap] or [visual_ap]: `where` names it, `problem` says what is wrong."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


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
    session_public_key: rsa.RSAPublicKey  # EF 0006 (SET SESSION KEY is not emulated)


@dataclass(frozen=True)
class VisualApData:
    """What the 券面事項確認AP is personalised from besides [holder] and [card]."""

    keys: ApKeys
    name_image: bytes  # PNG
    address_image: bytes  # PNG
    photo: bytes  # JP2
    security_code_image: bytes  # PNG
    my_number_image: bytes  # PNG


@functools.lru_cache(maxsize=64)
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return key


class _Section:
    """Typed access to one section's fields, raising SectionError that names the field."""

    def __init__(self, name: str, table: Mapping[str, object], known: tuple[str, ...]) -> None:
        self.name = name
        self.table = table
        for key in table:
            if key not in known:
                raise SectionError(f"{name}.{key}", "unknown field")

    def text(self, key: str) -> str:
        value = self.table.get(key)
        if value is None:
            raise SectionError(f"{self.name}.{key}", "missing")
        if not isinstance(value, str):
            raise SectionError(f"{self.name}.{key}", f"must be a string, got {value!r}")
        return value

    def private_key(self, key: str) -> rsa.RSAPrivateKey:
        try:
            private = _private_key(self.text(key))
        except TypeError:
            raise SectionError(f"{self.name}.{key}", "encrypted keys are not supported") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SectionError(f"{self.name}.{key}", f"not a PEM RSA private key ({exc})") from None
        if private.key_size != 2048:
            raise SectionError(f"{self.name}.{key}", "must be an RSA-2048 key")
        return private

    def public_key(self, key: str) -> rsa.RSAPublicKey:
        try:
            public = load_pem_public_key(self.text(key).encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SectionError(f"{self.name}.{key}", f"not a PEM public key ({exc})") from None
        if not isinstance(public, rsa.RSAPublicKey) or public.key_size != 2048:
            raise SectionError(f"{self.name}.{key}", "must be an RSA-2048 public key")
        return public

    def base64(self, key: str) -> bytes:
        text = self.text(key)
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except ValueError as exc:  # binascii.Error, or a character that is not ASCII
            raise SectionError(f"{self.name}.{key}", f"not base64 ({exc})") from None

    def keys(self, kind: ApKind) -> ApKeys:
        card_key = self.private_key("card_key")
        municipality_key = self.private_key("municipality_key")
        if card_key.public_key() == municipality_key.public_key():
            raise SectionError(f"{self.name}.municipality_key", "must differ from the card key")
        cv_certificate = self.base64("cv_certificate")
        where = f"{self.name}.cv_certificate"
        try:
            certificate = parse_cvc(cv_certificate)
        except ValueError as exc:
            raise SectionError(where, f"not a CV certificate ({exc})") from None
        root = CVC_ROOTS[kind]
        if certificate.issuer_key_id != root.key_id:
            raise SectionError(where, "not issued by the test root of this AP")
        try:
            certificate.verify(root.public_key())
        except InvalidSignature:
            raise SectionError(where, "its signature does not verify") from None
        if certificate.public_key != municipality_key.public_key():
            raise SectionError(where, "does not certify municipality_key")
        return ApKeys(card_key, municipality_key, cv_certificate)


def read_text_ap(table: Mapping[str, object]) -> TextApData:
    """The [text_ap] section; SectionError if a field is missing or wrong."""
    section = _Section(
        "text_ap", table, ("card_key", "municipality_key", "cv_certificate", "session_key")
    )
    return TextApData(
        keys=section.keys("text"), session_public_key=section.public_key("session_key")
    )


def read_visual_ap(table: Mapping[str, object]) -> VisualApData:
    """The [visual_ap] section; SectionError if a field is missing or wrong."""
    section = _Section(
        "visual_ap",
        table,
        ("card_key", "municipality_key", "cv_certificate", *IMAGE_KINDS),
    )
    images = {}
    for key, kind in IMAGE_KINDS.items():
        data = section.base64(key)
        problem = image_problem(data, kind)
        if problem is None and len(data) > MAX_IMAGE_SIZES[key]:
            problem = f"{len(data)} bytes, more than {MAX_IMAGE_SIZES[key]}"
        if problem is not None:
            raise SectionError(f"visual_ap.{key}", problem)
        images[key] = data
    return VisualApData(
        keys=section.keys("visual"),
        name_image=images["name_image"],
        address_image=images["address_image"],
        photo=images["photo"],
        security_code_image=images["security_code_image"],
        my_number_image=images["my_number_image"],
    )
