"""The 券面事項入力補助AP (text AP) and the 券面事項確認AP (visual AP, 券面AP): each behaviour on
the card in process and through pcscd (the `card` fixture), checked as a relying party would
(national_checks.py)."""

from __future__ import annotations

import hashlib

import pytest
from ber import fields, read_tlv, rsa_public_key
from cardtest import CardProfile, InTheApplication, TestedCard, read_ef, select, select_ef, sw, tx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from national_checks import (
    PKCS1,
    SHA256_DIGEST_INFO,
    TEST_ROOTS,
    TEXT_ACCESS,
    TEXT_AID,
    VISUAL_ACCESS,
    VISUAL_AID,
    challenge_signature,
    check_access_matrix,
    check_card_face,
    check_signed_record,
    key_id,
    municipality_key,
    open_image,
    read_by_sfi_extended,
    read_ef_first,
    read_text_ap,
    root_public_key,
    verify,
    verify_sha256,
)

from mynacard.personalize import cvc
from mynacard.personalize.eras import era_yymmdd
from mynacard.personalize.profile import Profile

JPKI_AID = bytes.fromhex("D392F000260100000001")
TEXT_PIN, TEXT_BLOCKED, TEXT_CARD_KEY, TEXT_CODE_A, TEXT_CODE_B = 0x11, 0x12, 0x13, 0x14, 0x15
VISUAL_BIRTH, VISUAL_CODE_B, VISUAL_CODE_A, VISUAL_CARD_KEY = 0x11, 0x12, 0x13, 0x1A
KEY_NAMES = {  # the profile's [pins] name of each key EF
    TEXT_AID: {TEXT_PIN: "text", TEXT_CODE_A: "code_a", TEXT_CODE_B: "code_b"},
    VISUAL_AID: {VISUAL_BIRTH: "birth", VISUAL_CODE_A: "code_a", VISUAL_CODE_B: "code_b"},
}


def pin(profile: Profile, aid: bytes, fid: int) -> str:
    return profile.pins[KEY_NAMES[aid][fid]]


def text_card_key(profile: Profile) -> rsa.RSAPublicKey:
    assert profile.text_ap is not None
    return profile.text_ap.keys.card_key.public_key()


def visual_card_key(profile: Profile) -> rsa.RSAPublicKey:
    assert profile.visual_ap is not None
    return profile.visual_ap.keys.card_key.public_key()


def test_the_checks_hold_the_published_test_roots() -> None:
    """national_checks' own copy of the roots is the emulator's, made from the fixed seeds."""
    assert key_id("6000033", "001") == b"6000033\x08\x05001\x00\x00\x00\x00"
    assert cvc.key_id("6000033", "001") == key_id("6000033", "001")
    for kind in ("text", "visual"):
        published = cvc.CVC_ROOTS[kind]
        assert (published.key_id, published.modulus) == TEST_ROOTS[kind]
        assert cvc.cvc_root_private_key(kind).public_key() == root_public_key(kind)


# -- selection and what spans the applications ----------------------------------------------------


def test_select_text_ap_by_aid_prefix_and_fci(card: TestedCard) -> None:
    fci = "6F0C840AD3921000310001010408"
    assert tx(card, "00A404000AD3921000310001010408") == fci + "9000"
    assert tx(card, "00A4040C0AD3921000310001010408") == "9000"
    assert tx(card, "00A4040C0AD3921000310001010499") == "6A82"


def test_select_visual_ap_and_fci(card: TestedCard) -> None:
    fci = "6F0C840AD3921000310001010402"
    assert tx(card, "00A404000AD3921000310001010402") == fci + "9000"


def test_verify_without_a_current_key(card: TestedCard) -> None:
    select(card.transmit, TEXT_AID)
    assert tx(card, "0020008004" + card.profile.pins["text"].encode().hex()) == "6986"
    assert tx(card, "00A4020C020005", "0020008004" + b"1234".hex()) == "6986"


@pytest.mark.parametrize(
    ("aid", "access"),
    [(TEXT_AID, TEXT_ACCESS), (VISUAL_AID, VISUAL_ACCESS)],
    ids=["text", "visual"],
)
def test_access_matrix(card: TestedCard, aid: bytes, access: dict[int, set[int] | None]) -> None:
    """Every EF with every key (and with none): read exactly where the spec says, else 6982,
    by SELECT and by SFI; leaving the AP ends the verified state between keys."""
    for key in [None, *KEY_NAMES[aid]]:
        select(card.transmit, JPKI_AID)
        select(card.transmit, aid)
        value = pin(card.profile, aid, key) if key is not None else ""
        check_access_matrix(card.transmit, access, key, value)


