"""The JPKI-AP and the ISO 7816-4 core: each behaviour on the card in process and through pcscd
(the `card` fixture), then what only one backend has: OpenSC over pcscd, the state directory in
process."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cardtest import SELECT_EF, CardProfile, PcscCard, TestedCard, read_ef, tx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mynacard import StateError, StateLockedError, open_card
from mynacard.files import KEPT_SIGNATURES
from mynacard.personalize.profile import KNOWN_ATRS, Profile, load_profile

JPKI = "00A4040C0AD392F000260100000001"
SHA256_DI_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
PKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
DEFAULT_ATR = "3BE000FF8131FE4514"


def verify(pin: str) -> str:
    """VERIFY of the current EF (P2 80) as hex."""
    data = pin.encode()
    return f"00200080{len(data):02X}{data.hex()}"


def public_key(cert_der: bytes) -> rsa.RSAPublicKey:
    key = x509.load_der_x509_certificate(cert_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def der_certificate(ef: bytes) -> x509.Certificate:
    """The certificate at the start of an EF, cut at the length in its header (30 82 hh ll),
    as OpenSC reads it."""
    length = int.from_bytes(ef[2:4], "big") + 4
    return x509.load_der_x509_certificate(ef[:length])


def quirks(**switches: str) -> CardProfile:
    """The default profile with [quirks] switches changed (values as TOML text)."""
    defaults = {
        "blocked_sw": "blocked_sw = 0x6984",
        "reselect_clears_state": "reselect_clears_state = false",
        "verified_query_sw": "# verified_query_sw = 0x9000",
        "t0_chaining": "t0_chaining = false",
    }
    return CardProfile.of(
        edits={defaults[name]: f"{name} = {value}" for name, value in switches.items()}
    )


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def tries_left(pins: str) -> list[str]:
    """The "Tries left" of `pkcs15-tool --list-pins`, in order."""
    return [line.split(":")[1].strip() for line in pins.splitlines() if "Tries left" in line]


def with_atr(name: str) -> CardProfile:
    """The default profile with the ATR of a name from docs/card-spec.md §1."""
    return CardProfile.of(edits={f'atr = "{DEFAULT_ATR}"': f'atr = "{name}"'})


# -- ISO core --------------------------------------------------------------------------------


def test_power_on_and_reset_return_the_profile_atr(card: TestedCard) -> None:
    assert card.atr == card.profile.atr
    assert card.power_cycle() == card.profile.atr
    assert card.reset() == card.profile.atr


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("00A4040C08A000000308000010", "6A82"),  # PIV probe
        ("00A4040C06D27600012401", "6A82"),  # OpenPGP probe
        ("00A4040408A000000308000010", "6A82"),  # unknown, whatever P2 says
        ("00A4040008A000000308000010", "6A82"),
        ("00DD0000", "6D00"),
        ("00CADF3005", "6A88"),
        ("00CB3FFF035C017E08", "6D00"),
        ("B0A4040C0AD392F000260100000001", "6E00"),
        ("FFCA000000", "6E00"),
        ("01A4040C0AD392F000260100000001", "6881"),
        ("0CA4040C0AD392F000260100000001", "6882"),
        ("0CB0000004", "69FC"),
        ("10A4040C0AD392F000260100000001", "6884"),
        ("002A00800100", "6E00"),  # COMPUTE SIGNATURE needs CLA 80
        ("80A4040C0AD392F000260100000001", "6E00"),  # SELECT needs CLA 00
        # vpcd takes a 1-byte message for a control code: in process only
        pytest.param("00", "6700", marks=pytest.mark.backends("inproc")),
        ("00A404", "6700"),
        ("00A4040C0BD392F000260100000001", "6700"),  # Lc says 11, 10 follow
        ("00A4040C00", "6A82"),
        ("00B0000000000000", "6700"),  # extended marker with a short body
        ("00A4000C023F00", "6A82"),
        ("00A4000C00", "6A86"),
        ("00A40000", "6A86"),
        ("00A4080C023F00", "6A86"),
        ("00A4020C020001", "6A82"),  # no application selected
        ("00B0000004", "6986"),
        ("00200080", "6986"),
        ("00840000", "6700"),
        ("00840000000008", "6985"),  # extended GET CHALLENGE
        ("00C0000010", "6985"),
    ],
)
def test_status_words_for_foreign_and_malformed_commands(
    card: TestedCard, apdu: str, sw: str
) -> None:
    assert tx(card, apdu) == sw
    assert tx(card, JPKI, SELECT_EF + "0006", "00B000000F") == "4A504B494150494343544F4B454E329000"


def test_select_by_prefix_and_fci(card: TestedCard) -> None:
    assert tx(card, "00A4040C09D392F0002601000000") == "9000"
    assert tx(card, SELECT_EF + "0006") == "9000"
    full_name = "6F0C840AD392F000260100000001" + "9000"
    assert tx(card, "00A4040006D392F0002601") == full_name
    assert tx(card, "00A4040C0AD392F000260100000002") == "6A82"
    assert tx(card, "00A4041C0AD392F000260100000001") == "6A86"
    assert tx(card, "00A404040AD392F000260100000001") == "6A86"  # a name on the card, odd P2
    assert tx(card, "00A404040AD392F000260100000002") == "6A82"


def test_select_unknown_ef_keeps_selection(card: TestedCard) -> None:
    assert tx(card, JPKI, SELECT_EF + "0006", SELECT_EF + "0099") == "6A82"
    assert tx(card, "00B000000F") == "4A504B494150494343544F4B454E329000"


def test_mf_select_is_refused_after_reset_and_a_no_op_with_an_app(card: TestedCard) -> None:
    assert tx(card, "00A40000") == "6A86"
    assert tx(card, JPKI, SELECT_EF + "0006", "00A40000") == "9000"
    assert tx(card, "00B0000003") == "4A504B9000"


def test_get_challenge_is_random(card: TestedCard) -> None:
    a, b = tx(card, "0084000008"), tx(card, "0084000008")
    assert len(a) == len(b) == 20 and a.endswith("9000") and a != b
    assert len(tx(card, "0084000000")) == 2 * 258


# -- JPKI objects ------------------------------------------------------------------------------


def test_token_info(card: TestedCard) -> None:
    tx(card, JPKI)
    token = read_ef(card.transmit, 0x0006)
    assert len(token) == 160
    assert token[:32] == b"JPKIAPICCTOKEN2" + b" " * 17


def test_certificate_availability_and_free_certificates(card: TestedCard) -> None:
    jpki = card.profile.jpki
    assert jpki is not None
    tx(card, JPKI)
    assert tx(card, SELECT_EF + "0008", "00B0000000") == "8F8F009000"
    auth = read_ef(card.transmit, 0x000A)
    assert len(auth) == 3808
    assert auth.startswith(jpki.auth_cert)
    assert set(auth[len(jpki.auth_cert) :]) == {0xFF}
    assert read_ef(card.transmit, 0x000B).startswith(jpki.auth_ca_cert)
    assert read_ef(card.transmit, 0x0002).startswith(jpki.sign_ca_cert)


def test_sign_certificate_needs_the_sign_password(card: TestedCard) -> None:
    profile = card.profile
    assert profile.jpki is not None and profile.jpki.sign_cert is not None
    assert tx(card, JPKI, SELECT_EF + "0001", "00B0000004") == "6982"
    assert tx(card, SELECT_EF + "0018", verify(profile.pins["auth"])) == "9000"
    assert tx(card, SELECT_EF + "0001", "00B0000004") == "6982"
    assert tx(card, SELECT_EF + "001B", verify(profile.pins["sign"])) == "9000"
    assert read_ef(card.transmit, 0x0001).startswith(profile.jpki.sign_cert)


def test_reads_certificates_and_verifies_a_card_signature(card: TestedCard) -> None:
    """A middleware's path: the certificates cut at their DER length, the sign PIN's retry
    query, then a SHA-256 DigestInfo signed by each key and checked against its certificate."""
    profile = card.profile
    assert profile.jpki is not None
    assert card.atr == profile.atr
    assert tx(card, JPKI) == "9000"
    auth = der_certificate(read_ef(card.transmit, 0x000A))
    assert tx(card, SELECT_EF + "0001") == "9000"
    assert tx(card, "00B0000004") == "6982"
    assert tx(card, SELECT_EF + "001B") == "9000"
    assert tx(card, "00200080") == "63C5"
    assert tx(card, verify(profile.pins["sign"])) == "9000"
    sign = der_certificate(read_ef(card.transmit, 0x0001))
    assert sign.public_bytes(serialization.Encoding.DER) == profile.jpki.sign_cert
    assert auth.public_bytes(serialization.Encoding.DER) == profile.jpki.auth_cert

    message = "電子署名のテスト　１２３".encode()
    digest = hashlib.sha256(message).digest()
    for pin_ef, pin, key_ef, cert in (
        ("0018", profile.pins["auth"], "0017", auth),
        ("001B", profile.pins["sign"], "001A", sign),
    ):
        assert tx(card, SELECT_EF + pin_ef) == "9000"
        assert tx(card, verify(pin)) == "9000"
        assert tx(card, SELECT_EF + key_ef) == "9000"
        data = SHA256_DI_PREFIX + digest
        response = card.transmit(b"\x80\x2a\x00\x80" + bytes((len(data),)) + data + b"\x00")
        assert response[-2:] == b"\x90\x00"
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(response[:-2], digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def test_read_binary_bounds_and_forms(card: TestedCard) -> None:
    tx(card, JPKI, SELECT_EF + "000A")
    assert tx(card, "00B00EDF05") == "FF9000"  # Le past the end: the rest
    assert tx(card, "00B00EE001") == "6B00"
    whole = card.transmit(bytes.fromhex("00B00000000000"))  # extended Le 65536
    assert whole[-2:] == b"\x90\x00" and len(whole) == 3808 + 2
    assert tx(card, "00B00000000010") == whole[:16].hex().upper() + "9000"  # extended Le 16
    by_sfi = tx(card, "00A4040C0AD392F000260100000001", "00B0860004")  # SFI 6 = token info
    assert by_sfi == "4A504B499000"
    assert tx(card, "00B0000004") == "4A504B499000"  # SFI read made 0006 current
    assert tx(card, "00B09F0004") == "6A82"
    assert tx(card, "00B0A60004") == "6A86"


def test_keys_and_pins_are_not_readable(card: TestedCard) -> None:
    for fid in ("0017", "0018", "001A", "001B"):
        assert tx(card, JPKI, SELECT_EF + fid, "00B0000000") == "6981"
    assert tx(card, "00B0970000") == "6981"
    assert tx(card, "00B2010400") == "6981"


# -- PINs ---------------------------------------------------------------------------------------


def test_verify_by_sfi_and_bad_references(card: TestedCard) -> None:
    tx(card, JPKI)
    assert tx(card, "0020009B") == "63C5"
    assert tx(card, "00200098" + verify(card.profile.pins["auth"])[8:]) == "9000"
    assert tx(card, "00200086") == "6A88"  # SFI 6 is not a PIN
    assert tx(card, "00200001") == "6A86"
    assert tx(card, "00200180") == "6A86"
    assert tx(card, SELECT_EF + "0006", "00200080") == "6986"


@pytest.mark.parametrize(
    "leave",
    [
        lambda c: c.reset(),
        lambda c: c.power_cycle(),
        lambda c: c.transmit(bytes.fromhex("00A4040C07A0000001510000")),  # the ISD
        lambda c: c.transmit(bytes.fromhex("00A4040C0AD3921000310001010408")),  # the text AP
    ],
    ids=["reset", "power-off", "select-isd", "select-other-app"],
)
def test_verified_state_ends(card: TestedCard, leave: object) -> None:
    assert callable(leave)
    assert tx(card, JPKI, SELECT_EF + "001B", verify(card.profile.pins["sign"])) == "9000"
    assert tx(card, SELECT_EF + "0001", "00B0000002") == "30829000"
    leave(card)
    assert tx(card, JPKI, SELECT_EF + "0001", "00B0000002") == "6982"


# -- signing -------------------------------------------------------------------------------------


def signed(card: TestedCard, p1: int, p2: int, data: bytes) -> bytes:
    r = card.transmit(bytes((0x80, 0x2A, p1, p2, len(data))) + data + b"\x00")
    assert r[-2:] == b"\x90\x00", r.hex()
    assert len(r) == 258
    return r[:-2]


def test_signing_schemes_verify_with_the_certificates(card: TestedCard) -> None:
    profile = card.profile
    assert profile.jpki is not None and profile.jpki.sign_cert is not None
    message = "署名対象のデータ".encode()
    digest = hashlib.sha256(message).digest()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    pkcs1 = padding.PKCS1v15()
    sha256 = hashes.SHA256()
    for cert, pin_ef, pin, key_ef in (
        (profile.jpki.auth_cert, "0018", profile.pins["auth"], "0017"),
        (profile.jpki.sign_cert, "001B", profile.pins["sign"], "001A"),
    ):
        pub = public_key(cert)
        assert tx(card, JPKI, SELECT_EF + pin_ef, verify(pin), SELECT_EF + key_ef) == "9000"
        pub.verify(signed(card, 0x00, 0x80, SHA256_DI_PREFIX + digest), message, pkcs1, sha256)
        pub.verify(signed(card, 0x02, 0x80, digest), message, pkcs1, sha256)
        pub.verify(signed(card, 0x03, 0x80, message), message, pkcs1, sha256)
        pub.verify(signed(card, 0x04, 0x80, digest), message, pss, sha256)
        pub.verify(signed(card, 0x05, 0x80, message), message, pss, sha256)
        bare = pub.recover_data_from_signature(signed(card, 0x01, 0x80, message), pkcs1, None)
        assert bare == digest
        for name, algorithm in (
            ("sha1", hashes.SHA1()),
            ("sha384", hashes.SHA384()),
            ("sha512", hashes.SHA512()),
        ):
            d = hashlib.new(name, message).digest()
            info = {
                "sha1": "3021300906052b0e03021a05000414",
                "sha384": "3041300d060960864801650304020205000430",
                "sha512": "3051300d060960864801650304020305000440",
            }[name]
            sig = signed(card, 0x00, 0x80, bytes.fromhex(info) + d)
            pub.verify(sig, d, pkcs1, Prehashed(algorithm))


def test_signing_the_same_input_again(card: TestedCard) -> None:
    """The card keeps the PKCS#1 v1.5 signatures it made (same input, same bytes); the same
    data under another P1 is another signature, PSS is new each time, and more inputs than it
    keeps still sign right."""
    profile = card.profile
    assert profile.jpki is not None
    pub = public_key(profile.jpki.auth_cert)
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    tx(card, JPKI, SELECT_EF + "0018", verify(profile.pins["auth"]), SELECT_EF + "0017")
    message = "氏名　山田太郎".encode()
    first = signed(card, 0x03, 0x80, message)
    assert signed(card, 0x03, 0x80, message) == first
    bare = signed(card, 0x01, 0x80, message)
    assert pub.recover_data_from_signature(bare, pkcs1, None) == hashlib.sha256(message).digest()
    assert signed(card, 0x05, 0x80, message) != signed(card, 0x05, 0x80, message)
    for number in range(KEPT_SIGNATURES + 2):
        data = f"{number}".encode()
        pub.verify(signed(card, 0x03, 0x80, data), data, pkcs1, sha256)
    pub.verify(signed(card, 0x03, 0x80, message), message, pkcs1, sha256)
    pub.verify(signed(card, 0x05, 0x80, message), message, pss, sha256)


def test_raw_padding_signs_input_exactly_as_given(card: TestedCard) -> None:
    assert card.profile.jpki is not None
    pub = public_key(card.profile.jpki.auth_cert)
    tx(card, JPKI, SELECT_EF + "0018", verify(card.profile.pins["auth"]), SELECT_EF + "0017")
    no_null = bytes.fromhex("302f300b06096086480165030402010420") + bytes(range(32))
    for data in (no_null, b"\x01", bytes(245), SHA256_DI_PREFIX + bytes(32)):
        sig = signed(card, 0x00, 0x80, data)
        assert pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == data
    assert tx(card, "802A0080F6" + "00" * 246 + "00") == "6700"


def test_signing_refusals(card: TestedCard) -> None:
    digest_info = (SHA256_DI_PREFIX + bytes(32)).hex()
    sign = "802A008033" + digest_info + "00"
    assert tx(card, JPKI, SELECT_EF + "0017", sign) == "6982"
    assert tx(card, SELECT_EF + "0018", verify(card.profile.pins["auth"])) == "9000"
    assert tx(card, sign) == "6986"  # current EF is the PIN, not a key
    assert tx(card, SELECT_EF + "001A", sign) == "6982"  # auth PIN does not open the sign key
    assert tx(card, SELECT_EF + "0017", "802A068033" + digest_info + "00") == "6A86"
    assert tx(card, "802A028005" + "00" * 5 + "00") == "6700"
    assert tx(card, "802A0080000033" + digest_info + "0000") == "6700"  # extended
    assert tx(card, "802A0000" + "33" + digest_info + "00") == "6A86"
    assert tx(card, SELECT_EF + "0006", "802A0097" + "33" + digest_info + "00")[-4:] == "9000"
    assert tx(card, "0088009710" + "00" * 16 + "00") == "6985"  # JPKI keys: 80 2A only
    assert tx(card, "0088009A10" + "00" * 16 + "00") == "6982"


# -- through pcscd only: OpenSC and PKCS#11 on the shared card ---------------------------------


@pytest.mark.backends("pcsc")
def test_opensc_names_the_jpki_driver(card: PcscCard) -> None:
    assert run("opensc-tool", "--reader", str(card.reader), "--name").strip() == "jpki"


@pytest.mark.backends("pcsc")
def test_pkcs15_tool_lists_certificates_and_pin_counters(card: PcscCard) -> None:
    certs = run("pkcs15-tool", "--reader", str(card.reader), "--list-certificates")
    for label in (
        "User Authentication Certificate",
        "Digital Signature Certificate",
        "User Authentication Certificate CA",
        "Digital Signature Certificate CA",
    ):
        assert f"[{label}]" in certs
    pins = run("pkcs15-tool", "--reader", str(card.reader), "--list-pins")
    assert "User Authentication PIN" in pins and "Digital Signature PIN" in pins
    assert tries_left(pins) == ["3", "5"]


@pytest.mark.backends("pcsc")
@pytest.mark.parametrize(
    ("key_id", "token", "pin_name", "cert_id"),
    [
        ("01", "JPKI (User Authentication PIN)", "auth", "01"),
        ("02", "JPKI (Digital Signature PIN)", "sign", "02"),
    ],
    ids=["auth-key", "sign-key"],
)
def test_pkcs11_tool_signature_verifies_with_openssl(
    card: PcscCard, tmp_path: Path, key_id: str, token: str, pin_name: str, cert_id: str
) -> None:
    pins = card.profile.pins
    data = tmp_path / "data.txt"
    data.write_text("マイナンバーカードで署名　ＰＫＣＳ＃１１\n", encoding="utf-8")
    signature = tmp_path / "data.sig"
    run(
        "pkcs11-tool", "--module", PKCS11_MODULE, "--token-label", token,
        "--login", "--pin", pins[pin_name], "--sign", "--id", key_id,
        "--mechanism", "SHA256-RSA-PKCS",
        "--input-file", str(data), "--output-file", str(signature),
    )  # fmt: skip
    cert_pem = tmp_path / "cert.pem"
    read_args = ["pkcs15-tool", "--reader", str(card.reader), "--read-certificate", cert_id]
    if pin_name == "sign":  # the signature certificate is private: it needs the password
        read_args += ["--verify-pin", "--auth-id", "02", "--pin", pins["sign"]]
    listing = run(*read_args)
    cert_pem.write_text(listing[listing.index("-----BEGIN") :])
    pubkey = tmp_path / "pub.pem"
    run("openssl", "x509", "-in", str(cert_pem), "-noout", "-pubkey", "-out", str(pubkey))
    verified = run(
        "openssl", "dgst", "-sha256", "-verify", str(pubkey), "-signature", str(signature),
        str(data),
    )  # fmt: skip
    assert "Verified OK" in verified


# -- other profiles, quirks and ATRs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("card_profile", "expected"),
    [(quirks(), "30829000"), (quirks(reselect_clears_state="true"), "6982")],
    ids=["reselect-keeps", "reselect-clears"],
    indirect=["card_profile"],
)
def test_reselect_keeps_state_unless_quirk(card: TestedCard, expected: str) -> None:
    assert tx(card, JPKI, SELECT_EF + "001B", verify(card.profile.pins["sign"])) == "9000"
    assert tx(card, JPKI, SELECT_EF + "0001", "00B0000002") == expected


@pytest.mark.card_profile("sign-blocked")
def test_blocked_sign_profile(card: TestedCard) -> None:
    assert tx(card, JPKI, SELECT_EF + "001B", "00200080") == "63C0"
    assert tx(card, verify(card.profile.pins["sign"])) == "6984"
    assert tx(card, SELECT_EF + "0001", "00B0000004") == "6982"
    assert tx(card, SELECT_EF + "0018", "00200080") == "63C3"


@pytest.mark.card_profile("no-sign-cert")
def test_card_without_sign_certificate(card: TestedCard) -> None:
    assert tx(card, JPKI, SELECT_EF + "0008", "00B0000003") == "008F009000"
    for fid in ("0001", "001A", "001B"):
        assert tx(card, SELECT_EF + fid) == "6A82"
    assert tx(card, SELECT_EF + "000A", "00B0000002") == "30829000"


@pytest.mark.card_profile(quirks(t0_chaining="true"))
def test_t0_chaining_quirk(card: TestedCard) -> None:
    assert tx(card, JPKI, SELECT_EF + "000A", "00B00000000000") == "6100"
    parts = b""
    sw = "6100"
    while sw.startswith("61"):
        r = card.transmit(bytes.fromhex("00C00000" + sw[2:]))
        parts += r[:-2]
        sw = r[-2:].hex().upper()
    assert sw == "9000" and len(parts) == 3808
    assert tx(card, "00B0000002") == "30829000"


@pytest.mark.backends("pcsc")
@pytest.mark.parametrize(
    ("card_profile", "atr_name"),
    [(with_atr("jpki-03"), "jpki-03"), (with_atr("jpki-06"), "jpki-06")],  # contact, contactless
    ids=["jpki-03", "jpki-06"],
    indirect=["card_profile"],
)
def test_another_known_atr_reaches_pcsc_and_opensc_still_finds_jpki(
    card: PcscCard, atr_name: str
) -> None:
    """OpenSC's ATR table has only the default ATR: with any other it finds the card by
    SELECTing the JPKI AID (docs/card-spec.md §1), after its other drivers' probes got clean
    errors."""
    assert load_profile("default").atr.hex().upper() == DEFAULT_ATR
    assert card.atr == KNOWN_ATRS[atr_name]
    assert run("opensc-tool", "--reader", str(card.reader), "--name").strip() == "jpki"
    certs = run("pkcs15-tool", "--reader", str(card.reader), "--list-certificates")
    assert "User Authentication Certificate" in certs


# -- what changes the card's state: a card of its own -------------------------------------------


@pytest.mark.fresh_card
def test_retry_query_wrong_tries_and_blocking(card: TestedCard) -> None:
    auth = card.profile.pins["auth"]
    tx(card, JPKI, SELECT_EF + "0018")
    assert tx(card, "00200080") == "63C3"
    assert tx(card, "00200080") == "63C3"  # the query costs nothing
    assert tx(card, "0020008000") == "6700"  # Le present: wrong length, no try
    assert tx(card, verify("0000")) == "63C2"
    assert tx(card, verify("12")) == "63C1"  # wrong format is compared like any value
    assert tx(card, "00200080") == "63C1"
    assert tx(card, verify(auth)) == "9000"  # correct resets the counter
    assert tx(card, "00200080") == "63C3"
    assert tx(card, verify("0000"), verify("0000")) == "63C1"
    assert tx(card, verify("0000")) == "63C0"
    assert tx(card, verify(auth)) == "6984"
    assert tx(card, "00200080") == "63C0"
    card.power_cycle()
    assert tx(card, JPKI, SELECT_EF + "0018", "00200080") == "63C0"
    assert tx(card, "00200080" + "11" + "31" * 17) == "6700"


@pytest.mark.fresh_card
@pytest.mark.card_profile(quirks(blocked_sw="0x6983", verified_query_sw="0x9000"))
def test_quirks_blocked_sw_and_verified_query(card: TestedCard) -> None:
    tx(card, JPKI, SELECT_EF + "0018")
    assert tx(card, verify(card.profile.pins["auth"]), "00200080") == "9000"
    assert tx(card, verify("0000"), verify("0000"), verify("0000")) == "63C0"
    assert tx(card, verify("0000")) == "6983"


@pytest.mark.fresh_card
def test_change_reference_data(card: TestedCard) -> None:
    auth = card.profile.pins["auth"]
    tx(card, JPKI, SELECT_EF + "0018")
    assert tx(card, "0024018004" + b"9999".hex()) == "6982"
    assert tx(card, verify(auth)) == "9000"
    assert tx(card, "0024018005" + b"99999".hex()) == "6A80"
    assert tx(card, "0024018004" + b"12AB".hex()) == "6A80"
    assert tx(card, "0024008004" + b"9999".hex()) == "6A86"
    assert tx(card, "8032008004" + b"9999".hex()) == "6985"  # CHANGE KEY is for 住基/共通
    assert tx(card, "0024018004" + b"9999".hex()) == "9000"
    assert tx(card, verify(auth)) == "63C2"
    assert tx(card, verify("9999")) == "9000"
    card.reopen()
    assert tx(card, JPKI, SELECT_EF + "0018", verify("9999")) == "9000"


@pytest.mark.fresh_card
def test_counters_survive_close_and_reopen(card: TestedCard) -> None:
    assert tx(card, JPKI, SELECT_EF + "001B", verify("WRONG1"), verify("WRONG2")) == "63C3"
    card.reopen()
    assert tx(card, JPKI, SELECT_EF + "001B", "00200080") == "63C3"


@pytest.mark.backends("pcsc")
@pytest.mark.fresh_card
def test_pkcs15_tool_counters_follow_wrong_tries(card: PcscCard) -> None:
    """A wrong try made in process on the card's state shows through the served card."""
    card.close()
    with open_card(card.profile, card.state_dir) as in_process:
        assert tx(in_process, JPKI, SELECT_EF + "0018", verify("0000")) == "63C2"
    card.open()
    assert tries_left(run("pkcs15-tool", "--reader", str(card.reader), "--list-pins")) == ["2", "5"]


# -- in process only: opening the card and its state directory -----------------------------------


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


def test_transmit_before_power_on_powers_on(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI) == "9000"


def test_state_dir_has_one_writer(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path), pytest.raises(StateLockedError, match="in use"):
        open_card(profile, tmp_path)
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI) == "9000"


def test_state_dir_is_created_private(profile: Profile, tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    with open_card(profile, state):
        assert state.stat().st_mode & 0o777 == 0o700


def test_state_dir_of_another_profile_is_refused(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path):
        pass
    with pytest.raises(StateError, match="another card"):
        open_card("no-sign-cert", tmp_path)
