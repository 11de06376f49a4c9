"""The JPKI-AP and the ISO 7816-4 core, driven in process through open_card/transmit."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mynacard import Card, StateError, StateLockedError, open_card
from mynacard.personalize.profile import Profile, Quirks, load_profile

JPKI = "00A4040C0AD392F000260100000001"
SHA256_DI_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def tx(card: Card, *hexes: str) -> str:
    """Send APDUs given as hex; return the last response as upper-case hex."""
    response = b""
    for h in hexes:
        response = card.transmit(bytes.fromhex(h.replace(" ", "")))
    return response.hex().upper()


def select_ef(fid: str) -> str:
    return "00A4020C02" + fid


def verify(pin: str) -> str:
    data = pin.encode()
    return f"00200080{len(data):02X}{data.hex()}"


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


@pytest.fixture
def card(profile: Profile, tmp_path: Path) -> Iterator[Card]:
    with open_card(profile, tmp_path / "state") as c:
        yield c


def read_ef(card: Card, fid: str) -> bytes:
    """Read a whole EF in 256-byte chunks until 6B00, as OpenSC-like clients do."""
    assert tx(card, select_ef(fid)) == "9000"
    out = b""
    while True:
        r = card.transmit(bytes.fromhex(f"00B0{len(out):04X}00"))
        if r[-2:] == b"\x6b\x00":
            return out
        assert r[-2:] == b"\x90\x00"
        out += r[:-2]


def public_key(cert_der: bytes) -> rsa.RSAPublicKey:
    key = x509.load_der_x509_certificate(cert_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


# -- ISO core --------------------------------------------------------------------------------


def test_power_on_returns_profile_atr(card: Card, profile: Profile) -> None:
    assert card.power_on() == profile.atr
    assert card.reset() == profile.atr


def test_transmit_before_power_on_powers_on(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI) == "9000"


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
        ("00", "6700"),
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
def test_status_words_for_foreign_and_malformed_commands(card: Card, apdu: str, sw: str) -> None:
    assert tx(card, apdu) == sw
    assert tx(card, JPKI, select_ef("0006"), "00B000000F") == "4A504B494150494343544F4B454E329000"


def test_select_by_prefix_and_fci(card: Card) -> None:
    assert tx(card, "00A4040C09D392F0002601000000") == "9000"
    assert tx(card, select_ef("0006")) == "9000"
    full_name = "6F0C840AD392F000260100000001" + "9000"
    assert tx(card, "00A4040006D392F0002601") == full_name
    assert tx(card, "00A4040C0AD392F000260100000002") == "6A82"
    assert tx(card, "00A4041C0AD392F000260100000001") == "6A86"
    assert tx(card, "00A404040AD392F000260100000001") == "6A86"  # a name on the card, odd P2
    assert tx(card, "00A404040AD392F000260100000002") == "6A82"


def test_select_unknown_ef_keeps_selection(card: Card) -> None:
    assert tx(card, JPKI, select_ef("0006"), select_ef("0099")) == "6A82"
    assert tx(card, "00B000000F") == "4A504B494150494343544F4B454E329000"


def test_mf_select_is_refused_after_reset_and_a_no_op_with_an_app(card: Card) -> None:
    assert tx(card, "00A40000") == "6A86"
    assert tx(card, JPKI, select_ef("0006"), "00A40000") == "9000"
    assert tx(card, "00B0000003") == "4A504B9000"


def test_get_challenge_is_random(card: Card) -> None:
    a, b = tx(card, "0084000008"), tx(card, "0084000008")
    assert len(a) == len(b) == 20 and a.endswith("9000") and a != b
    assert len(tx(card, "0084000000")) == 2 * 258


# -- JPKI objects ------------------------------------------------------------------------------


def test_token_info(card: Card) -> None:
    tx(card, JPKI)
    token = read_ef(card, "0006")
    assert len(token) == 160
    assert token[:32] == b"JPKIAPICCTOKEN2" + b" " * 17


def test_certificate_availability_and_free_certificates(card: Card, profile: Profile) -> None:
    assert profile.jpki is not None
    tx(card, JPKI)
    assert tx(card, select_ef("0008"), "00B0000000") == "8F8F009000"
    auth = read_ef(card, "000A")
    assert len(auth) == 3808
    assert auth.startswith(profile.jpki.auth_cert)
    assert set(auth[len(profile.jpki.auth_cert) :]) == {0xFF}
    assert read_ef(card, "000B").startswith(profile.jpki.auth_ca_cert)
    assert read_ef(card, "0002").startswith(profile.jpki.sign_ca_cert)


def test_sign_certificate_needs_the_sign_password(card: Card, profile: Profile) -> None:
    assert profile.jpki is not None and profile.jpki.sign_cert is not None
    assert tx(card, JPKI, select_ef("0001"), "00B0000004") == "6982"
    assert tx(card, select_ef("0018"), verify(profile.pins["auth"])) == "9000"
    assert tx(card, select_ef("0001"), "00B0000004") == "6982"
    assert tx(card, select_ef("001B"), verify(profile.pins["sign"])) == "9000"
    assert read_ef(card, "0001").startswith(profile.jpki.sign_cert)


def test_read_binary_bounds_and_forms(card: Card, profile: Profile) -> None:
    tx(card, JPKI, select_ef("000A"))
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


def test_keys_and_pins_are_not_readable(card: Card) -> None:
    for fid in ("0017", "0018", "001A", "001B"):
        assert tx(card, JPKI, select_ef(fid), "00B0000000") == "6981"
    assert tx(card, "00B0970000") == "6981"
    assert tx(card, "00B2010400") == "6981"


# -- PINs ---------------------------------------------------------------------------------------


def test_retry_query_wrong_tries_and_blocking(card: Card, profile: Profile) -> None:
    tx(card, JPKI, select_ef("0018"))
    assert tx(card, "00200080") == "63C3"
    assert tx(card, "00200080") == "63C3"  # the query costs nothing
    assert tx(card, "0020008000") == "6700"  # Le present: wrong length, no try
    assert tx(card, verify("0000")) == "63C2"
    assert tx(card, verify("12")) == "63C1"  # wrong format is compared like any value
    assert tx(card, "00200080") == "63C1"
    assert tx(card, verify(profile.pins["auth"])) == "9000"  # correct resets the counter
    assert tx(card, "00200080") == "63C3"
    assert tx(card, verify("0000"), verify("0000")) == "63C1"
    assert tx(card, verify("0000")) == "63C0"
    assert tx(card, verify(profile.pins["auth"])) == "6984"
    assert tx(card, "00200080") == "63C0"
    card.power_off()
    assert tx(card, JPKI, select_ef("0018"), "00200080") == "63C0"
    assert tx(card, "00200080" + "11" + "31" * 17) == "6700"


def test_verify_by_sfi_and_bad_references(card: Card, profile: Profile) -> None:
    tx(card, JPKI)
    assert tx(card, "0020009B") == "63C5"
    assert tx(card, "00200098" + verify(profile.pins["auth"])[8:]) == "9000"
    assert tx(card, "00200086") == "6A88"  # SFI 6 is not a PIN
    assert tx(card, "00200001") == "6A86"
    assert tx(card, "00200180") == "6A86"
    assert tx(card, select_ef("0006"), "00200080") == "6986"


def test_blocked_sign_profile(tmp_path: Path) -> None:
    with open_card("sign-blocked", tmp_path) as c:
        assert tx(c, JPKI, select_ef("001B"), "00200080") == "63C0"
        pins = load_profile("sign-blocked").pins
        assert tx(c, verify(pins["sign"])) == "6984"
        assert tx(c, select_ef("0001"), "00B0000004") == "6982"
        assert tx(c, select_ef("0018"), "00200080") == "63C3"


def test_card_without_sign_certificate(tmp_path: Path) -> None:
    with open_card("no-sign-cert", tmp_path) as c:
        assert tx(c, JPKI, select_ef("0008"), "00B0000003") == "008F009000"
        for fid in ("0001", "001A", "001B"):
            assert tx(c, select_ef(fid)) == "6A82"
        assert tx(c, select_ef("000A"), "00B0000002") == "30829000"


def test_quirks_blocked_sw_and_verified_query(profile: Profile, tmp_path: Path) -> None:
    quirky = dataclasses.replace(
        profile, quirks=Quirks(blocked_sw=0x6983, verified_query_sw=0x9000)
    )
    with open_card(quirky, tmp_path) as c:
        tx(c, JPKI, select_ef("0018"))
        assert tx(c, verify(profile.pins["auth"]), "00200080") == "9000"
        assert tx(c, verify("0000"), verify("0000"), verify("0000")) == "63C0"
        assert tx(c, verify("0000")) == "6983"


@pytest.mark.parametrize(
    "leave",
    [
        lambda c: c.reset(),
        lambda c: c.power_off(),
        lambda c: c.transmit(bytes.fromhex("00A4040C07A0000001510000")),  # the ISD
        lambda c: c.transmit(bytes.fromhex("00A4040C0AD3921000310001010408")),  # the text AP
    ],
    ids=["reset", "power-off", "select-isd", "select-other-app"],
)
def test_verified_state_ends(card: Card, profile: Profile, leave: object) -> None:
    assert callable(leave)
    assert tx(card, JPKI, select_ef("001B"), verify(profile.pins["sign"])) == "9000"
    assert tx(card, select_ef("0001"), "00B0000002") == "30829000"
    leave(card)
    assert tx(card, JPKI, select_ef("0001"), "00B0000002") == "6982"


def test_reselect_keeps_state_unless_quirk(profile: Profile, tmp_path: Path) -> None:
    for clears, expected in ((False, "30829000"), (True, "6982")):
        quirky = dataclasses.replace(profile, quirks=Quirks(reselect_clears_state=clears))
        with open_card(quirky, tmp_path / str(clears)) as c:
            assert tx(c, JPKI, select_ef("001B"), verify(profile.pins["sign"])) == "9000"
            assert tx(c, JPKI, select_ef("0001"), "00B0000002") == expected


def test_change_reference_data(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        tx(c, JPKI, select_ef("0018"))
        assert tx(c, "0024018004" + b"9999".hex()) == "6982"
        assert tx(c, verify(profile.pins["auth"])) == "9000"
        assert tx(c, "0024018005" + b"99999".hex()) == "6A80"
        assert tx(c, "0024018004" + b"12AB".hex()) == "6A80"
        assert tx(c, "0024008004" + b"9999".hex()) == "6A86"
        assert tx(c, "8032008004" + b"9999".hex()) == "6985"  # CHANGE KEY is for 住基/共通
        assert tx(c, "0024018004" + b"9999".hex()) == "9000"
        assert tx(c, verify(profile.pins["auth"])) == "63C2"
        assert tx(c, verify("9999")) == "9000"
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI, select_ef("0018"), verify("9999")) == "9000"


# -- signing -------------------------------------------------------------------------------------


def signed(card: Card, p1: int, p2: int, data: bytes) -> bytes:
    r = card.transmit(bytes((0x80, 0x2A, p1, p2, len(data))) + data + b"\x00")
    assert r[-2:] == b"\x90\x00", r.hex()
    assert len(r) == 258
    return r[:-2]


def test_signing_schemes_verify_with_the_certificates(card: Card, profile: Profile) -> None:
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
        assert tx(card, JPKI, select_ef(pin_ef), verify(pin), select_ef(key_ef)) == "9000"
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


def test_raw_padding_signs_input_exactly_as_given(card: Card, profile: Profile) -> None:
    assert profile.jpki is not None
    pub = public_key(profile.jpki.auth_cert)
    tx(card, JPKI, select_ef("0018"), verify(profile.pins["auth"]), select_ef("0017"))
    no_null = bytes.fromhex("302f300b06096086480165030402010420") + bytes(range(32))
    for data in (no_null, b"\x01", bytes(245), SHA256_DI_PREFIX + bytes(32)):
        sig = signed(card, 0x00, 0x80, data)
        assert pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == data
    assert tx(card, "802A0080F6" + "00" * 246 + "00") == "6700"


def test_signing_refusals(card: Card, profile: Profile) -> None:
    digest_info = (SHA256_DI_PREFIX + bytes(32)).hex()
    sign = "802A008033" + digest_info + "00"
    assert tx(card, JPKI, select_ef("0017"), sign) == "6982"
    assert tx(card, select_ef("0018"), verify(profile.pins["auth"])) == "9000"
    assert tx(card, sign) == "6986"  # current EF is the PIN, not a key
    assert tx(card, select_ef("001A"), sign) == "6982"  # auth PIN does not open the sign key
    assert tx(card, select_ef("0017"), "802A068033" + digest_info + "00") == "6A86"
    assert tx(card, "802A028005" + "00" * 5 + "00") == "6700"
    assert tx(card, "802A0080000033" + digest_info + "0000") == "6700"  # extended
    assert tx(card, "802A0000" + "33" + digest_info + "00") == "6A86"
    assert tx(card, select_ef("0006"), "802A0097" + "33" + digest_info + "00")[-4:] == "9000"
    assert tx(card, "0088009710" + "00" * 16 + "00") == "6985"  # JPKI keys: 80 2A only
    assert tx(card, "0088009A10" + "00" * 16 + "00") == "6982"


# -- durable state ------------------------------------------------------------------------------


def test_counters_survive_close_and_reopen(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI, select_ef("001B"), verify("WRONG1"), verify("WRONG2")) == "63C3"
    with open_card(profile, tmp_path) as c:
        assert tx(c, JPKI, select_ef("001B"), "00200080") == "63C3"


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


def test_t0_chaining_quirk(profile: Profile, tmp_path: Path) -> None:
    chained = dataclasses.replace(profile, quirks=Quirks(t0_chaining=True))
    with open_card(chained, tmp_path) as c:
        assert tx(c, JPKI, select_ef("000A"), "00B00000000000") == "6100"
        parts = b""
        sw = "6100"
        while sw.startswith("61"):
            r = c.transmit(bytes.fromhex("00C00000" + sw[2:]))
            parts += r[:-2]
            sw = r[-2:].hex().upper()
        assert sw == "9000" and len(parts) == 3808
        assert tx(c, "00B0000002") == "30829000"