def test_set_session_key_is_refused_as_measured(card: TestedCard) -> None:
    """80 AE (SET SESSION KEY): 6982 before the PIN (docs/card-spec.md §4), 66F1 in the visual
    AP; after it a cryptogram that is no OAEP one is 6A80 (docs/secure-messaging.md), and the
    verified state stays."""
    cryptogram = bytes.fromhex("80AE0000000100") + bytes(range(256))
    for aid, expected in [(JPKI_AID, "6982"), (VISUAL_AID, "66F1"), (TEXT_AID, "6982")]:
        select(card.transmit, aid)
        assert sw(card.transmit(cryptogram)) == expected
    assert sw(verify(card.transmit, TEXT_PIN, card.profile.pins["text"])) == "9000"
    assert sw(card.transmit(cryptogram)) == "6A80"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"
    card.reset()
    select(card.transmit, TEXT_AID)
    cryptogram_5a = "80AE0000000100" + "5A" * 256
    assert tx(card, cryptogram_5a) == "6982"
    assert sw(verify(card.transmit, TEXT_PIN, card.profile.pins["text"])) == "9000"
    assert tx(card, cryptogram_5a) == "6A80"
    assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"


# -- the text AP --------------------------------------------------------------------------------


class TestTextAp(InTheApplication):
    aid = TEXT_AID

    def test_everything_reads_and_verifies(self, card: TestedCard) -> None:
        """The whole AP as a relying party reads it (national_checks.read_text_ap)."""
        profile = card.profile
        text = read_text_ap(card.transmit, profile.pins["text"])
        holder = profile.holder
        assert text.my_number == profile.my_number
        assert (text.name, text.address) == (holder.name, holder.address)
        assert text.birth_date == holder.birth_date.strftime("%Y%m%d")
        assert text.sex == holder.sex
        assert text.card_key == text_card_key(profile)

    def test_attributes_are_utf8_with_the_measured_layout(self, card: TestedCard) -> None:
        profile = card.profile
        assert sw(verify(card.transmit, TEXT_CODE_B, profile.pins["code_b"])) == "9000"
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

    def test_integrity_record_signed_by_the_certified_key(self, card: TestedCard) -> None:
        profile = card.profile
        assert sw(verify(card.transmit, TEXT_CODE_A, profile.pins["code_a"])) == "9000"
        record = read_ef(card.transmit, 0x0003)
        objects = fields(record, 0xFF30)
        assert record[5:8] == bytes.fromhex("DF3120") and record[40:43] == bytes.fromhex("DF3220")
        assert record[75:80] == bytes.fromhex("DF33820100")
        physical = bytes.fromhex("FF100C") + profile.my_number.encode() + b"\xff\xff"
        assert objects[0xDF31].value == hashlib.sha256(physical).digest()
        certified = municipality_key(read_ef(card.transmit, 0x0004), "text")
        verify_sha256(certified, objects[0xDF33].value, record[5:75])
        with pytest.raises(InvalidSignature):  # the card's own key did not sign it
            verify_sha256(text_card_key(profile), objects[0xDF33].value, record[5:75])

    def test_cv_certificate_chains_to_the_test_root(self, card: TestedCard) -> None:
        profile = card.profile
        certificate = read_ef(card.transmit, 0x0004)
        assert certificate[10:26] == key_id("6000033", "001")
        assert certificate[26:42] == key_id(profile.municipality_code + "31", "000")
        certified = municipality_key(certificate, "text")
        assert profile.text_ap is not None
        assert certified == profile.text_ap.keys.municipality_key.public_key()
        with pytest.raises(InvalidSignature):  # the visual AP's root did not sign it
            verify_sha256(root_public_key("visual"), certificate[-256:], certificate[10:307])

    def test_session_key_and_unknown_files(self, card: TestedCard) -> None:
        profile = card.profile
        assert read_ef(card.transmit, 0x0008) == b"\xff" * 16
        assert sw(verify(card.transmit, TEXT_CODE_B, profile.pins["code_b"])) == "9000"
        session = read_ef(card.transmit, 0x0006)
        assert session[:4] == bytes.fromhex("A1820109")
        assert profile.text_ap is not None
        assert rsa_public_key(read_tlv(session).value) == profile.text_ap.session_public_key

    def test_keys_answer_retry_queries(self, card: TestedCard) -> None:
        for fid in (TEXT_PIN, TEXT_CODE_A, TEXT_CODE_B):
            assert tx(card, f"00A4020C02{fid:04X}") == "9000"
            assert tx(card, "00200080") == "63C3"
            assert tx(card, f"002000{0x80 | fid:02X}") == "63C3"  # by SFI
        assert tx(card, "00A4020C020012") == "9000"
        assert tx(card, "00200080") == "63C0"  # blocked at issuance
        assert tx(card, "0020008004" + b"1234".hex()) == "6984"
        assert tx(card, "00A4020C020013") == "9000"
        assert tx(card, "00200080") == "6986"  # the card key is not a PIN

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
    def test_malformed_verify_costs_nothing(
        self, card: TestedCard, apdu: str, expected: str
    ) -> None:
        assert tx(card, "00A4020C020011") == "9000"
        assert tx(card, apdu) == expected
        assert tx(card, "00A4020C020011") == "9000"
        assert tx(card, "00200080") == "63C3"

    @pytest.mark.parametrize("fid", [TEXT_CODE_A, TEXT_CODE_B, TEXT_BLOCKED])
    def test_derived_and_blocked_keys_cannot_be_changed(self, card: TestedCard, fid: int) -> None:
        if fid != TEXT_BLOCKED:
            assert sw(verify(card.transmit, fid, pin(card.profile, TEXT_AID, fid))) == "9000"
        else:
            assert sw(select_ef(card.transmit, fid)) == "9000"
        assert tx(card, "002401800C" + b"123456789012".hex()) == "6985"
        if fid != TEXT_BLOCKED:  # unchanged: the old value still opens it
            assert sw(verify(card.transmit, fid, pin(card.profile, TEXT_AID, fid))) == "9000"

    def test_card_key_signs_challenges_without_a_credential(self, card: TestedCard) -> None:
        card_key = text_card_key(card.profile)
        challenge, signature = challenge_signature(card.transmit)
        verify_sha256(card_key, signature, challenge)
        # P2 = 80 with EF 0013 selected signs the same (docs/decisions.md #33).
        digest_info = SHA256_DIGEST_INFO + hashlib.sha256(b"challenge").digest()
        command = "802A00{}33" + digest_info.hex() + "00"
        by_default = tx(card, command.format("00"))
        assert tx(card, "00A4020C020013") == "9000"
        assert tx(card, command.format("80")) == by_default
        assert tx(card, command.format("93")) == by_default  # P2 = 80|SFI
        challenge, signature = challenge_signature(card.transmit, p2=0x80)
        verify_sha256(card_key, signature, challenge)
        assert tx(card, "0088009310" + "00" * 16 + "00") == "6985"  # no INTERNAL AUTHENTICATE
        assert tx(card, "00B0000001") == "6981"  # a key is not readable

    def test_jsa_style_sfi_verify_and_extended_read(self, card: TestedCard) -> None:
        """JSA: VERIFY with P2 = 80|SFI, then one READ BINARY with P1 = 80|SFI and Le 65536."""
        profile = card.profile
        assert tx(card, "0020009104" + profile.pins["text"].encode().hex()) == "9000"
        number = read_by_sfi_extended(card.transmit, 0x01)
        assert number == b"\xff\x10\x0c" + profile.my_number.encode() + b"\xff\xff"
        attributes = read_by_sfi_extended(card.transmit, 0x02)
        assert attributes == read_ef(card.transmit, 0x0002)
        assert tx(card, "00B0820000") == attributes.hex().upper() + "9000"  # short Le 256

    def test_read_binary_bounds(self, card: TestedCard) -> None:
        assert tx(card, "00A4020C020005") == "9000"
        whole = read_ef(card.transmit, 0x0005)
        assert tx(card, "00B0010000") == "6B00"  # offset 256 = the end
        assert tx(card, "00B07FFF01") == "6B00"
        assert tx(card, "00B000F020") == whole[0xF0:].hex().upper() + "9000"  # the rest
        assert tx(card, "00B08500FF") == whole[:0xFF].hex().upper() + "9000"
        assert tx(card, "00B085FF10") == whole[0xFF:].hex().upper() + "9000"
        assert tx(card, "00B0A50001") == "6A86"  # P1 = 80|SFI with bits 6-7 set
        assert tx(card, "00B09E0001") == "6A82"  # no EF with SFI 1E

    def test_nothing_can_be_written(self, card: TestedCard) -> None:
        assert sw(verify(card.transmit, TEXT_PIN, card.profile.pins["text"])) == "9000"
        for fid in TEXT_ACCESS:
            before = read_ef(card.transmit, fid)
            assert tx(card, "00D6000001" + "00") == "6982"
            assert tx(card, f"00D6{0x80 | fid:02X}000100") == "6982"
            assert read_ef(card.transmit, fid) == before

    def test_selecting_another_application_ends_the_verified_state(self, card: TestedCard) -> None:
        assert sw(verify(card.transmit, TEXT_PIN, card.profile.pins["text"])) == "9000"
        assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"
        select(card.transmit, VISUAL_AID)
        select(card.transmit, TEXT_AID)
        assert sw(read_ef_first(card.transmit, 0x0001)) == "6982"

    def test_bad_input_gets_precise_status_words(self, card: TestedCard) -> None:
        """One client's mistakes in a row: each gets its own SW, and a correct PIN restores the
        count the wrong values took."""
        send, profile = card.transmit, card.profile
        query = b"\x00\x20\x00\x80"
        assert sw(select_ef(send, TEXT_PIN)) == "9000"
        assert sw(send(query + b"\x11" + b"1" * 17)) == "6700"  # too long: no try used
        assert sw(send(query + b"\x00")) == "6700"
        assert sw(send(query)) == "63C3"
        assert sw(send(query + b"\x05" + b"12345")) == "63C2"  # wrong format: a wrong value
        assert sw(send(query + b"\x04" + b"abcd")) == "63C1"
        assert sw(verify(send, TEXT_PIN, profile.pins["text"])) == "9000"
        assert sw(send(query)) == "63C3"
        assert sw(select_ef(send, TEXT_BLOCKED)) == "9000"
        assert sw(send(query)) == "63C0"
        assert sw(send(query + b"\x04" + b"1234")) == "6984"
        assert sw(verify(send, TEXT_CODE_A, profile.pins["code_a"])) == "9000"
        assert sw(send(b"\x00\x24\x01\x80\x0c" + b"123456789012")) == "6985"  # 照合番号 fixed
        assert sw(select_ef(send, 0x0005)) == "9000"
        whole = read_ef(send, 0x0005)
        assert sw(send(b"\x00\xb0\x01\x00\x10")) == "6B00"  # offset past the end
        assert send(b"\x00\xb0\x00\xf8\x20") == whole[0xF8:] + b"\x90\x00"  # Le past the end
        assert sw(send(b"\x00\xd6\x00\x00\x01\x00")) == "6982"  # no writes
        assert sw(send(b"\x00\xd6\x81\x00\x01\x00")) == "6982"
        assert read_ef(send, 0x0005) == whole
        assert read_by_sfi_extended(send, 0x01)[3:15] == profile.my_number.encode()
        digest_info = SHA256_DIGEST_INFO + bytes(32)
        assert sw(send(b"\x80\x2a\x06\x00\x33" + digest_info + b"\x00")) == "6A86"  # P1 > 05
        assert sw(send(b"\x80\x2a\x00\x00\x00\x00\x33" + digest_info + b"\x00\x00")) == "6700"

    # -- what changes the card's state: a card of its own --

    @pytest.mark.fresh_card
    def test_wrong_values_cost_tries_until_blocked(self, card: TestedCard) -> None:
        profile = card.profile
        right = profile.pins["text"]
        assert sw(verify(card.transmit, TEXT_PIN, "0000" if right != "0000" else "1111")) == "63C2"
        assert sw(verify(card.transmit, TEXT_PIN, "12345")) == "63C1"  # wrong length: a try (#5)
        assert sw(verify(card.transmit, TEXT_PIN, "abcd")) == "63C0"
        assert sw(verify(card.transmit, TEXT_PIN, right)) == "6984"
        assert sw(read_ef_first(card.transmit, 0x0001)) == "6982"
        # 照合番号A still opens the My Number; the JPKI PIN with the same value is untouched.
        assert sw(verify(card.transmit, TEXT_CODE_A, profile.pins["code_a"])) == "9000"
        assert sw(read_ef_first(card.transmit, 0x0001)) == "9000"
        select(card.transmit, JPKI_AID)
        assert tx(card, "00A4020C020018") == "9000"
        assert tx(card, "00200080") == "63C3"

    @pytest.mark.fresh_card
    def test_counters_are_per_application(self, card: TestedCard) -> None:
        assert sw(verify(card.transmit, TEXT_CODE_A, "000000000000")) == "63C2"
        assert sw(verify(card.transmit, TEXT_CODE_B, "00000000000000")) == "63C2"
        select(card.transmit, VISUAL_AID)
        for fid in (0x0012, 0x0013):
            assert tx(card, f"00A4020C02{fid:04X}") == "9000"
            assert tx(card, "00200080") == "63C3"
        select(card.transmit, TEXT_AID)
        assert sw(verify(card.transmit, TEXT_CODE_A, card.profile.pins["code_a"])) == "9000"
        assert tx(card, "00200080") == "63C3"  # a correct value restores the count

    @pytest.mark.fresh_card
    def test_change_reference_data(self, card: TestedCard) -> None:
        old = card.profile.pins["text"]
        new = "5678" if old != "5678" else "8765"
        assert tx(card, "00A4020C020011") == "9000"
        assert tx(card, "0024018004" + new.encode().hex()) == "6982"  # not verified yet
        assert sw(verify(card.transmit, TEXT_PIN, old)) == "9000"
        assert tx(card, "0024018005" + b"12345".hex()) == "6A80"
        assert tx(card, "0024018004" + b"12a4".hex()) == "6A80"
        assert tx(card, "8032008004" + new.encode().hex()) == "6985"  # CHANGE KEY: 住基/共通
        assert tx(card, "0024018004" + new.encode().hex()) == "9000"
        card.reopen()
        select(card.transmit, TEXT_AID)
        assert sw(verify(card.transmit, TEXT_PIN, old)) == "63C2"
        assert sw(verify(card.transmit, TEXT_PIN, new)) == "9000"
        assert sw(read_ef_first(card.transmit, 0x0002)) == "9000"


