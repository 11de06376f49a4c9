"""A test JPKI hierarchy: CAs and certificates shaped like the real ones (docs/card-spec.md §11)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from mynacard.personalize.eras import era_coded_date
from mynacard.personalize.profile import Holder
from mynacard.personalize.rsakeys import new_rsa_key

CertKind = Literal["auth", "sign"]

TEST_ORGANIZATION = "JPKI-TEST"  # the real hierarchy says O=JPKI
CA_UNITS: dict[CertKind, str] = {
    "auth": "JPKI for user authentication",
    "sign": "JPKI for digital signature",
}
JLIS_UNIT = "Japan Agency for Local Authority Information Systems"
JPKI_SERVICE = "公的個人認証サービス"
ISSUER_ALT_UNITS: dict[CertKind, str] = {
    "auth": "公的個人認証サービス利用者証明用",
    "sign": "公的個人認証サービス署名用",
}
JLIS_NAME = "地方公共団体情報システム機構"

POLICY_OIDS: dict[CertKind, x509.ObjectIdentifier] = {
    "auth": x509.ObjectIdentifier("1.2.392.200149.8.5.1.3.30"),
    "sign": x509.ObjectIdentifier("1.2.392.200149.8.5.1.0.20"),  # the JPKI test-card policy
}
CPS_URI = "http://www.jpki.go.jp/cps.html"
# Placeholder: the real OCSP URL is not in the public record, and .invalid never resolves.
OCSP_URI = "http://ocsp.jpki-test.invalid"

# subjectAltName otherName OIDs of the sign certificate, in the order the card has them.
SAN_NAME = x509.ObjectIdentifier("1.2.392.200149.8.5.5.1")  # 氏名
SAN_BIRTH_DATE = x509.ObjectIdentifier("1.2.392.200149.8.5.5.4")  # 生年月日 EYYYYMMDD
SAN_SEX = x509.ObjectIdentifier("1.2.392.200149.8.5.5.3")  # 性別
SAN_ADDRESS = x509.ObjectIdentifier("1.2.392.200149.8.5.5.5")  # 住所
SAN_NAME_ALT_POSITIONS = x509.ObjectIdentifier("1.2.392.200149.8.5.5.2")  # 氏名代替文字位置
SAN_ADDRESS_ALT_POSITIONS = x509.ObjectIdentifier("1.2.392.200149.8.5.5.6")  # 住所代替文字位置

# Validity of the CA pair that every seeded profile shares.
SHARED_CA_NOT_BEFORE = datetime(2024, 4, 1, 0, 0, 0, tzinfo=UTC)
SHARED_CA_NOT_AFTER = datetime(2036, 3, 31, 14, 59, 59, tzinfo=UTC)
SHARED_CA_SERIALS: dict[CertKind, int] = {"auth": 0x7E5A0001, "sign": 0x7E5A0002}

_UTF8STRING_TAG = 0x0C


@dataclass(frozen=True)
class TestCa:
    """A self-signed test CA for one certificate kind."""

    kind: CertKind
    key: RSAPrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class CardholderCert:
    """What goes into an end-entity certificate besides the holder's data."""

    public_key: RSAPublicKey
    serial: int  # 4 bytes
    common_name: str  # opaque id: 23 characters (auth) or 28 (sign)
    not_before: datetime
    not_after: datetime  # ends 14:59:59Z (23:59:59 JST)
    prefecture_romaji: str  # e.g. "Ibaraki-ken"
    municipality_romaji: str  # e.g. "Tsukuba-shi"


def ca_name(kind: CertKind) -> x509.Name:
    """Subject and issuer DN of the test CA (C PrintableString, the rest UTF8String)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CA_UNITS[kind]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, JLIS_UNIT),
        ]
    )


def make_test_ca(
    kind: CertKind, key: RSAPrivateKey, serial: int, not_before: datetime, not_after: datetime
) -> TestCa:
    """A self-signed CA certificate for `kind`; deterministic for fixed inputs."""
    name = ca_name(kind)
    service_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, JPKI_SERVICE),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .serial_number(serial)
        .issuer_name(name)
        .subject_name(name)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(
            x509.KeyUsage(**_key_usage(key_cert_sign=True, crl_sign=True)), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(service_name)]), critical=False
        )
        .add_extension(_crl_distribution_point(name), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TestCa(kind=kind, key=key, cert=cert)


@functools.cache
def shared_test_ca(kind: CertKind) -> TestCa:
    """The test CA that all seeded profiles share; its key comes from a fixed seed."""
    key = new_rsa_key(f"mynacard/test-ca/{kind}")
    return make_test_ca(
        kind, key, SHARED_CA_SERIALS[kind], SHARED_CA_NOT_BEFORE, SHARED_CA_NOT_AFTER
    )


def make_auth_cert(ca: TestCa, request: CardholderCert) -> x509.Certificate:
    """利用者証明用電子証明書: no personal data, client authentication."""
    builder = _cardholder_builder(ca, request)
    builder = builder.add_extension(
        x509.KeyUsage(**_key_usage(digital_signature=True)), critical=True
    )
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return _finish_cardholder_cert(builder, ca, request)


def make_sign_cert(ca: TestCa, request: CardholderCert, holder: Holder) -> x509.Certificate:
    """署名用電子証明書: carries the holder's 基本4情報 as subjectAltName otherNames."""
    builder = _cardholder_builder(ca, request)
    builder = builder.add_extension(
        x509.KeyUsage(**_key_usage(digital_signature=True, content_commitment=True)),
        critical=True,
    )
    alt_names = [
        x509.OtherName(oid, der_utf8string(text)) for oid, text in holder_alt_names(holder)
    ]
    builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return _finish_cardholder_cert(builder, ca, request)


