"""Profiles for the 券面 APs: [text_ap]/[visual_ap] sections, card-face images, TLV, variants."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from ber import fields, other_names
from cardtest import read_ef, select, sw
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from national_checks import (
    TEXT_AID,
    VISUAL_AID,
    check_card_face,
    municipality_key,
    read_ef_first,
    read_text_ap,
    verify,
)
from PIL import Image, ImageFont

from mynacard import open_card
from mynacard.personalize import images
from mynacard.personalize.eras import era_of, era_yymmdd
from mynacard.personalize.generate import new_profile
from mynacard.personalize.images import (
    NAME_FONT_SIZE,
    NAME_IMAGE_WIDTH,
    ImageError,
    find_japanese_font,
    missing_glyphs,
    render_text,
)
from mynacard.personalize.profile import PROFILES_DIR, Profile, ProfileError, load_profile
from mynacard.personalize.testca import SAN_BIRTH_DATE
from mynacard.personalize.tlv import encode_length, parse_object, parse_objects, tlv

JPKI_AID = bytes.fromhex("D392F000260100000001")
DEFAULT_TEXT = (PROFILES_DIR / "default.toml").read_text(encoding="utf-8")
NATIONAL_START = DEFAULT_TEXT.index("\n[text_ap]")


# -- TLV -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "octets", "encoded"),
    [
        (0, None, "00"),
        (0x7F, None, "7F"),
        (0x80, None, "8180"),
        (0xFF, None, "81FF"),
        (0x100, None, "820100"),
        (0x9F, 2, "82009F"),  # the measured non-minimal form of text EF 0005
    ],
)
def test_lengths(length: int, octets: int | None, encoded: str) -> None:
    assert encode_length(length, octets).hex().upper() == encoded


def test_objects_round_trip() -> None:
    data = tlv(0xFF20, tlv(0xDF21, b"\x00\x0e") + tlv(0x91, bytes(300))) + b"\xff\xff"
    outer = parse_object(data)
    assert (outer.tag, outer.header_size, outer.size) == (0xFF20, 5, len(data) - 2)
    inner = parse_objects(data, outer.header_size, outer.size)
    assert [(obj.tag, obj.offset, len(obj.value)) for obj in inner] == [
        (0xDF21, 5, 2),
        (0x91, 10, 300),
    ]
    assert parse_objects(data, outer.size) == []  # FF filler ends the objects
    # the tests' own reader (ber.py) reads what tlv() wrote the same way
    assert {tag: obj.value for tag, obj in fields(data, 0xFF20).items()} == {
        obj.tag: obj.value for obj in inner
    }
    for broken in (b"\xff", b"\xff\x20", b"\xdf\x21\x05\x00", b"\x91\x85\x00", b"\x91\x80"):
        with pytest.raises(ValueError):
            parse_object(broken)


# -- images ----------------------------------------------------------------------------------


def test_font_draws_japanese_and_missing_glyphs_are_found() -> None:
    font = ImageFont.truetype(str(find_japanese_font()), NAME_FONT_SIZE)
    assert missing_glyphs(font, "吉田　陽斗東京都千代田区霞が関１丁目２番３号ＡＢＣ") == []
    assert missing_glyphs(font, "田\U0010fffe") == ["\U0010fffe"]


@pytest.mark.parametrize("name", ["default", "foreign-resident"])
def test_shipped_images_are_what_the_font_draws(name: str) -> None:
    """The name image is the holder's name rendered with the Japanese font, not boxes."""
    profile = load_profile(name)
    assert profile.visual_ap is not None
    image_data = profile.visual_ap.name_image
    font = find_japanese_font()
    assert image_data == render_text(profile.holder.name, font, NAME_FONT_SIZE, NAME_IMAGE_WIDTH)
    with Image.open(io.BytesIO(image_data)) as image:
        assert image.format == "PNG" and image.mode == "1"
        assert image.convert("L").histogram()[0] > 50  # ink
    with pytest.raises(ImageError, match="no glyph"):  # it never draws missing-glyph boxes
        render_text(profile.holder.name + "\U0010fffe", font, NAME_FONT_SIZE, NAME_IMAGE_WIDTH)


def test_font_search_falls_back_to_fontconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "FONT_CANDIDATES", (Path("/nonexistent.ttf"),))
    fallback = find_japanese_font()  # what fc-match picks for :lang=ja
    assert missing_glyphs(ImageFont.truetype(str(fallback), 24), "氏名東京都") == []
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(ImageError, match="fonts-ipaexfont-gothic"):
        find_japanese_font()


