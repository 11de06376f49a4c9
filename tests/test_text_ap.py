"""The 券面事項入力補助AP (text AP), driven in process through open_card/transmit."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from national_checks import (
    SHA256_DIGEST_INFO,
    TEXT_ACCESS,
    TEXT_AID,
    VISUAL_AID,
    challenge_signature,
    check_access_matrix,
    fields,
    municipality_key,
    read_by_sfi_extended,
    read_ef,
    read_ef_first,
    read_text_ap,
    select,
    select_ef,
    sw,
    verify,
    verify_sha256,
)

from mynacard import Card, open_card
from mynacard.personalize.cvc import CVC_ROOTS, cvc_root_private_key, key_id
from mynacard.personalize.profile import Profile, Quirks, load_profile
from mynacard.personalize.tlv import parse_object, parse_rsa_public_key

PIN, BLOCKED, CARD_KEY, CODE_A, CODE_B = 0x0011, 0x0012, 0x0013, 0x0014, 0x0015


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


@pytest.fixture
def card(profile: Profile, tmp_path: Path) -> Iterator[Card]:
    with open_card(profile, tmp_path / "state") as c:
        select(c.transmit, TEXT_AID)
        yield c


def send(card: Card, *hexes: str) -> str:
    """Send APDUs given as hex; the last response as upper-case hex."""
    response = b""
    for apdu in hexes:
        response = card.transmit(bytes.fromhex(apdu))
    return response.hex().upper()


def key_value(profile: Profile, fid: int) -> str:
    return {PIN: profile.pins["text"], CODE_A: profile.pins["code_a"]}.get(
        fid, profile.pins["code_b"]
    )


def test_select_by_aid_prefix_and_fci(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        fci = "6F0C840AD3921000310001010408"
        assert send(c, "00A404000AD3921000310001010408") == fci + "9000"
        assert send(c, "00A4040C0AD3921000310001010408") == "9000"
        assert send(c, "00A4040C0AD3921000310001010499") == "6A82"


def test_everything_reads_and_verifies(card: Card, profile: Profile) -> None:
    """The whole AP as a relying party reads it (national_checks.read_text_ap)."""
    text = read_text_ap(card.transmit, profile.pins["text"])
    holder = profile.holder
    assert text.my_number == profile.my_number
    assert (text.name, text.address) == (holder.name, holder.address)
    assert text.birth_date == holder.birth_date.strftime("%Y%m%d")
    assert text.sex == holder.sex
    assert text.card_key == profile.text_ap.keys.card_key.public_key()  # type: ignore[union-attr]


def test_attributes_are_utf8_with_the_measured_layout(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, CODE_B, profile.pins["code_b"])) == "9000"
    data = read_ef(card.transmit, 0x0002)
    name = profile.holder.name.encode("utf-8")
    address = profile.holder.address.encode("utf-8")
    assert "\u3000" in profile.holder.name and "６" in profile.holder.address
    body = (
        bytes.fromhex("DF2108")
        + bytes((0, 14, 0, 17 + len(name), 0, 20 + len(name) + len(address)))
        + (31 + len(name) + len(address)).to_bytes(2, "big")
        + b"\xdf\x22"
        + bytes((len(name),))
        + name
        + b"\xdf\x23"
        + bytes((len(address),))
        + address
        + b"\xdf\x24\x08"
        + profile.holder.birth_date.strftime("%Y%m%d").encode()
        + b"\xdf\x25\x01"
        + profile.holder.sex.encode()
    )
    assert data == b"\xff\x20" + bytes((len(body),)) + body


def test_integrity_record_signed_by_the_certified_key(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    record = read_ef(card.transmit, 0x0003)
    objects = fields(record, 0xFF30)
    assert record[5:8] == bytes.fromhex("DF3120") and record[40:43] == bytes.fromhex("DF3220")
    assert record[75:80] == bytes.fromhex("DF33820100")
    physical = bytes.fromhex("FF100C") + profile.my_number.encode() + b"\xff\xff"
    assert objects[0xDF31].value == hashlib.sha256(physical).digest()
    certified = municipality_key(read_ef(card.transmit, 0x0004), "text")
    verify_sha256(certified, objects[0xDF33].value, record[5:75])
    card_key = profile.text_ap.keys.card_key.public_key()  # type: ignore[union-attr]
    with pytest.raises(InvalidSignature):  # the card's own key did not sign it
        verify_sha256(card_key, objects[0xDF33].value, record[5:75])


def test_cv_certificate_chains_to_the_test_root(card: Card, profile: Profile) -> None:
    cvc = read_ef(card.transmit, 0x0004)
    assert cvc[10:26] == key_id("6000033", "001") == b"6000033\x08\x05001\x00\x00\x00\x00"
    assert cvc[26:42] == key_id(profile.municipality_code + "31", "000")
    # The published root key is the one made from the fixed seed.
    assert cvc_root_private_key("text").public_key() == CVC_ROOTS["text"].public_key()
    certified = municipality_key(cvc, "text")
    assert profile.text_ap is not None
    assert certified == profile.text_ap.keys.municipality_key.public_key()
    with pytest.raises(InvalidSignature):  # the visual AP's root did not sign it
        verify_sha256(CVC_ROOTS["visual"].public_key(), cvc[-256:], cvc[10:307])


def test_session_key_and_unknown_files(card: Card, profile: Profile) -> None:
    assert read_ef(card.transmit, 0x0008) == b"\xff" * 16
    assert sw(verify(card.transmit, CODE_B, profile.pins["code_b"])) == "9000"
    session = read_ef(card.transmit, 0x0006)
    assert session[:4] == bytes.fromhex("A1820109")
    assert profile.text_ap is not None
    assert parse_rsa_public_key(parse_object(session).value) == profile.text_ap.session_public_key


@pytest.mark.parametrize("key", [None, PIN, CODE_A, CODE_B], ids=["none", "pin", "a", "b"])
def test_access_matrix(card: Card, profile: Profile, key: int | None) -> None:
    check_access_matrix(card.transmit, TEXT_ACCESS, key, key_value(profile, key) if key else "")


def test_keys_answer_retry_queries(card: Card) -> None:
    for fid in (PIN, CODE_A, CODE_B):
        assert send(card, f"00A4020C02{fid:04X}") == "9000"
        assert send(card, "00200080") == "63C3"
        assert send(card, f"002000{0x80 | fid:02X}") == "63C3"  # by SFI
    assert send(card, "00A4020C020012") == "9000"
    assert send(card, "00200080") == "63C0"  # blocked at issuance
    assert send(card, "0020008004" + b"1234".hex()) == "6984"
    assert send(card, "00A4020C020013") == "9000"
    assert send(card, "00200080") == "6986"  # the card key is not a PIN


def test_wrong_values_cost_tries_until_blocked(card: Card, profile: Profile) -> None:
    pin = profile.pins["text"]
    assert sw(verify(card.transmit, PIN, "0000" if pin != "0000" else "1111")) == "63C2"
    assert sw(verify(card.transmit, PIN, "12345")) == "63C1"  # wrong length: a try (#5)
    assert sw(verify(card.transmit, PIN, "abcd")) == "63C0"
    assert sw(verify(card.transmit, PIN, pin)) == "6984"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "6982"
    # 照合番号A still opens the My Number; the JPKI PIN with the same value is untouched.
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"
    select(card.transmit, bytes.fromhex("D392F000260100000001"))
    assert send(card, "00A4020C020018") == "9000"
    assert send(card, "00200080") == "63C3"


def test_counters_are_per_application(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, CODE_A, "000000000000")) == "63C2"
    assert sw(verify(card.transmit, CODE_B, "00000000000000")) == "63C2"
    select(card.transmit, VISUAL_AID)
    for fid in (0x0012, 0x0013):
        assert send(card, f"00A4020C02{fid:04X}") == "9000"
        assert send(card, "00200080") == "63C3"
    select(card.transmit, TEXT_AID)
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    assert send(card, "00200080") == "63C3"  # a correct value restores the count


@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("0020008011" + "31" * 17, "6700"),  # longer than any key
        ("0020008004" + "31323334" + "00", "6700"),  # Le present
        ("00200080" + "00", "6700"),  # retry query with Le (LUL measured)
        ("0020018004" + "31323334", "6A86"),  # P1 must be 00
        ("0020008104" + "31323334", "6A88"),  # SFI 1 is an EF, not a key
        ("0020009304" + "31323334", "6A88"),  # SFI 13 is the card key
        ("0020009904" + "31323334", "6A88"),  # SFI 19 does not exist
    ],
)
def test_malformed_verify_costs_nothing(card: Card, apdu: str, expected: str) -> None:
    assert send(card, "00A4020C020011") == "9000"
    assert send(card, apdu) == expected
    assert send(card, "00A4020C020011") == "9000"
    assert send(card, "00200080") == "63C3"


def test_verify_without_a_current_key(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        select(c.transmit, TEXT_AID)
        assert send(c, "0020008004" + profile.pins["text"].encode().hex()) == "6986"
        assert send(c, "00A4020C020005", "0020008004" + b"1234".hex()) == "6986"


def test_change_reference_data(profile: Profile, tmp_path: Path) -> None:
    old, new = profile.pins["text"], "5678" if profile.pins["text"] != "5678" else "8765"
    with open_card(profile, tmp_path) as c:
        select(c.transmit, TEXT_AID)
        assert send(c, "00A4020C020011") == "9000"
        assert send(c, "0024018004" + new.encode().hex()) == "6982"  # not verified yet
        assert sw(verify(c.transmit, PIN, old)) == "9000"
        assert send(c, "0024018005" + b"12345".hex()) == "6A80"
        assert send(c, "0024018004" + b"12a4".hex()) == "6A80"
        assert send(c, "8032008004" + new.encode().hex()) == "6985"  # CHANGE KEY: 住基/共通
        assert send(c, "0024018004" + new.encode().hex()) == "9000"
    with open_card(profile, tmp_path) as c:
        select(c.transmit, TEXT_AID)
        assert sw(verify(c.transmit, PIN, old)) == "63C2"
        assert sw(verify(c.transmit, PIN, new)) == "9000"
        assert sw(read_ef_first(c.transmit, 0x0002)) == "9000"


@pytest.mark.parametrize("fid", [CODE_A, CODE_B, BLOCKED])
def test_derived_and_blocked_keys_cannot_be_changed(card: Card, profile: Profile, fid: int) -> None:
    if fid != BLOCKED:
        assert sw(verify(card.transmit, fid, key_value(profile, fid))) == "9000"
    else:
        assert sw(select_ef(card.transmit, fid)) == "9000"
    assert send(card, "002401800C" + b"123456789012".hex()) == "6985"
    if fid != BLOCKED:  # unchanged: the old value still opens it
        assert sw(verify(card.transmit, fid, key_value(profile, fid))) == "9000"


def test_card_key_signs_challenges_without_a_credential(card: Card, profile: Profile) -> None:
    assert profile.text_ap is not None
    card_key = profile.text_ap.keys.card_key.public_key()
    challenge, signature = challenge_signature(card.transmit)
    verify_sha256(card_key, signature, challenge)
    # P2 = 80 with EF 0013 selected signs the same (docs/decisions.md #33).
    digest_info = SHA256_DIGEST_INFO + hashlib.sha256(b"challenge").digest()
    command = "802A00{}33" + digest_info.hex() + "00"
    by_default = send(card, command.format("00"))
    assert send(card, "00A4020C020013") == "9000"
    assert send(card, command.format("80")) == by_default
    assert send(card, command.format("93")) == by_default  # P2 = 80|SFI
    assert send(card, "0088009310" + "00" * 16 + "00") == "6985"  # no INTERNAL AUTHENTICATE
    assert send(card, "00B0000001") == "6981"  # a key is not readable


def test_jsa_style_sfi_verify_and_extended_read(card: Card, profile: Profile) -> None:
    """JSA: VERIFY with P2 = 80|SFI, then one READ BINARY with P1 = 80|SFI and Le 65536."""
    pin = profile.pins["text"].encode()
    assert send(card, "0020009104" + pin.hex()) == "9000"
    number = read_by_sfi_extended(card.transmit, 0x01)
    assert number == b"\xff\x10\x0c" + profile.my_number.encode() + b"\xff\xff"
    attributes = read_by_sfi_extended(card.transmit, 0x02)
    assert attributes == read_ef(card.transmit, 0x0002)
    assert send(card, "00B0820000") == attributes.hex().upper() + "9000"  # short Le 256


def test_read_binary_bounds(card: Card) -> None:
    assert send(card, "00A4020C020005") == "9000"
    whole = read_ef(card.transmit, 0x0005)
    assert send(card, "00B0010000") == "6B00"  # offset 256 = the end
    assert send(card, "00B07FFF01") == "6B00"
    assert send(card, "00B000F020") == whole[0xF0:].hex().upper() + "9000"  # the rest
    assert send(card, "00B08500FF") == whole[:0xFF].hex().upper() + "9000"
    assert send(card, "00B085FF10") == whole[0xFF:].hex().upper() + "9000"
    assert send(card, "00B0A50001") == "6A86"  # P1 = 80|SFI with bits 6-7 set
    assert send(card, "00B09E0001") == "6A82"  # no EF with SFI 1E


def test_nothing_can_be_written(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, PIN, profile.pins["text"])) == "9000"
    for fid in TEXT_ACCESS:
        before = read_ef(card.transmit, fid)
        assert send(card, "00D6000001" + "00") == "6982"
        assert send(card, f"00D6{0x80 | fid:02X}000100") == "6982"
        assert read_ef(card.transmit, fid) == before


def test_selecting_another_application_ends_the_verified_state(
    card: Card, profile: Profile
) -> None:
    assert sw(verify(card.transmit, PIN, profile.pins["text"])) == "9000"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"
    select(card.transmit, VISUAL_AID)
    select(card.transmit, TEXT_AID)
    assert sw(read_ef_first(card.transmit, 0x0001)) == "6982"


def test_set_session_key_needs_the_pin_and_is_then_refused(card: Card, profile: Profile) -> None:
    """80 AE (SET SESSION KEY): 6982 before the PIN (docs/card-spec.md §4); secure messaging is not
    emulated, so 6985 after it, and the verified state stays."""
    cryptogram = "80AE0000000100" + "5A" * 256
    assert send(card, cryptogram) == "6982"
    assert sw(verify(card.transmit, PIN, profile.pins["text"])) == "9000"
    assert send(card, cryptogram) == "6985"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"


def test_filler_quirk(profile: Profile, tmp_path: Path) -> None:
    """With `filler = 0x00` the unused bytes are 00, and DF31 hashes them as stored."""
    quirky = dataclasses.replace(profile, quirks=Quirks(filler=0x00))
    with open_card(quirky, tmp_path) as c:
        select(c.transmit, TEXT_AID)
        assert sw(verify(c.transmit, CODE_A, profile.pins["code_a"])) == "9000"
        number = read_ef(c.transmit, 0x0001)
        assert number == b"\xff\x10\x0c" + profile.my_number.encode() + b"\x00\x00"
        assert read_ef(c.transmit, 0x0005)[164:] == bytes(92)
        assert read_ef(c.transmit, 0x0008) == bytes(16)
        record = fields(read_ef(c.transmit, 0x0003), 0xFF30)
        assert record[0xDF31].value == hashlib.sha256(number).digest()