# -- the visual AP ------------------------------------------------------------------------------


class TestVisualAp(InTheApplication):
    aid = VISUAL_AID

    def test_reads_and_verifies_everything(self, card: TestedCard) -> None:
        """Every record as a relying party reads it: each signed by the certified key, each
        carrying the same card key, which signs a challenge."""
        send, profile = card.transmit, card.profile
        signer = municipality_key(read_ef(send, 0x0004), "visual")
        assert sw(verify(send, VISUAL_BIRTH, profile.pins["birth"])) == "9000"
        age = check_signed_record(read_ef(send, 0x0001), 0xFF10, 0xDF13, signer)
        card_key = rsa_public_key(age[0xDF12].value)
        assert sw(verify(send, VISUAL_CODE_A, profile.pins["code_a"])) == "9000"
        face, face_key = check_card_face(read_ef(send, 0x0002), signer)
        assert face_key == card_key
        assert face.expiry == f"{profile.card_expiry:%Y%m%d}"
        image = check_signed_record(read_ef(send, 0x0005), 0xFF40, 0xDF43, signer)
        assert open_image(image[0xDF41].value, "png").size == (72, 12)
        assert rsa_public_key(image[0xDF42].value) == card_key
        basic = fields(read_ef(send, 0x0003), 0xFF30)
        assert basic[0xDF34].value == profile.municipality_code.encode()
        assert [len(basic[tag].value) for tag in range(0xDF31, 0xDF36)] == [4, 16, 1, 5, 272]
        assert read_ef(send, 0x0006) == b"\xff" * 16
        challenge, signature = challenge_signature(send)
        verify_sha256(card_key, signature, challenge)

    def test_age_record(self, card: TestedCard) -> None:
        profile = card.profile
        key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
        assert profile.pins["birth"] == era_yymmdd(profile.holder.birth_date)
        assert sw(verify(card.transmit, VISUAL_BIRTH, profile.pins["birth"])) == "9000"
        record = read_ef(card.transmit, 0x0001)
        assert len(record) == 547 and record[:5] == bytes.fromhex("FF1082021E")
        objects = check_signed_record(record, 0xFF10, 0xDF13, key)
        assert objects[0xDF11].value == profile.holder.birth_date.strftime("%Y%m%d").encode()
        assert rsa_public_key(objects[0xDF12].value) == visual_card_key(profile)
        with pytest.raises(InvalidSignature):  # signed by the certified key, not the card key
            verify_sha256(visual_card_key(profile), objects[0xDF13].value, record[5:286])

    def test_card_face(self, card: TestedCard) -> None:
        profile = card.profile
        key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
        assert sw(verify(card.transmit, VISUAL_CODE_B, profile.pins["code_b"])) == "9000"
        face_data = read_ef(card.transmit, 0x0002)
        face, carried_key = check_card_face(face_data, key)
        assert carried_key == visual_card_key(profile)
        assert face.birth_date == profile.holder.birth_date.strftime("%Y%m%d")
        assert face.sex == profile.holder.sex
        assert face.expiry == profile.card_expiry.strftime("%Y%m%d")
        images = face.images
        assert images["name"].mode == images["address"].mode == images["security_code"].mode
        assert images["name"].mode == "1"
        assert images["security_code"].size == (24, 12)
        assert images["name"].width == images["address"].width == 336
        assert images["photo"].mode == "L" and images["photo"].size == (120, 150)
        assert face.size < 32767
        assert profile.visual_ap is not None
        objects = fields(face_data, 0xFF20)
        assert objects[0xDF25].value == profile.visual_ap.name_image
        assert objects[0xDF27].value == profile.visual_ap.photo

    def test_card_face_signature_covers_the_three_groups(self, card: TestedCard) -> None:
        """Changing a byte in any signed group breaks DF28; DF29/DF2A are outside it."""
        key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
        assert sw(verify(card.transmit, VISUAL_CODE_A, card.profile.pins["code_a"])) == "9000"
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

    def test_basic_info_and_unknown_file(self, card: TestedCard) -> None:
        profile = card.profile
        info = read_ef(card.transmit, 0x0003)
        objects = fields(info, 0xFF30)
        assert objects[0xDF31].value == bytes.fromhex("06030E01")
        assert objects[0xDF32].value == key_id("6000024", "001")
        assert objects[0xDF33].value == b"\x00"
        assert objects[0xDF34].value == profile.municipality_code.encode()
        assert len(objects[0xDF35].value) == 272
        assert objects[0xDF35].value[:16] == key_id("5900025", "001")
        assert sw(verify(card.transmit, VISUAL_CODE_B, profile.pins["code_b"])) == "9000"
        assert read_ef(card.transmit, 0x0006) == b"\xff" * 16

    def test_cv_certificate_chains_to_the_test_root(self, card: TestedCard) -> None:
        profile = card.profile
        certificate = read_ef(card.transmit, 0x0004)
        assert certificate[10:26] == key_id("6000023", "001")
        assert certificate[26:42] == key_id(profile.municipality_code + "21", "000")
        assert profile.visual_ap is not None
        certified = municipality_key(certificate, "visual")
        assert certified == profile.visual_ap.keys.municipality_key.public_key()
        with pytest.raises(InvalidSignature):
            verify_sha256(root_public_key("text"), certificate[-256:], certificate[10:307])

    def test_my_number_image(self, card: TestedCard) -> None:
        key = municipality_key(read_ef(card.transmit, 0x0004), "visual")
        assert sw(verify(card.transmit, VISUAL_CODE_A, card.profile.pins["code_a"])) == "9000"
        data = read_ef(card.transmit, 0x0005)
        objects = check_signed_record(data, 0xFF40, 0xDF43, key)
        image = open_image(objects[0xDF41].value, "png")
        assert image.size == (72, 12) and image.mode == "1"
        assert rsa_public_key(objects[0xDF42].value) == visual_card_key(card.profile)
        # Twelve digits, left to right: each 6-pixel cell has ink.
        pixels = image.convert("L").load()
        assert pixels is not None
        for cell in range(12):
            ink = [pixels[x, y] for x in range(cell * 6, cell * 6 + 6) for y in range(12)]
            assert 0 in ink

    def test_card_key_signs_challenges_without_a_credential(self, card: TestedCard) -> None:
        challenge, signature = challenge_signature(card.transmit)
        verify_sha256(visual_card_key(card.profile), signature, challenge)
        assert tx(card, "00A4020C02001A") == "9000"
        assert tx(card, "00B0000001") == "6981"
        assert tx(card, "008800" + "9A" + "10" + "00" * 16 + "00") == "6985"

    def test_keys(self, card: TestedCard) -> None:
        profile = card.profile
        for fid in (VISUAL_BIRTH, VISUAL_CODE_B, VISUAL_CODE_A):
            assert tx(card, f"00A4020C02{fid:04X}", "00200080") == "63C3"
        gregorian = profile.holder.birth_date.strftime("%Y%m%d")
        # the Gregorian date is not the key: era YYMMDD is
        assert sw(verify(card.transmit, VISUAL_BIRTH, gregorian)) == "63C2"
        assert sw(verify(card.transmit, VISUAL_BIRTH, profile.pins["birth"])) == "9000"
        for fid in (VISUAL_BIRTH, VISUAL_CODE_B, VISUAL_CODE_A):
            assert sw(verify(card.transmit, fid, pin(profile, VISUAL_AID, fid))) == "9000"
            assert tx(card, "0024018006" + b"123456".hex()) == "6985"
            assert tx(card, "8032008006" + b"123456".hex()) == "6985"

    def test_jsa_style_sfi_verify_and_extended_read(self, card: TestedCard) -> None:
        """JSA reads visual 0002 and 0005 with one extended READ BINARY by SFI each."""
        code_a = card.profile.pins["code_a"].encode()
        assert tx(card, "002000930C" + code_a.hex()) == "9000"
        face = read_by_sfi_extended(card.transmit, 0x02)
        assert len(face) > 256 and face == read_ef(card.transmit, 0x0002)
        image = read_by_sfi_extended(card.transmit, 0x05)
        assert image == read_ef(card.transmit, 0x0005)
        assert tx(card, "00B0820000") == face[:256].hex().upper() + "9000"

    def test_read_binary_bounds(self, card: TestedCard) -> None:
        assert sw(verify(card.transmit, VISUAL_CODE_A, card.profile.pins["code_a"])) == "9000"
        face = read_ef(card.transmit, 0x0002)
        end = len(face)
        assert tx(card, f"00B0{end:04X}01") == "6B00"
        assert tx(card, f"00B0{end - 3:04X}10") == face[-3:].hex().upper() + "9000"
        assert tx(card, f"00B0{end - 3:04X}000100") == face[-3:].hex().upper() + "9000"

    def test_nothing_can_be_written(self, card: TestedCard) -> None:
        assert sw(verify(card.transmit, VISUAL_CODE_A, card.profile.pins["code_a"])) == "9000"
        for fid in (0x0002, 0x0003, 0x0005):
            before = read_ef(card.transmit, fid)
            assert tx(card, "00D6000001" + "00") == "6982"
            assert read_ef(card.transmit, fid) == before