def test_a_name_the_font_cannot_draw_is_refused(tmp_path: Path) -> None:
    """𠮷 (U+20BB7, a 外字 on real cards) is not in IPAex: no profile rather than a box."""
    path = tmp_path / "gaiji.toml"
    with pytest.raises(ProfileError, match=r"card-face images: .* has no glyph for '𠮷'"):
        new_profile(path, seed=3, holder_name="\U00020bb7田\u3000花子")
    assert not path.exists()


def test_long_names_shrink_to_two_lines() -> None:
    profile = load_profile("foreign-resident")
    assert len(profile.holder.name) > 30
    assert profile.visual_ap is not None
    with Image.open(io.BytesIO(profile.visual_ap.name_image)) as image:
        assert image.width == NAME_IMAGE_WIDTH
        assert image.height < 2 * (NAME_FONT_SIZE + 4) + 1


# -- profile sections ------------------------------------------------------------------------


def _replace_field(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key` of [section] set to the TOML `value`."""
    start = text.index(f"\n[{section}]")
    pattern = re.compile(rf"^{key} = ('''.*?'''|\"[^\n]*\")$", re.M | re.S)
    match = pattern.search(text, start)
    assert match is not None
    return text[: match.start()] + f"{key} = {value}" + text[match.end() :]


def _field(section: str, key: str) -> str:
    value = tomllib.loads(DEFAULT_TEXT)[section][key]
    assert isinstance(value, str)
    return value


def _b64(data: bytes) -> str:
    return "'''\n" + base64.b64encode(data).decode() + "\n'''"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    return path


_CVC = base64.b64decode("".join(_field("text_ap", "cv_certificate").split()))
_PHOTO = base64.b64decode("".join(_field("visual_ap", "photo").split()))


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("text_ap", "card_key", '"x"', "text_ap.card_key: expected an unencrypted RSA-2048"),
        ("text_ap", "cv_certificate", "'''@@@'''", "text_ap.cv_certificate: expected base64 ("),
        ("text_ap", "cv_certificate", _b64(_CVC[:-1]), "text_ap.cv_certificate: expected a CV"),
        (
            "text_ap",
            "cv_certificate",
            _b64(_CVC[:-1] + bytes((_CVC[-1] ^ 1,))),
            "text_ap.cv_certificate: expected a CV certificate whose signature verifies",
        ),
        (
            "visual_ap",
            "cv_certificate",
            "'''\n" + _field("text_ap", "cv_certificate") + "'''",
            "visual_ap.cv_certificate: expected a CV certificate issued by the test root",
        ),
        (
            "text_ap",
            "municipality_key",
            "'''\n" + _field("visual_ap", "municipality_key") + "'''",
            "text_ap.cv_certificate: expected a CV certificate of municipality_key",
        ),
        (
            "text_ap",
            "municipality_key",
            "'''\n" + _field("text_ap", "card_key") + "'''",
            "text_ap.municipality_key: expected a key other than card_key",
        ),
        (
            "text_ap",
            "session_key",
            '"-----BEGIN"',
            "text_ap.session_key: expected an unencrypted RSA-2048 PEM private key",
        ),
        ("visual_ap", "photo", _b64(b"\x89PNG\r\n\x1a\n"), "visual_ap.photo: expected a JP2 image"),
        (
            "visual_ap",
            "photo",
            _b64(_PHOTO[:12] + bytes(100)),
            "visual_ap.photo: expected a JP2 image of at most 16384 bytes, got a damaged JP2 file",
        ),
        (
            "visual_ap",
            "name_image",
            _b64(_PHOTO),
            "visual_ap.name_image: expected a PNG image of at most 4096 bytes, got a file",
        ),
        (
            "visual_ap",
            "photo",
            _b64(_PHOTO + bytes(16384)),
            "visual_ap.photo: expected a JP2 image of at most 16384 bytes, got ",
        ),
        ("visual_ap", "address_image", "1", "visual_ap.address_image: expected base64, got 1"),
    ],
)
def test_bad_sections_name_the_field(
    tmp_path: Path, section: str, key: str, value: str, fragment: str
) -> None:
    path = _write(tmp_path, _replace_field(DEFAULT_TEXT, section, key, value))
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert f"{path}: {fragment}" in str(error.value)


def test_missing_and_unknown_fields(tmp_path: Path) -> None:
    text = DEFAULT_TEXT.replace("\n[visual_ap]\n", "\n[visual_ap]\nkana_image = 'x'\n")
    with pytest.raises(ProfileError, match=r"visual_ap\.kana_image: expected one of the fields"):
        load_profile(_write(tmp_path, text))
    without = DEFAULT_TEXT[:NATIONAL_START] + DEFAULT_TEXT[DEFAULT_TEXT.index("\n[visual_ap]") :]
    with pytest.raises(ProfileError, match=r"text_ap: expected a table, got nothing"):
        load_profile(_write(tmp_path, without))


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_corrupt_sections_are_profile_errors(tmp_path: Path, data: st.DataObject) -> None:
    """A damaged [text_ap]/[visual_ap] never escapes as another exception."""
    raw = DEFAULT_TEXT.encode("utf-8")
    start = data.draw(st.integers(len(DEFAULT_TEXT[:NATIONAL_START].encode()), len(raw) - 1))
    length = data.draw(st.integers(0, 12))
    filling = data.draw(st.binary(max_size=4))
    path = tmp_path / "fuzzed.toml"
    path.write_bytes(raw[:start] + filling + raw[start + length :])
    with contextlib.suppress(ProfileError):
        load_profile(path)


def test_unseeded_profile_has_fresh_keys_under_the_same_roots(tmp_path: Path) -> None:
    path = new_profile(tmp_path / "random.toml")
    fresh, default = load_profile(path), load_profile("default")
    assert fresh.text_ap is not None and default.text_ap is not None
    assert fresh.text_ap.keys.card_key.public_key() != default.text_ap.keys.card_key.public_key()
    with open_card(fresh, tmp_path / "state") as card:
        text = read_text_ap(card.transmit, fresh.pins["text"])
        assert text.my_number == fresh.my_number
        select(card.transmit, VISUAL_AID)
        signer = municipality_key(read_ef(card.transmit, 0x0004), "visual")
        assert sw(verify(card.transmit, 0x0013, fresh.pins["code_a"])) == "9000"
        check_card_face(read_ef(card.transmit, 0x0002), signer)


# -- shipped variants ------------------------------------------------------------------------


def test_face_auth_card(tmp_path: Path) -> None:
    """顔認証マイナンバーカード: PIN-protected functions are blocked, the rest works."""
    profile = load_profile("face-auth")
    assert profile.variant == "face-auth" and not profile.has_sign_cert
    assert {name: profile.counters[name] for name in ("auth", "text", "juki", "common")} == {
        "auth": 0,
        "text": 0,
        "juki": 0,
        "common": 0,
    }
    with open_card(profile, tmp_path) as card:
        send = card.transmit
        select(send, JPKI_AID)
        assert sw(verify(send, 0x0018, profile.pins["auth"])) == "6984"
        assert sw(read_ef_first(send, 0x000A)) == "9000"  # the auth certificate is free
        assert sw(send(bytes.fromhex("00A4020C02001B"))) == "6A82"  # no signature password
        select(send, TEXT_AID)
        assert sw(verify(send, 0x0011, profile.pins["text"])) == "6984"
        assert sw(read_ef_first(send, 0x0005)) == "9000"
        assert sw(verify(send, 0x0014, profile.pins["code_a"])) == "9000"
        assert sw(read_ef_first(send, 0x0001)) == "9000"
        assert sw(read_ef_first(send, 0x0002)) == "6982"
        assert sw(verify(send, 0x0015, profile.pins["code_b"])) == "9000"
        assert sw(read_ef_first(send, 0x0002)) == "9000"
        select(send, VISUAL_AID)
        assert sw(verify(send, 0x0011, profile.pins["birth"])) == "9000"
        assert sw(verify(send, 0x0012, profile.pins["code_b"])) == "9000"
        assert sw(read_ef_first(send, 0x0002)) == "9000"


@pytest.mark.parametrize("name", ["library-card", "face-auth", "heisei-born"])
def test_made_up_holders_have_four_different_pins(name: str) -> None:
    pins = load_profile(name).pins
    assert len({pins["auth"], pins["text"], pins["juki"], pins["common"]}) == 4


def test_unified_pin_card_keeps_separate_counters(tmp_path: Path) -> None:
    profile = load_profile("unified-pin")
    pin = profile.pins["auth"]
    assert re.fullmatch(r"[0-9]{4}", pin)
    assert profile.pins["text"] == profile.pins["juki"] == profile.pins["common"] == pin
    assert pin != "1234"
    with open_card(profile, tmp_path) as card:
        send = card.transmit
        select(send, TEXT_AID)
        assert sw(verify(send, 0x0011, "0000" if pin != "0000" else "1111")) == "63C2"
        select(send, JPKI_AID)
        assert sw(verify(send, 0x0018, pin)) == "9000"  # the same value, its own counter
        assert sw(send(b"\x00\x20\x00\x80")) == "63C3"
        select(send, TEXT_AID)
        assert sw(verify(send, 0x0011, pin)) == "9000"


def test_foreign_resident_long_name(tmp_path: Path) -> None:
    profile = load_profile("foreign-resident")
    family, _, given = profile.holder.name.partition("\u3000")
    assert family.isupper() and "\u3000" in given and len(profile.holder.name) > 30
    assert all("Ａ" <= char <= "Ｚ" or char == "\u3000" for char in profile.holder.name)
    with open_card(profile, tmp_path) as card:
        text = read_text_ap(card.transmit, profile.pins["text"])
        assert text.name == profile.holder.name
        select(card.transmit, TEXT_AID)
        assert sw(verify(card.transmit, 0x0015, profile.pins["code_b"])) == "9000"
        attributes = read_ef(card.transmit, 0x0002)
        assert attributes[:3] == b"\xff\x20\x81"  # more than 127 bytes: long length form


@pytest.mark.parametrize(("name", "era"), [("reiwa-born", "令和"), ("heisei-born", "平成")])
def test_holders_born_in_recent_eras(tmp_path: Path, name: str, era: str) -> None:
    profile = load_profile(name)
    birth = profile.holder.birth_date
    era_found, year = era_of(birth)
    assert era_found.name == era
    code_b = profile.pins["code_b"]
    assert code_b == f"{year:02d}{birth:%m%d}{profile.card_expiry.year}{profile.security_code}"
    assert profile.pins["birth"] == era_yymmdd(birth) == code_b[:6]
    with open_card(profile, tmp_path) as card:
        select(card.transmit, VISUAL_AID)
        assert sw(verify(card.transmit, 0x0011, code_b[:6])) == "9000"
        assert read_ef(card.transmit, 0x0001)[8:16] == f"{birth:%Y%m%d}".encode()
        select(card.transmit, TEXT_AID)
        assert sw(verify(card.transmit, 0x0015, code_b)) == "9000"
        assert sw(read_ef_first(card.transmit, 0x0002)) == "9000"
    _check_sign_cert_era(profile, era_found.code)


def _check_sign_cert_era(profile: Profile, code: int) -> None:
    if profile.jpki is None or profile.jpki.sign_cert is None:
        assert profile.variant == "reiwa-born"  # a child: no signature certificate
        return
    names = dict(other_names(x509.load_der_x509_certificate(profile.jpki.sign_cert)))
    assert names[SAN_BIRTH_DATE] == f"{code}{profile.holder.birth_date:%Y%m%d}"


def test_status_and_reset_pin_name_the_national_keys(tmp_path: Path) -> None:
    """`mynacard status` lists the 券面 AP keys by name; `reset-pin` restores one."""
    profile = load_profile("default")
    state = tmp_path / "state"
    with open_card(profile, state) as card:
        select(card.transmit, VISUAL_AID)
        assert sw(verify(card.transmit, 0x0013, "000000000000")) == "63C2"

    def status() -> dict[str, tuple[int, int]]:
        result = subprocess.run(
            [sys.executable, "-m", "mynacard", "status", "--state", str(state), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return {
            row["name"]: (row["remaining"], row["max_tries"]) for row in json.loads(result.stdout)
        }

    shown = status()
    assert {
        name: shown[name]
        for name in (
            "text",
            "text.blocked",
            "text.code_a",
            "text.code_b",
            "visual.birth",
            "visual.code_b",
            "visual.code_a",
        )
    } == {
        "text": (3, 3),
        "text.blocked": (0, 0),
        "text.code_a": (3, 3),
        "text.code_b": (3, 3),
        "visual.birth": (3, 3),
        "visual.code_b": (3, 3),
        "visual.code_a": (2, 3),
    }
    reset = subprocess.run(
        [sys.executable, "-m", "mynacard", "reset-pin", "--state", str(state), "visual.code_a"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert reset.returncode == 0, reset.stderr
    assert status()["visual.code_a"] == (3, 3)
