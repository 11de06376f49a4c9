"""The 券面事項確認AP (visual AP, 券面AP), driven in process through open_card/transmit."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from national_checks import (
    PKCS1,
    VISUAL_ACCESS,
    VISUAL_AID,
    challenge_signature,
    check_access_matrix,
    check_card_face,
    check_signed_record,
    fields,
    municipality_key,
    open_image,
    read_by_sfi_extended,
    read_ef,
    select,
    sw,
    verify,
    verify_sha256,
)

from mynacard import Card, open_card
from mynacard.personalize.cvc import CVC_ROOTS, cvc_root_private_key, key_id
from mynacard.personalize.eras import era_yymmdd
from mynacard.personalize.profile import Profile, load_profile
from mynacard.personalize.tlv import parse_rsa_public_key

BIRTH, CODE_B, CODE_A, CARD_KEY = 0x0011, 0x0012, 0x0013, 0x001A


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


@pytest.fixture
def card(profile: Profile, tmp_path: Path) -> Iterator[Card]:
    with open_card(profile, tmp_path / "state") as c:
        select(c.transmit, VISUAL_AID)
        yield c


def send(card: Card, *hexes: str) -> str:
    """Send APDUs given as hex; the last response as upper-case hex."""
    response = b""
    for apdu in hexes:
        response = card.transmit(bytes.fromhex(apdu))
    return response.hex().upper()


def key_value(profile: Profile, fid: int) -> str:
    return profile.pins[{BIRTH: "birth", CODE_A: "code_a", CODE_B: "code_b"}[fid]]


def card_key(profile: Profile) -> rsa.RSAPublicKey:
    assert profile.visual_ap is not None
    return profile.visual_ap.keys.card_key.public_key()


def test_select_and_fci(profile: Profile, tmp_path: Path) -> None:
    with open_card(profile, tmp_path) as c:
        fci = "6F0C840AD3921000310001010402"
        assert send(c, "00A404000AD3921000310001010402") == fci + "9000"


@pytest.mark.parametrize("key", [None, BIRTH, CODE_A, CODE_B], ids=["none", "birth", "a", "b"])
def test_access_matrix(card: Card, profile: Profile, key: int | None) -> None:
    check_access_matrix(card.transmit, VISUAL_ACCESS, key, key_value(profile, key) if key else "")


def test_age_record(card: Card, profile: Profile) -> None:
    key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
    assert profile.pins["birth"] == era_yymmdd(profile.holder.birth_date)
    assert sw(verify(card.transmit, BIRTH, profile.pins["birth"])) == "9000"
    record = read_ef(card.transmit, 0x0001)
    assert len(record) == 547 and record[:5] == bytes.fromhex("FF1082021E")
    objects = check_signed_record(record, 0xFF10, 0xDF13, key)
    assert objects[0xDF11].value == profile.holder.birth_date.strftime("%Y%m%d").encode()
    assert parse_rsa_public_key(objects[0xDF12].value) == card_key(profile)
    with pytest.raises(InvalidSignature):  # signed by the certified key, not the card key
        verify_sha256(card_key(profile), objects[0xDF13].value, record[5:286])


def test_card_face(card: Card, profile: Profile) -> None:
    key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
    assert sw(verify(card.transmit, CODE_B, profile.pins["code_b"])) == "9000"
    face_data = read_ef(card.transmit, 0x0002)
    face, carried_key = check_card_face(face_data, key)
    assert carried_key == card_key(profile)
    assert face.birth_date == profile.holder.birth_date.strftime("%Y%m%d")
    assert face.sex == profile.holder.sex
    assert face.expiry == profile.card_expiry.strftime("%Y%m%d")
    images = face.images
    assert images["name"].mode == images["address"].mode == images["security_code"].mode == "1"
    assert images["security_code"].size == (24, 12)
    assert images["name"].width == images["address"].width == 336
    assert images["photo"].mode == "L" and images["photo"].size == (120, 150)
    assert face.size < 32767
    assert profile.visual_ap is not None
    objects = fields(face_data, 0xFF20)
    assert objects[0xDF25].value == profile.visual_ap.name_image
    assert objects[0xDF27].value == profile.visual_ap.photo


def test_card_face_signature_covers_the_three_groups(card: Card, profile: Profile) -> None:
    """Changing a byte in any signed group breaks DF28; DF29/DF2A are outside it."""
    key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    face = read_ef(card.transmit, 0x0002)
    objects = fields(face, 0xFF20)
    for tag in (0xDF23, 0xDF26, 0xDF27):
        changed = bytearray(face)
        changed[objects[tag].offset + objects[tag].size - 1] ^= 0x01
        with pytest.raises(AssertionError):
            check_card_face(bytes(changed), key)
    for tag in (0xDF29, 0xDF2A):
        changed = bytearray(face)
        changed[objects[tag].offset + objects[tag].header_size] ^= 0x01
        recovered = key.recover_data_from_signature(objects[0xDF28].value, PKCS1, None)
        groups = (
            bytes(changed[objects[0xDF22].offset : objects[0xDF25].offset]),
            bytes(changed[objects[0xDF25].offset : objects[0xDF27].offset]),
            bytes(changed[objects[0xDF27].offset : objects[0xDF28].offset]),
        )
        assert recovered[19:] == b"".join(hashlib.sha256(g).digest() for g in groups)


def test_basic_info_and_unknown_file(card: Card, profile: Profile) -> None:
    info = read_ef(card.transmit, 0x0003)
    objects = fields(info, 0xFF30)
    assert objects[0xDF31].value == bytes.fromhex("06030E01")
    assert objects[0xDF32].value == key_id("6000024", "001")
    assert objects[0xDF33].value == b"\x00"
    assert objects[0xDF34].value == profile.municipality_code.encode()
    assert len(objects[0xDF35].value) == 272 and objects[0xDF35].value[:16] == key_id(
        "5900025", "001"
    )
    assert sw(verify(card.transmit, CODE_B, profile.pins["code_b"])) == "9000"
    assert read_ef(card.transmit, 0x0006) == b"\xff" * 16


def test_cv_certificate_chains_to_the_test_root(card: Card, profile: Profile) -> None:
    cvc = read_ef(card.transmit, 0x0004)
    assert cvc[10:26] == key_id("6000023", "001")
    assert cvc[26:42] == key_id(profile.municipality_code + "21", "000")
    assert cvc_root_private_key("visual").public_key() == CVC_ROOTS["visual"].public_key()
    assert profile.visual_ap is not None
    assert municipality_key(cvc, "visual") == profile.visual_ap.keys.municipality_key.public_key()
    with pytest.raises(InvalidSignature):
        verify_sha256(CVC_ROOTS["text"].public_key(), cvc[-256:], cvc[10:307])


def test_my_number_image(card: Card, profile: Profile) -> None:
    key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    data = read_ef(card.transmit, 0x0005)
    objects = check_signed_record(data, 0xFF40, 0xDF43, key)
    image = open_image(objects[0xDF41].value, "png")
    assert image.size == (72, 12) and image.mode == "1"
    assert parse_rsa_public_key(objects[0xDF42].value) == card_key(profile)
    # Twelve digits, left to right: each 6-pixel cell has ink.
    pixels = image.convert("L").load()
    assert pixels is not None
    for cell in range(12):
        ink = [pixels[x, y] for x in range(cell * 6, cell * 6 + 6) for y in range(12)]
        assert 0 in ink


def test_card_key_signs_challenges_without_a_credential(card: Card, profile: Profile) -> None:
    challenge, signature = challenge_signature(card.transmit)
    verify_sha256(card_key(profile), signature, challenge)
    assert send(card, "00A4020C02001A") == "9000"
    assert send(card, "00B0000001") == "6981"
    assert send(card, "008800" + "9A" + "10" + "00" * 16 + "00") == "6985"


def test_keys(card: Card, profile: Profile) -> None:
    for fid in (BIRTH, CODE_B, CODE_A):
        assert send(card, f"00A4020C02{fid:04X}", "00200080") == "63C3"
    assert sw(verify(card.transmit, BIRTH, profile.holder.birth_date.strftime("%Y%m%d"))) == (
        "63C2"  # the Gregorian date is not the key: era YYMMDD is
    )
    assert sw(verify(card.transmit, BIRTH, profile.pins["birth"])) == "9000"
    for fid in (BIRTH, CODE_B, CODE_A):
        assert sw(verify(card.transmit, fid, key_value(profile, fid))) == "9000"
        assert send(card, "0024018006" + b"123456".hex()) == "6985"
        assert send(card, "8032008006" + b"123456".hex()) == "6985"


def test_jsa_style_sfi_verify_and_extended_read(card: Card, profile: Profile) -> None:
    """JSA reads visual 0002 and 0005 with one extended READ BINARY by SFI each."""
    code_a = profile.pins["code_a"].encode()
    assert send(card, "002000930C" + code_a.hex()) == "9000"
    face = read_by_sfi_extended(card.transmit, 0x02)
    assert len(face) > 256 and face == read_ef(card.transmit, 0x0002)
    image = read_by_sfi_extended(card.transmit, 0x05)
    assert image == read_ef(card.transmit, 0x0005)
    assert send(card, "00B0820000") == face[:256].hex().upper() + "9000"


def test_read_binary_bounds(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    face = read_ef(card.transmit, 0x0002)
    end = len(face)
    assert send(card, f"00B0{end:04X}01") == "6B00"
    assert send(card, f"00B0{end - 3:04X}10") == face[-3:].hex().upper() + "9000"
    assert send(card, f"00B0{end - 3:04X}000100") == face[-3:].hex().upper() + "9000"


def test_nothing_can_be_written(card: Card, profile: Profile) -> None:
    assert sw(verify(card.transmit, CODE_A, profile.pins["code_a"])) == "9000"
    for fid in (0x0002, 0x0003, 0x0005):
        before = read_ef(card.transmit, fid)
        assert send(card, "00D6000001" + "00") == "6982"
        assert read_ef(card.transmit, fid) == before
