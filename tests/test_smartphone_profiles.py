"""The smartphone forms of JPKI (docs/profiles.md, "Smartphone forms"): what a client sees of
スマホ用電子証明書 on an Android phone (GP-SE) and an iPhone, in process and through pcscd, and
what OpenSC makes of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cardtest import SELECT_EF, PcscCard, TestedCard, read_ef, tx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JPKI = "00A4040C0AD392F000260100000001"
OTHER_AIDS = {
    "text": "D3921000310001010408",
    "visual": "D3921000310001010402",
    "juki": "D3921000310001010401",
    "common": "D3921000310001010100",
    "prefix of the national APs": "D392100031",
    "GlobalPlatform ISD": "A0000001510000",
}
PHONE_ATR = bytes.fromhex("3B80800101")
PKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
PHONES = [
    pytest.param("smartphone-android", b"JPKIAPGPSETOKEN", id="android"),
    pytest.param("smartphone-ios", b"JPKIAPIOSTOKEN", id="ios"),
]


def verify(pin: str) -> str:
    return f"00200080{len(pin):02X}{pin.encode().hex()}"


def certificate(ef: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(ef[: int.from_bytes(ef[2:4], "big") + 4])


@pytest.mark.parametrize(("card_profile", "label"), PHONES, indirect=["card_profile"])
def test_only_the_jpki_application_answers(card: TestedCard, label: bytes) -> None:
    assert card.atr == PHONE_ATR
    assert card.profile.form == card.profile.name  # the shipped phone profiles are named so
    for aid in OTHER_AIDS.values():
        assert tx(card, f"00A4040C{len(aid) // 2:02X}{aid}") == "6A82", aid
    assert tx(card, "00CA5F5100") == "6A88"  # no MF-level objects on a phone
    assert (
        tx(card, JPKI, SELECT_EF + "0006", "00B0000020")
        == label.ljust(32, b" ").hex().upper() + "9000"
    )
    assert tx(card, SELECT_EF + "0008", "00B0000000") == "8F8F009000"


@pytest.mark.parametrize(("card_profile", "label"), PHONES, indirect=["card_profile"])
def test_auth_certificate_needs_the_auth_pin(card: TestedCard, label: bytes) -> None:
    jpki = card.profile.jpki
    assert jpki is not None
    assert tx(card, JPKI, SELECT_EF + "000A", "00B0000004") == "6982"
    assert (
        tx(card, SELECT_EF + "000B", "00B0000002")[-4:] == "9000"
    )  # the CA certificates stay free
    assert tx(card, SELECT_EF + "0018", verify(card.profile.pins["auth"])) == "9000"
    auth = certificate(read_ef(card.transmit, 0x000A))
    assert auth == x509.load_der_x509_certificate(jpki.auth_cert)
    digest = hashes.Hash(hashes.SHA256())
    digest.update("スマホで署名　１２３".encode())
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + digest.finalize()
    signature = bytes.fromhex(
        tx(card, SELECT_EF + "0017", f"802A0080{len(digest_info):02X}{digest_info.hex()}00")[:-4]
    )
    public = auth.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, "スマホで署名　１２３".encode(), padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(
    ("card_profile", "expected"),
    [("smartphone-ios", "9000"), ("smartphone-android", "6700")],
    indirect=["card_profile"],
)
def test_last_command_indicator(card: TestedCard, expected: str) -> None:
    """80 FC 00 00 ends an iPhone JPKI session (SOL); Android answers as the card."""
    assert tx(card, JPKI, "80FC0000") == expected


@pytest.mark.backends("inproc")
@pytest.mark.card_profile("default")
def test_the_plastic_card_keeps_its_free_auth_certificate_and_mf_objects(card: TestedCard) -> None:
    profile = card.profile
    assert tx(card, "00CA00F000") == profile.municipality_code.encode().hex().upper() + "9000"
    assert (
        tx(card, "00CA00F200")
        == profile.card_expiry.strftime("%Y%m%d").encode().hex().upper() + "9000"
    )
    assert tx(card, "00CA004500") == profile.card_serial.encode().hex().upper() + "9000"
    assert tx(card, "00CA5F5100") == profile.atr[1:].hex().upper() + "9000"
    assert tx(card, "00CA004200") == "6A88"
    assert tx(card, JPKI, "00CA5F5100") == "6A88"  # an application is selected
    assert tx(card, "00A4040C07A0000001510000", "00CA00F000")[-4:] == "9000"  # the ISD: MF again
    assert tx(card, JPKI, SELECT_EF + "000A", "00B0000002") == "30829000"
    assert tx(card, "80FC0000") == "6700"  # the iPhone's last-command indicator (SOL)


def test_profile_show_names_the_form() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "mynacard", "profile", "show", "smartphone-ios"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "form         smartphone-ios (the JPKI-AP alone)" in shown
    assert "ATR          3B 80 80 01 01" in shown


# -- through pcscd: OpenSC ---------------------------------------------------------------------


def opensc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.backends("pcsc")
@pytest.mark.parametrize(("card_profile", "label"), PHONES, indirect=["card_profile"])
def test_opensc_finds_the_phone_and_signs_with_both_keys(
    card: PcscCard, label: bytes, tmp_path: Path
) -> None:
    """OpenSC's JPKI driver finds the phone by SELECTing the AID (its ATR is not in the
    table); the private certificate reads after the password, the auth key signs after its
    PIN. What the phone refuses is in the next test."""
    reader = str(card.reader)
    assert opensc("opensc-tool", "--reader", reader, "--name").stdout.strip() == "jpki"
    pins = card.profile.pins
    read = opensc(
        "pkcs15-tool", "--reader", reader, "--read-certificate", "02",
        "--verify-pin", "--auth-id", "02", "--pin", pins["sign"],
    )  # fmt: skip
    assert "-----BEGIN CERTIFICATE-----" in read.stdout, read.stderr
    data = tmp_path / "data.txt"
    data.write_text("スマホ用電子証明書で署名\n", encoding="utf-8")
    for key_id, token, pin in (
        ("01", "User Authentication PIN", "auth"),
        ("02", "Digital Signature PIN", "sign"),
    ):
        signed = opensc(
            "pkcs11-tool", "--module", PKCS11_MODULE, "--token-label", f"JPKI ({token})",
            "--login", "--pin", pins[pin], "--sign", "--id", key_id, "--mechanism",
            "SHA256-RSA-PKCS", "--input-file", str(data), "--output-file", str(tmp_path / key_id),
        )  # fmt: skip
        assert signed.returncode == 0, signed.stdout + signed.stderr
        assert (tmp_path / key_id).stat().st_size == 256


@pytest.mark.backends("pcsc")
@pytest.mark.parametrize(("card_profile", "label"), PHONES, indirect=["card_profile"])
def test_opensc_cannot_read_the_auth_certificate_of_a_phone(card: PcscCard, label: bytes) -> None:
    """OpenSC declares the auth certificate public, so it reads it without a PIN: the phone
    answers 6982 to the read where the plastic card gives it (docs/profiles.md, "Smartphone
    forms"); OpenSC 0.23's JPKI driver then reports "EF offset too large"."""
    read = opensc("pkcs15-tool", "--reader", str(card.reader), "--read-certificate", "01")
    assert read.returncode != 0
    assert "Certificate read failed" in read.stderr
