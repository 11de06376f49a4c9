"""The test JPKI hierarchy and `new_profile`: certificate shapes, keys, reproducibility."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from ber import other_names
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from mynacard.personalize.eras import era_coded_date
from mynacard.personalize.generate import new_profile
from mynacard.personalize.persona import JST
from mynacard.personalize.profile import (
    MAX_CERT_SIZE,
    Profile,
    ProfileError,
    load_profile,
    shipped_profile_names,
)
from mynacard.personalize.testca import (
    SAN_ADDRESS,
    SAN_ADDRESS_ALT_POSITIONS,
    SAN_BIRTH_DATE,
    SAN_NAME,
    SAN_NAME_ALT_POSITIONS,
    SAN_SEX,
    der_utf8string,
    holder_alt_names,
    parse_der_utf8string,
    read_holder_alt_names,
)

JPKI_SERVICE = "公的個人認証サービス"
JLIS = "地方公共団体情報システム機構"


class Certs:
    """The parsed certificates of one profile."""

    def __init__(self, profile: Profile) -> None:
        assert profile.jpki is not None
        self.profile = profile
        self.jpki = profile.jpki
        self.auth = x509.load_der_x509_certificate(self.jpki.auth_cert)
        self.auth_ca = x509.load_der_x509_certificate(self.jpki.auth_ca_cert)
        self.sign_ca = x509.load_der_x509_certificate(self.jpki.sign_ca_cert)
        sign = self.jpki.sign_cert
        self.sign = None if sign is None else x509.load_der_x509_certificate(sign)


@pytest.fixture(scope="module")
def unseeded_profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    path = new_profile(tmp_path_factory.mktemp("new") / "random.toml")
    return load_profile(path)


@pytest.fixture(scope="module", params=[*shipped_profile_names(), "unseeded"])
def certs(request: pytest.FixtureRequest, unseeded_profile: Profile) -> Certs:
    name: str = request.param
    return Certs(unseeded_profile if name == "unseeded" else load_profile(name))


def _names(name: x509.Name) -> list[tuple[str, str]]:
    return [(attribute.oid.dotted_string, str(attribute.value)) for attribute in name]


def _dn(*pairs: tuple[x509.ObjectIdentifier, str]) -> list[tuple[str, str]]:
    return [(oid.dotted_string, value) for oid, value in pairs]


def _ends_at_jst_midnight(moment: datetime) -> bool:
    return moment.time() == time(14, 59, 59)


def test_ca_certificates(certs: Certs) -> None:
    for kind, ca in (("user authentication", certs.auth_ca), ("digital signature", certs.sign_ca)):
        ca.verify_directly_issued_by(ca)
        assert ca.signature_hash_algorithm is not None
        assert ca.signature_hash_algorithm.name == "sha256"
        public_key = ca.public_key()
        assert isinstance(public_key, RSAPublicKey) and public_key.key_size == 2048
        assert _names(ca.subject) == _dn(
            (NameOID.COUNTRY_NAME, "JP"),
            (NameOID.ORGANIZATION_NAME, "JPKI-TEST"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, f"JPKI for {kind}"),
            (
                NameOID.ORGANIZATIONAL_UNIT_NAME,
                "Japan Agency for Local Authority Information Systems",
            ),
        )
        subject_der = ca.subject.public_bytes()
        assert b"\x13\x02JP" in subject_der  # PrintableString
        for attribute in list(ca.subject)[1:]:  # UTF8String
            value = str(attribute.value).encode()
            assert bytes([0x0C, len(value)]) + value in subject_der
        assert _ends_at_jst_midnight(ca.not_valid_after_utc)
        extensions = ca.extensions
        usage = extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
        assert not usage.value.digital_signature
        constraints = extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [_names(name) for name in san.get_values_for_type(x509.DirectoryName)] == [
            _dn((NameOID.COUNTRY_NAME, "JP"), (NameOID.ORGANIZATION_NAME, JPKI_SERVICE))
        ]
        crl = extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert crl[0].full_name == [x509.DirectoryName(ca.subject)]
        key_id = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert key_id == x509.SubjectKeyIdentifier.from_public_key(public_key)


def _check_cardholder_cert(
    cert: x509.Certificate, ca: x509.Certificate, key: RSAPrivateKey, kind: str
) -> None:
    """What auth and sign certificates share."""
    cert.verify_directly_issued_by(ca)
    assert cert.version == x509.Version.v3
    assert 0x00800000 <= cert.serial_number < 0x80000000  # four bytes in DER
    assert len(cert.public_bytes(Encoding.DER)) < MAX_CERT_SIZE
    public_key = cert.public_key()
    assert isinstance(public_key, RSAPublicKey)
    assert public_key.key_size == 2048 and public_key.public_numbers().e == 65537
    assert public_key == key.public_key()
    signature = key.sign(b"challenge", padding.PKCS1v15(), hashes.SHA256())
    public_key.verify(signature, b"challenge", padding.PKCS1v15(), hashes.SHA256())
    assert _ends_at_jst_midnight(cert.not_valid_after_utc)
    assert ca.not_valid_before_utc <= cert.not_valid_before_utc
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    assert [attribute.oid for attribute in cert.subject] == [
        NameOID.COUNTRY_NAME,
        NameOID.COMMON_NAME,
    ]
    extensions = cert.extensions
    policies = extensions.get_extension_for_class(x509.CertificatePolicies)
    assert policies.critical
    assert [policy.policy_qualifiers for policy in policies.value] == [
        ["http://www.jpki.go.jp/cps.html"]
    ]
    unit = "公的個人認証サービス利用者証明用" if kind == "auth" else "公的個人認証サービス署名用"
    issuer_alt = extensions.get_extension_for_class(x509.IssuerAlternativeName).value
    assert [_names(name) for name in issuer_alt.get_values_for_type(x509.DirectoryName)] == [
        _dn(
            (NameOID.COUNTRY_NAME, "JP"),
            (NameOID.ORGANIZATION_NAME, JPKI_SERVICE),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, JLIS),
        )
    ]
    crl = extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    [point] = crl
    assert point.full_name is not None
    [directory] = point.full_name
    assert isinstance(directory, x509.DirectoryName)
    crl_name = _names(directory.value)
    purpose = "user authentication" if kind == "auth" else "digital signature"
    assert crl_name[:4] == _dn(
        (NameOID.COUNTRY_NAME, "JP"),
        (NameOID.ORGANIZATION_NAME, "JPKI-TEST"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, f"JPKI for {purpose}"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "CRL Distribution Points"),
    )
    assert crl_name[4][0] == NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string
    assert crl_name[4][1].endswith(("-to", "-fu", "-ken", "Hokkaido"))
    assert crl_name[5][0] == NameOID.COMMON_NAME.dotted_string
    assert crl_name[5][1].endswith(" CRLDP")
    access = extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in access] == [
        (AuthorityInformationAccessOID.OCSP, "http://ocsp.jpki-test.invalid")
    ]
    authority_key = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert authority_key.key_identifier == ca_key_id.digest


def test_auth_certificate(certs: Certs) -> None:
    cert = certs.auth
    _check_cardholder_cert(cert, certs.auth_ca, certs.jpki.auth_key, "auth")
    [common_name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert len(str(common_name.value)) == 23
    extensions = cert.extensions
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.content_commitment and not usage.value.key_cert_sign
    extended = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not extended.critical and list(extended.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    policies = extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == ["1.2.392.200149.8.5.1.3.30"]
    # No personal data: no subjectAltName, and the holder appears nowhere in the DER.
    with pytest.raises(x509.ExtensionNotFound):
        extensions.get_extension_for_class(x509.SubjectAlternativeName)
    holder = certs.profile.holder
    for personal in (holder.name, holder.address):
        assert personal.encode() not in certs.jpki.auth_cert


def test_sign_certificate(certs: Certs) -> None:
    if certs.sign is None:
        assert not certs.profile.has_sign_cert and certs.jpki.sign_key is None
        return
    cert = certs.sign
    assert certs.jpki.sign_key is not None
    _check_cardholder_cert(cert, certs.sign_ca, certs.jpki.sign_key, "sign")
    [common_name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuance_id = str(common_name.value)
    assert len(issuance_id) == 28 and issuance_id[:27].isdigit()
    assert issuance_id.startswith(cert.not_valid_before_utc.astimezone(JST).strftime("%Y%m%d"))
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.content_commitment
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == ["1.2.392.200149.8.5.1.0.20"]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_sign_certificate_carries_the_holder(certs: Certs) -> None:
    if certs.sign is None:
        return
    holder = certs.profile.holder
    san = certs.sign.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert all(isinstance(entry, x509.OtherName) for entry in san)
    names = other_names(certs.sign)  # decoded by asn1crypto, not by testca
    assert read_holder_alt_names(certs.sign) == names
    assert names == [
        (SAN_NAME, holder.name),
        (SAN_BIRTH_DATE, era_coded_date(holder.birth_date)),
        (SAN_SEX, holder.sex),
        (SAN_ADDRESS, holder.address),
        (SAN_NAME_ALT_POSITIONS, "0" * len(holder.name)),
        (SAN_ADDRESS_ALT_POSITIONS, "0" * len(holder.address)),
    ]
    assert [oid.dotted_string[-1] for oid, _ in holder_alt_names(holder)] == list("143526")
    assert "\u3000" in holder.name


def test_shared_seeded_ca() -> None:
    """Seeded profiles chain to one test CA pair."""
    default, blocked = Certs(load_profile("default")), Certs(load_profile("sign-blocked"))
    assert default.jpki.auth_ca_cert == blocked.jpki.auth_ca_cert
    assert default.jpki.sign_ca_cert == blocked.jpki.sign_ca_cert
    assert default.auth_ca.subject != default.sign_ca.subject


def test_unseeded_profile_is_fresh(unseeded_profile: Profile) -> None:
    default = load_profile("default")
    assert unseeded_profile.jpki is not None and default.jpki is not None
    assert unseeded_profile.jpki.auth_ca_cert != default.jpki.auth_ca_cert
    assert unseeded_profile.has_sign_cert
    assert "without --seed" in unseeded_profile.path.read_text(encoding="utf-8")
    issued = x509.load_der_x509_certificate(unseeded_profile.jpki.auth_cert).not_valid_before_utc
    assert abs((datetime.now(UTC) - issued).total_seconds()) < 600


def test_new_profile_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "taken.toml"
    path.write_text("keep me")
    with pytest.raises(ProfileError, match="already exists"):
        new_profile(path, seed=5, sign_cert=False)
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"pins": {"sign": "abc"}}, "pins.sign"),
        ({"pins": {"code_a": "123456789012"}}, "pins.code_a"),
        ({"counters": {"auth": 4}}, "counters.auth"),
        ({"holder_age": 12}, "holder_age"),
        ({"holder_age": 121, "sign_cert": False}, "holder_age"),
        ({"holder_age": 12, "sign_cert": False, "atr": "3B01"}, "profile.atr"),
    ],
)
def test_new_profile_rejects_bad_arguments(
    tmp_path: Path, arguments: dict[str, object], fragment: str
) -> None:
    path = tmp_path / "bad.toml"
    with pytest.raises(ProfileError, match=fragment):
        new_profile(path, None, **arguments)  # type: ignore[arg-type]
    assert not path.exists()


@pytest.mark.parametrize("file_name", ["noext", "x.txt", "a b.toml", ".toml", "名前.toml"])
def test_new_profile_needs_a_profile_file_name(tmp_path: Path, file_name: str) -> None:
    with pytest.raises(ProfileError, match="name the file"):
        new_profile(tmp_path / file_name, seed=5)


@pytest.mark.parametrize("text", ["", "a", "氏名　太郎", "x" * 127, "住" * 200])
def test_der_utf8string_round_trip(text: str) -> None:
    encoded = der_utf8string(text)
    assert encoded[0] == 0x0C
    assert parse_der_utf8string(encoded) == text


@pytest.mark.parametrize("data", [b"", b"\x13\x01a", b"\x0c\x02a", b"\x0c\x81", b"\x0c\x01\xff"])
def test_parse_der_utf8string_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_der_utf8string(data)
