"""Card-verifiable certificates (7F21) of the 券面 APs, their key identifiers and test roots.

Layout (docs/card-spec.md §4, SOL data.rs), 568 bytes:

    7F21 82 0233
      5F4E 82 0129   16-byte issuer key id, 16-byte subject key id, 90 03 010001, 91 82 0100 n
      5F37 82 0100   RSA-2048 signature

The signature is PKCS#1 v1.5 with SHA-256 over the 297-byte 5F4E *value* (the body without
its own header), as SOL verifies real ones. The issuer is a root whose key is not on the card:
verifiers hold it, so the test roots' public keys are published here (`CVC_ROOTS`).

What the certificate certifies (the "municipality key" below) follows SOL's reading of real
cards: the subject is a key of the issuing municipality, *not* the AP's own card key. That
key signs the AP's records (text EF 0003 and 0007, visual EF 0001, 0002, 0005); the card key
travels inside those signed records and signs challenges.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mynacard.personalize.rsakeys import PUBLIC_EXPONENT, new_rsa_key
from mynacard.personalize.tlv import (
    RSA_2048_BYTES,
    parse_object,
    parse_objects,
    parse_rsa_public_key,
    rsa_public_key_objects,
    tlv,
)

ApKind = Literal["text", "visual"]

TAG_CVC = 0x7F21
TAG_BODY = 0x5F4E
TAG_SIGNATURE = 0x5F37
KEY_ID_SIZE = 16
BODY_SIZE = 2 * KEY_ID_SIZE + 265  # two key ids and a 90/91 RSA-2048 key

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
# DER AlgorithmIdentifier of SHA-256 with NULL parameters (RFC 8017 §9.2).
_SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")


def key_id(number: str, group: str) -> bytes:
    """A 16-byte key identifier: 7 ASCII digits, 08 05, 3 ASCII digits, four 00 (SOL data.rs).

    e.g. key_id("6000033", "001") names the text AP's test root, shown as 6000033/001.
    """
    if len(number) != 7 or len(group) != 3 or not (number + group).isdigit():
        raise ValueError(f"a key id is 7 and 3 digits, got {number!r}/{group!r}")
    return number.encode() + b"\x08\x05" + group.encode() + bytes(4)


def municipality_key_id(municipality_code: str, kind: ApKind) -> bytes:
    """The subject key id of a municipality's key for one AP.

    Measured on a test card: visual AP subject 1322121/000 for municipality 13221, i.e. the
    5-digit code + "21". The text AP's form is not public; "31" follows the issuer ids
    (visual 6000023, text 6000033). An assumption (docs/card.md, "The national applications").
    """
    return key_id(municipality_code + ("31" if kind == "text" else "21"), "000")


@dataclass(frozen=True)
class CvcRoot:
    """A test root that issues the CV certificates of one AP (J-LIS test hierarchy ids)."""

    kind: ApKind
    key_id: bytes
    modulus: int

    def public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(PUBLIC_EXPONENT, self.modulus).public_key()


# The public halves of `cvc_root_private_key(kind)`: what a verifier holds. Ids as on JPKI
# test cards (docs/card-spec.md §4, §5); tests check these moduli against the fixed-seed keys.
CVC_ROOTS: dict[ApKind, CvcRoot] = {
    "text": CvcRoot(
        "text",
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
    "visual": CvcRoot(
        "visual",
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


@functools.cache
def cvc_root_private_key(kind: ApKind) -> rsa.RSAPrivateKey:
    """The private key of a test root, made from a fixed seed (for `profile new` and tests)."""
    return new_rsa_key(f"mynacard/cvc-root/{kind}")


@dataclass(frozen=True)
class CvCertificate:
    """A parsed card-verifiable certificate."""

    issuer_key_id: bytes
    subject_key_id: bytes
    public_key: rsa.RSAPublicKey
    body: bytes  # the 5F4E value: exactly what the signature covers
    signature: bytes

    def verify(self, issuer: rsa.RSAPublicKey) -> None:
        """Raise cryptography's InvalidSignature unless `issuer` signed this certificate."""
        issuer.verify(self.signature, self.body, _PKCS1, _SHA256)