def holder_alt_names(holder: Holder) -> list[tuple[x509.ObjectIdentifier, str]]:
    """The sign certificate's otherName entries for `holder`, in card order."""
    return [
        (SAN_NAME, holder.name),
        (SAN_BIRTH_DATE, era_coded_date(holder.birth_date)),
        (SAN_SEX, holder.sex),
        (SAN_ADDRESS, holder.address),
        (SAN_NAME_ALT_POSITIONS, "0" * len(holder.name)),
        (SAN_ADDRESS_ALT_POSITIONS, "0" * len(holder.address)),
    ]


def read_holder_alt_names(cert: x509.Certificate) -> list[tuple[x509.ObjectIdentifier, str]]:
    """The otherName entries of a sign certificate's subjectAltName, decoded, in order."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [
        (entry.type_id, parse_der_utf8string(entry.value))
        for entry in san
        if isinstance(entry, x509.OtherName)
    ]


def der_utf8string(text: str) -> bytes:
    """`text` as a DER UTF8String (tag, length, UTF-8 bytes)."""
    value = text.encode("utf-8")
    length = len(value)
    if length < 0x80:
        header = bytes([length])
    else:
        length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x80 | len(length_bytes)]) + length_bytes
    return bytes([_UTF8STRING_TAG]) + header + value


def parse_der_utf8string(data: bytes) -> str:
    """The text of a DER UTF8String; ValueError if `data` is anything else."""
    if len(data) < 2 or data[0] != _UTF8STRING_TAG:
        raise ValueError("not a DER UTF8String")
    length, offset = data[1], 2
    if length & 0x80:
        size = length & 0x7F
        if size == 0 or len(data) < 2 + size:
            raise ValueError("bad DER length")
        length, offset = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    if len(data) != offset + length:
        raise ValueError("DER length does not match the data")
    return data[offset:].decode("utf-8")


def _key_usage(**enabled: bool) -> dict[str, bool]:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return {name: enabled.get(name, False) for name in names}


def _crl_distribution_point(directory_name: x509.Name) -> x509.CRLDistributionPoints:
    point = x509.DistributionPoint(
        full_name=[x509.DirectoryName(directory_name)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


def _cardholder_builder(ca: TestCa, request: CardholderCert) -> x509.CertificateBuilder:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.COMMON_NAME, request.common_name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .serial_number(request.serial)
        .issuer_name(ca.cert.subject)
        .subject_name(subject)
        .not_valid_before(request.not_before)
        .not_valid_after(request.not_after)
        .public_key(request.public_key)
    )


def _finish_cardholder_cert(
    builder: x509.CertificateBuilder, ca: TestCa, request: CardholderCert
) -> x509.Certificate:
    """Add the extensions both kinds share, then sign with the CA (PKCS#1 v1.5, SHA-256)."""
    policy = x509.PolicyInformation(POLICY_OIDS[ca.kind], [CPS_URI])
    issuer_alt_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, JPKI_SERVICE),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ISSUER_ALT_UNITS[ca.kind]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, JLIS_NAME),
        ]
    )
    crl_directory = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CA_UNITS[ca.kind]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CRL Distribution Points"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, request.prefecture_romaji),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{request.municipality_romaji} CRLDP"),
        ]
    )
    ocsp = x509.AccessDescription(
        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(OCSP_URI)
    )
    ca_key_id = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        builder.add_extension(x509.CertificatePolicies([policy]), critical=True)
        .add_extension(
            x509.IssuerAlternativeName([x509.DirectoryName(issuer_alt_name)]), critical=False
        )
        .add_extension(_crl_distribution_point(crl_directory), critical=False)
        .add_extension(x509.AuthorityInformationAccess([ocsp]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