# -- other profiles ------------------------------------------------------------------------------


@pytest.mark.card_profile(CardProfile.of(edits={"filler = 0xFF": "filler = 0x00"}))
def test_filler_quirk(card: TestedCard) -> None:
    """With `filler = 0x00` the unused bytes are 00, and DF31 hashes them as stored."""
    profile = card.profile
    select(card.transmit, TEXT_AID)
    assert sw(verify(card.transmit, TEXT_CODE_A, profile.pins["code_a"])) == "9000"
    number = read_ef(card.transmit, 0x0001)
    assert number == b"\xff\x10\x0c" + profile.my_number.encode() + b"\x00\x00"
    assert read_ef(card.transmit, 0x0005)[164:] == bytes(92)
    assert read_ef(card.transmit, 0x0008) == bytes(16)
    record = fields(read_ef(card.transmit, 0x0003), 0xFF30)
    assert record[0xDF31].value == hashlib.sha256(number).digest()


@pytest.mark.card_profile("face-auth")
def test_face_auth_card(card: TestedCard) -> None:
    """A card issued for face authentication: no JPKI or text PIN, 照合番号 A/B still open."""
    profile, send = card.profile, card.transmit
    select(send, JPKI_AID)
    assert sw(verify(send, 0x0018, profile.pins["auth"])) == "6984"
    assert len(read_ef(send, 0x000A)) == 3808  # free reads still work
    select(send, TEXT_AID)
    assert sw(verify(send, TEXT_PIN, profile.pins["text"])) == "6984"
    assert sw(verify(send, TEXT_CODE_A, profile.pins["code_a"])) == "9000"
    assert read_ef(send, 0x0001)[3:15] == profile.my_number.encode()
    select(send, VISUAL_AID)
    assert sw(verify(send, VISUAL_CODE_B, profile.pins["code_b"])) == "9000"
    signer = municipality_key(read_ef(send, 0x0004), "visual")
    face, _ = check_card_face(read_ef(send, 0x0002), signer)
    assert face.birth_date == f"{profile.holder.birth_date:%Y%m%d}"