def issue_cvc(
    issuer_key_id: bytes,
    issuer_key: rsa.RSAPrivateKey,
    subject_key_id: bytes,
    subject: rsa.RSAPublicKey,
) -> bytes:
    """A 568-byte CV certificate of `subject`, signed by `issuer_key`."""
    body = issuer_key_id + subject_key_id + rsa_public_key_objects(subject)
    if len(issuer_key_id) != KEY_ID_SIZE or len(body) != BODY_SIZE:
        raise ValueError("a CV certificate certifies an RSA-2048 key under 16-byte key ids")
    signature = issuer_key.sign(body, _PKCS1, _SHA256)
    return tlv(TAG_CVC, tlv(TAG_BODY, body) + tlv(TAG_SIGNATURE, signature))


def parse_cvc(data: bytes) -> CvCertificate:
    """Parse a 7F21 certificate; ValueError if it is not shaped like the card's."""
    outer = parse_object(data)
    if outer.tag != TAG_CVC or outer.size != len(data):
        raise ValueError("not a single 7F21 object")
    objects = {obj.tag: obj.value for obj in parse_objects(outer.value)}
    body = objects.get(TAG_BODY)
    signature = objects.get(TAG_SIGNATURE)
    if body is None or signature is None:
        raise ValueError("a CV certificate needs 5F4E (body) and 5F37 (signature)")
    if len(body) != BODY_SIZE or len(signature) != RSA_2048_BYTES:
        raise ValueError(f"body must be {BODY_SIZE} bytes and signature {RSA_2048_BYTES}")
    return CvCertificate(
        issuer_key_id=body[:KEY_ID_SIZE],
        subject_key_id=body[KEY_ID_SIZE : 2 * KEY_ID_SIZE],
        public_key=parse_rsa_public_key(body[2 * KEY_ID_SIZE :]),
        body=body,
        signature=signature,
    )


@functools.lru_cache(maxsize=64)
def sign_sha256(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """PKCS#1 v1.5 signature of SHA-256(message): how the 券面 APs' records are signed (the
    same bytes every time: each card opened from a profile signs them once per process)."""
    return key.sign(message, _PKCS1, _SHA256)


def sha256_digest_info(digest: bytes) -> bytes:
    """A SHA-256 DigestInfo around `digest`, whatever its length (96 bytes for the card face)."""
    return tlv(0x30, _SHA256_ALGORITHM + tlv(0x04, digest))


def sign_digest_info(key: rsa.RSAPrivateKey, digest_info: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 signature of `digest_info` exactly as given (no hashing)."""
    numbers = key.private_numbers()
    crt = (numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp)
    return _sign_block(numbers.public_numbers.n, crt, digest_info)


@functools.lru_cache(maxsize=64)
def _sign_block(n: int, crt: tuple[int, int, int, int, int], digest_info: bytes) -> bytes:
    """The private operation on the padded block, with the CRT; deterministic, so kept (a
    card opened again from the same profile signs its card face once)."""
    size = (n.bit_length() + 7) // 8
    if len(digest_info) > size - 11:
        raise ValueError("too long for PKCS#1 v1.5 padding")
    block = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info)) + b"\x00" + digest_info
    p, q, dp, dq, qinv = crt
    m = int.from_bytes(block, "big")
    m1, m2 = pow(m, dp, p), pow(m, dq, q)
    return (m2 + q * ((qinv * (m1 - m2)) % p)).to_bytes(size, "big")


def opaque_bytes(label: str, key: rsa.RSAPublicKey, size: int) -> bytes:
    """`size` stable bytes standing in for a field whose meaning is not public."""
    modulus = key.public_numbers().n.to_bytes(RSA_2048_BYTES, "big")
    return hashlib.shake_256(label.encode() + modulus).digest(size)
