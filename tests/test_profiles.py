"""Profiles: loading, validation, derived PINs and the JSON view."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tomllib
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mynacard.personalize.eras import era_coded_date, era_of, era_yymmdd
from mynacard.personalize.mynumber import my_number_check_digit
from mynacard.personalize.profile import (
    KNOWN_ATRS,
    PIN_MAX_TRIES,
    PIN_NAMES,
    PROFILES_DIR,
    ProfileError,
    atr_problem,
    derived_pins,
    load_profile,
    parse_profile,
    profile_as_json,
    shipped_profile_names,
)

SHIPPED = ("default", "no-sign-cert", "sign-blocked")
SIMPLE_PINS = {"auth": "1234", "sign": "ABC123", "text": "1234", "juki": "1234", "common": "1234"}
DEFAULT_TEXT = (PROFILES_DIR / "default.toml").read_text(encoding="utf-8")


def test_shipped_profiles_are_listed() -> None:
    assert set(SHIPPED) <= set(shipped_profile_names())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    path = PROFILES_DIR / f"{name}.toml"
    assert profile.name == name
    assert profile.path == path
    assert profile.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert profile.variant == ("standard" if name == "default" else name)
    assert profile.atr == bytes.fromhex("3BE000FF8131FE4514")
    assert set(profile.pins) == set(PIN_NAMES)
    assert set(profile.counters) == set(PIN_NAMES)
    assert {name: profile.pins[name] for name in SIMPLE_PINS} == SIMPLE_PINS
    assert "\u3000" in profile.holder.name
    assert re.search("[０-９]", profile.holder.address)
    assert not re.search("[0-9]", profile.holder.address)
    assert my_number_check_digit(profile.my_number[:11]) == int(profile.my_number[11])
    assert re.fullmatch(r"\d{11}", profile.resident_code)
    assert profile.jpki is not None


def test_load_by_path_matches_load_by_name() -> None:
    by_name = profile_as_json(load_profile("default"))
    assert profile_as_json(load_profile(PROFILES_DIR / "default.toml")) == by_name
    assert profile_as_json(load_profile(str(PROFILES_DIR / "default.toml"))) == by_name


def test_default_profile_has_everything() -> None:
    profile = load_profile("default")
    assert profile.has_sign_cert
    assert profile.counters == PIN_MAX_TRIES
    assert profile.holder.birth_date.year < 2005  # an adult


def test_no_sign_cert_profile() -> None:
    profile = load_profile("no-sign-cert")
    assert profile.jpki is not None
    assert not profile.has_sign_cert
    assert profile.jpki.sign_key is None and profile.jpki.sign_cert is None
    assert profile.jpki.sign_ca_cert
    # 14 at issue: the card runs to the 5th birthday after issue, so 19 at expiry.
    birth = profile.holder.birth_date
    assert (profile.card_expiry.year - birth.year, profile.card_expiry.month) == (19, birth.month)


def test_sign_blocked_profile() -> None:
    profile = load_profile("sign-blocked")
    assert profile.has_sign_cert
    assert profile.counters == PIN_MAX_TRIES | {"sign": 0}


def test_unknown_shipped_name() -> None:
    with pytest.raises(ProfileError, match=r"no shipped profile named 'nope' \(shipped: .*default"):
        load_profile("nope")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("day", "yymmdd", "coded"),
    [
        (date(1868, 1, 25), "010125", "118680125"),  # 明治元年
        (date(1912, 7, 29), "450729", "119120729"),  # 明治45
        (date(1912, 7, 30), "010730", "219120730"),  # 大正元年
        (date(1926, 12, 24), "151224", "219261224"),  # 大正15
        (date(1926, 12, 25), "011225", "319261225"),  # 昭和元年
        (date(1980, 2, 17), "550217", "319800217"),  # the JPKI test card
        (date(1989, 1, 7), "640107", "319890107"),  # 昭和64, its last day
        (date(1989, 1, 8), "010108", "419890108"),  # 平成元年
        (date(2019, 4, 30), "310430", "420190430"),  # 平成31, its last day
        (date(2019, 5, 1), "010501", "520190501"),  # 令和元年
        (date(2020, 2, 24), "020224", "520200224"),  # NFCPY's example
    ],
)
def test_era_dates(day: date, yymmdd: str, coded: str) -> None:
    assert era_yymmdd(day) == yymmdd
    assert era_coded_date(day) == coded


def test_era_names() -> None:
    assert era_of(date(1989, 1, 7))[0].name == "昭和"
    assert era_of(date(1989, 1, 8))[0].name == "平成"
    assert era_of(date(2019, 5, 1)) == (era_of(date(2030, 1, 1))[0], 1)


def test_no_era_before_meiji() -> None:
    with pytest.raises(ValueError, match="before 1868-01-25"):
        era_yymmdd(date(1868, 1, 24))


def test_derived_pins_of_the_test_card() -> None:
    pins = derived_pins("537686677188", date(1980, 2, 17), date(2035, 2, 17), "2285")
    assert pins == {"code_a": "537686677188", "code_b": "55021720352285", "birth": "550217"}


def test_derived_pins_across_the_heisei_boundary() -> None:
    assert derived_pins("537686677188", date(1989, 1, 7), date(2030, 1, 7), "0001")["code_b"] == (
        "64010720300001"
    )
    assert derived_pins("537686677188", date(1989, 1, 8), date(2030, 1, 8), "0001")["code_b"] == (
        "01010820300001"
    )


def test_profile_pins_include_derived_ones() -> None:
    profile = load_profile("default")
    expected = derived_pins(
        profile.my_number, profile.holder.birth_date, profile.card_expiry, profile.security_code
    )
    assert {name: profile.pins[name] for name in expected} == expected


def test_my_number_check_digit() -> None:
    assert my_number_check_digit("53768667718") == 8
    with pytest.raises(ValueError):
        my_number_check_digit("5376866771")


@pytest.mark.parametrize("wrong", [d for d in "0123456789" if d != "8"])
def test_wrong_check_digit_is_rejected(tmp_path: Path, wrong: str) -> None:
    path = _write(tmp_path, _set(DEFAULT_TEXT, "card", "my_number", f'"53768667718{wrong}"'))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value) == f"{path}: card.my_number: expected check digit 8, got {wrong}"


def test_shipped_label_in_messages(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"^x\.toml: invalid TOML"):
        parse_profile(b"[profile\n", path=tmp_path / "x.toml", label="x.toml")


def _keys() -> dict[str, str]:
    keys: dict[str, str] = tomllib.loads(DEFAULT_TEXT)["keys"]
    return keys


def _swap_pem(key: str, other: str) -> str:
    keys = _keys()
    return DEFAULT_TEXT.replace(keys[key], keys[other])


def _section_header(section: str) -> str:
    return f"\n[{section}]\n"


def _set(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key` in `[section]` set to the TOML `value` (added if absent)."""
    start = text.index(_section_header(section)) + len(_section_header(section))
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end
    body = text[start:end]
    line = re.compile(rf"^{re.escape(key)} = .*$", re.MULTILINE)
    new_body = (
        line.sub(lambda _: f"{key} = {value}", body, count=1)
        if line.search(body)
        else (f"{key} = {value}\n{body}")
    )
    return text[:start] + new_body + text[end:]


def _drop(text: str, section: str, key: str) -> str:
    """`text` without `key` (a single-line value) in `[section]`."""
    start = text.index(_section_header(section))
    end = text.find("\n[", start + 1)
    body = re.sub(rf"^{re.escape(key)} = .*\n", "", text[start:end], count=1, flags=re.MULTILINE)
    return text[:start] + body + text[end:]


def _drop_section(text: str, section: str) -> str:
    start = text.index(_section_header(section))
    return text[:start] + text[text.index("\n[", start + 1) :]


def _drop_pem(text: str, key: str) -> str:
    return text.replace(f"{key} = '''\n{_keys()[key]}'''\n", "")


CORRUPTIONS: list[tuple[str, str, str]] = [
    # (id, corrupted text, expected message fragment)
    ("toml", DEFAULT_TEXT.replace("[card]", "[card"), "invalid TOML"),
    ("section-unknown", DEFAULT_TEXT + "\n[extra]\nx = 1\n",
     "extra: expected one of the fields profile, holder, card"),
    ("section-renamed", DEFAULT_TEXT.replace("[card]", "[kard]"),
     "kard: expected one of the fields profile, holder, card"),
    ("section-missing", _drop_section(DEFAULT_TEXT, "card"), "card: expected a table, got nothing"),
    ("section-type", "holder = 1\n" + _drop_section(DEFAULT_TEXT, "holder"),
     "holder: expected a table, got 1"),
    ("profile-name", _set(DEFAULT_TEXT, "profile", "name", '"a b"'), "profile.name"),
    ("profile-name-missing", _drop(DEFAULT_TEXT, "profile", "name"),
     "profile.name: expected a name of letters, digits, '.', '_' and '-', got nothing"),
    ("atr-hex", _set(DEFAULT_TEXT, "profile", "atr", '"3BZZ"'),
     "profile.atr: expected hex bytes or one of jpki, jpki-02"),
    ("atr-tck", _set(DEFAULT_TEXT, "profile", "atr", '"3BE000FF8131FE4515"'),
     "profile.atr: expected a well-formed ATR (TCK"),
    ("atr-ts", _set(DEFAULT_TEXT, "profile", "atr", '"3AE000FF8131FE4514"'), "profile.atr"),
    ("atr-short", _set(DEFAULT_TEXT, "profile", "atr", '"3BE000FF8131FE45"'), "profile.atr"),
    ("variant", _set(DEFAULT_TEXT, "profile", "variant", '""'), "profile.variant"),
    ("holder-name-space", _set(DEFAULT_TEXT, "holder", "name", '"山田 太郎"'), "holder.name"),
    ("holder-name-type", _set(DEFAULT_TEXT, "holder", "name", "1"),
     "holder.name: expected a string, got 1"),
    ("holder-address-digits", _set(DEFAULT_TEXT, "holder", "address", '"東京都千代田区1"'),
     "holder.address: expected full-width digits (０-９) as on the card, got '1'"),
    ("holder-address-control", _set(DEFAULT_TEXT, "holder", "address", '"東京都\\n千代田区"'),
     "holder.address"),
    ("birth-type", _set(DEFAULT_TEXT, "holder", "birth_date", '"1980-02-17"'),
     "holder.birth_date: expected a date (YYYY-MM-DD), got '1980-02-17'"),
    ("birth-datetime", _set(DEFAULT_TEXT, "holder", "birth_date", "1980-02-17T00:00:00"),
     "holder.birth_date: expected a date (YYYY-MM-DD), got 1980-02-17T00:00:00"),
    ("birth-early", _set(DEFAULT_TEXT, "holder", "birth_date", "1800-01-01"), "holder.birth_date"),
    ("birth-future", _set(DEFAULT_TEXT, "holder", "birth_date", "2999-01-01"), "holder.birth_date"),
    ("sex-value", _set(DEFAULT_TEXT, "holder", "sex", '"4"'), "holder.sex"),
    ("sex-int", _set(DEFAULT_TEXT, "holder", "sex", "1"), "holder.sex"),
    ("holder-unknown", _set(DEFAULT_TEXT, "holder", "kana", '"ヤマダ"'),
     "holder.kana: expected one of the fields name, address, birth_date, sex"),
    ("my-number-short", _set(DEFAULT_TEXT, "card", "my_number", '"53768667718"'), "card.my_number"),
    ("my-number-int", _set(DEFAULT_TEXT, "card", "my_number", "537686677188"),
     "card.my_number: expected a string of 12 digits 0-9, got 537686677188"),
    ("my-number-wide", _set(DEFAULT_TEXT, "card", "my_number", '"５３７６８６６７７１８８"'),
     "card.my_number"),
    ("expiry-missing", _drop(DEFAULT_TEXT, "card", "expiry"),
     "card.expiry: expected a date (YYYY-MM-DD), got nothing"),
    ("expiry-early", _set(DEFAULT_TEXT, "card", "expiry", "1900-01-01"), "card.expiry"),
    ("security-code", _set(DEFAULT_TEXT, "card", "security_code", '"12a4"'), "card.security_code"),
    ("resident-code", _set(DEFAULT_TEXT, "card", "resident_code", '"123"'), "card.resident_code"),
    ("pin-auth-long", _set(DEFAULT_TEXT, "pins", "auth", '"12345"'), "pins.auth"),
    ("pin-text", _set(DEFAULT_TEXT, "pins", "text", '"abcd"'), "pins.text"),
    ("pin-juki-missing", _drop(DEFAULT_TEXT, "pins", "juki"),
     "pins.juki: expected a string of 4 digits 0-9, got nothing"),
    ("pin-common", _set(DEFAULT_TEXT, "pins", "common", "1234"), "pins.common"),
    ("pin-sign-lower", _set(DEFAULT_TEXT, "pins", "sign", '"abc123"'),
     "pins.sign: expected a string of 6-16 characters A-Z 0-9, got 'abc123'"),
    ("pin-sign-short", _set(DEFAULT_TEXT, "pins", "sign", '"ABC12"'), "pins.sign"),
    ("pin-sign-long", _set(DEFAULT_TEXT, "pins", "sign", '"ABCDEFGHIJ1234567"'), "pins.sign"),
    ("pin-derived", _set(DEFAULT_TEXT, "pins", "code_a", '"537686677188"'),
     "pins.code_a: expected no value (it is derived"),
    ("counter-high", _set(DEFAULT_TEXT, "counters", "sign", "6"), "counters.sign"),
    ("counter-negative", _set(DEFAULT_TEXT, "counters", "auth", "-1"), "counters.auth"),
    ("counter-bool", _set(DEFAULT_TEXT, "counters", "code_b", "true"), "counters.code_b"),
    ("counter-unknown", _set(DEFAULT_TEXT, "counters", "puk", "3"),
     "counters.puk: expected one of the fields auth, sign"),
    ("blocked-sw", _set(DEFAULT_TEXT, "quirks", "blocked_sw", "0x6982"), "quirks.blocked_sw"),
    ("filler", _set(DEFAULT_TEXT, "quirks", "filler", "0x20"), "quirks.filler"),
    ("verified-sw", _set(DEFAULT_TEXT, "quirks", "verified_query_sw", "0x63C3"),
     "quirks.verified_query_sw"),
    ("extended-type", _set(DEFAULT_TEXT, "quirks", "extended_length", '"yes"'),
     "quirks.extended_length: expected true or false, got 'yes'"),
    ("quirk-unknown", _set(DEFAULT_TEXT, "quirks", "speed", "1"),
     "quirks.speed: expected one of the fields blocked_sw"),
    ("auth-false", _set(DEFAULT_TEXT, "certificates", "auth", "false"), "certificates.auth"),
    ("sign-type", _set(DEFAULT_TEXT, "certificates", "sign", '"yes"'), "certificates.sign"),
    ("sign-false-with-keys", _set(DEFAULT_TEXT, "certificates", "sign", "false"),
     "keys.sign_key: expected no value when certificates.sign = false"),
    ("sign-key-missing", _drop_pem(DEFAULT_TEXT, "sign_key"),
     "keys.sign_key: expected an unencrypted RSA-2048 PEM private key, got nothing"),
    ("sign-cert-missing", _drop_pem(DEFAULT_TEXT, "sign_cert"),
     "keys.sign_cert: expected a PEM certificate, got nothing"),
    ("ca-missing", _drop_pem(DEFAULT_TEXT, "auth_ca_cert"),
     "keys.auth_ca_cert: expected a PEM certificate, got nothing"),
    ("test-only", _set(DEFAULT_TEXT, "keys", "test_only", "false"), "keys.test_only"),
    ("key-mismatch", _swap_pem("auth_key", "sign_key"),
     "keys.auth_key: expected the private key of keys.auth_cert"),
    ("wrong-ca", _swap_pem("auth_ca_cert", "sign_ca_cert"),
     "keys.auth_cert: expected a certificate issued by keys.auth_ca_cert"),
    ("cert-garbage", DEFAULT_TEXT.replace(_keys()["auth_cert"][40:80], "A" * 40),
     "keys.auth_cert: expected a PEM certificate ("),
    ("key-garbage", DEFAULT_TEXT.replace(_keys()["sign_key"][40:80], "A" * 40),
     "keys.sign_key: expected an unencrypted RSA-2048 PEM private key ("),
    ("cert-is-key", _swap_pem("auth_cert", "auth_key"), "keys.auth_cert"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"), [case[1:] for case in CORRUPTIONS], ids=[case[0] for case in CORRUPTIONS]
)
def test_malformed_profile_names_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    assert text != DEFAULT_TEXT
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(DEFAULT_TEXT.encode("utf-8").replace(b"[holder]", b"#\xe9\n[holder]"))
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(path)


def test_optional_fields_take_defaults(tmp_path: Path) -> None:
    text = DEFAULT_TEXT
    for key in ("description", "atr", "variant"):
        text = _drop(text, "profile", key)
    start = text.index("\n[quirks]\n")
    text = text[:start] + text[text.index("\n[keys]\n") :]
    profile = load_profile(_write(tmp_path, text))
    assert (profile.description, profile.variant) == ("", "standard")
    assert profile.atr == KNOWN_ATRS["jpki"]
    assert profile.quirks == load_profile("default").quirks


def test_quirk_switches(tmp_path: Path) -> None:
    text = DEFAULT_TEXT
    for key, value in [
        ("blocked_sw", "0x6983"),
        ("reselect_clears_state", "true"),
        ("verified_query_sw", "0x9000"),
        ("filler", "0x00"),
        ("extended_length", "false"),
        ("t0_chaining", "true"),
        ("sm_break_blocks_plain", "true"),
    ]:
        text = _set(text, "quirks", key, value)
    text = _set(text, "profile", "atr", '"JPKI-06"')
    profile = load_profile(_write(tmp_path, text))
    quirks = profile.quirks
    assert (quirks.blocked_sw, quirks.verified_query_sw, quirks.filler) == (0x6983, 0x9000, 0)
    assert quirks.reselect_clears_state and quirks.t0_chaining and not quirks.extended_length
    assert profile.atr == KNOWN_ATRS["jpki-06"]
    assert profile_as_json(profile)["quirks"] == {
        "blocked_sw": "6983",
        "reselect_clears_state": True,
        "verified_query_sw": "9000",
        "filler": "00",
        "extended_length": False,
        "t0_chaining": True,
        "sm_break_blocks_plain": True,
    }


@pytest.mark.parametrize("name", sorted(KNOWN_ATRS))
def test_known_atrs_are_well_formed(name: str) -> None:
    assert atr_problem(KNOWN_ATRS[name]) is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_corruption_is_a_profile_error(tmp_path: Path, data: st.DataObject) -> None:
    """Deleting or replacing a stretch of a valid file never escapes as another exception."""
    raw = DEFAULT_TEXT.encode("utf-8")
    start = data.draw(st.integers(0, len(raw) - 1))
    length = data.draw(st.integers(0, 12))
    filling = data.draw(st.binary(max_size=4))
    path = tmp_path / "fuzzed.toml"
    path.write_bytes(raw[:start] + filling + raw[start + length :])
    with contextlib.suppress(ProfileError):
        load_profile(path)


def test_json_view_round_trips_with_japanese_text() -> None:
    profile = load_profile("default")
    view = profile_as_json(profile)
    dumped = json.dumps(view, ensure_ascii=False)
    assert profile.holder.name in dumped and profile.holder.address in dumped
    assert "\\u" not in dumped
    assert "PRIVATE KEY" not in dumped
    assert json.loads(dumped) == view
    assert view["holder"] == {
        "name": profile.holder.name,
        "address": profile.holder.address,
        "birth_date": profile.holder.birth_date.isoformat(),
        "sex": profile.holder.sex,
    }
    assert view["atr"] == "3BE000FF8131FE4514"
    assert view["my_number"] == profile.my_number
    assert view["card"] == {
        "expiry": profile.card_expiry.isoformat(),
        "security_code": profile.security_code,
        "resident_code": profile.resident_code,
        "serial_number": profile.card_serial,
        "municipality_code": profile.municipality_code,
    }
    assert view["certificates"] == {"sign": True, "auth": True}
    pins = view["pins"]
    assert isinstance(pins, dict)
    assert pins == profile.pins and list(pins) == list(PIN_NAMES)
    assert view["counters"] == PIN_MAX_TRIES
    for key in ("name", "description", "variant", "quirks"):
        assert key in view


def test_json_view_of_a_card_without_sign_cert() -> None:
    view = profile_as_json(load_profile("no-sign-cert"))
    assert view["certificates"] == {"sign": False, "auth": True}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(text, encoding="utf-8")
    return path
