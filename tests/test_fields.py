"""The typed TOML field reader: good values, and the one shape of every error message."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from mynacard.personalize.fields import Field, FieldError, ProfileError, Table, document

FILE = "profiles/x.toml"


def read(text: str) -> Table:
    return document(text.encode("utf-8"), FILE)


def error(call: Callable[[], object]) -> str:
    with pytest.raises(FieldError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_text() -> None:
    root = read('a = "x"\nb = "山田\u3000太郎"\nc = "東京都千代田区１−２"\nd = 1')
    assert root["a"].text() == "x"
    assert root["b"].text() == "山田\u3000太郎"
    assert root["c"].text(pattern="[^0-9]+") == "東京都千代田区１−２"
    assert root["missing"].text("default") == "default"
    assert error(lambda: root["d"].text()) == f"{FILE}: d: expected a string, got 1"
    assert (
        error(lambda: root["missing"].text()) == f"{FILE}: missing: expected a string, got nothing"
    )


def test_text_pattern_names_the_expected_thing() -> None:
    root = read('wide = "１２３４"\nname = "山田 太郎"\nsp = "山田\u3000太郎"')
    four = "a string of 4 digits 0-9"
    assert error(lambda: root["wide"].text(pattern="[0-9]{4}", expected=four)) == (
        f"{FILE}: wide: expected a string of 4 digits 0-9, got '１２３４'"
    )
    # U+3000 is shown escaped, so that it can be told from a space.
    assert error(lambda: root["sp"].text(pattern="[^\u3000]*", expected="no U+3000")) == (
        f"{FILE}: sp: expected no U+3000, got '山田\\u3000太郎'"
    )
    assert root["name"].text(pattern="[^\u3000]*") == "山田 太郎"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "n: expected an integer 1 to 15, got 0"),
        ("16", "n: expected an integer 1 to 15, got 16"),
        ("true", "n: expected an integer 1 to 15, got true"),
        ("1.0", "n: expected an integer 1 to 15, got 1.0"),
        ('"3"', "n: expected an integer 1 to 15, got '3'"),
        ("{ a = 1 }", "n: expected an integer 1 to 15, got a table"),
        ("1980-02-17", "n: expected an integer 1 to 15, got 1980-02-17"),
    ],
)
def test_integer_with_bounds(value: str, message: str) -> None:
    assert error(lambda: read(f"n = {value}")["n"].integer(1, 15)) == f"{FILE}: {message}"


def test_integer_good_and_default() -> None:
    root = read("low = 1\nhigh = 15")
    assert (root["low"].integer(1, 15), root["high"].integer(1, 15)) == (1, 15)
    assert root["absent"].integer(1, 15, 3) == 3


def test_boolean() -> None:
    root = read('yes = true\nno = false\nword = "yes"\none = 1')
    assert (root["yes"].boolean(), root["no"].boolean(), root["absent"].boolean(True)) == (
        True,
        False,
        True,
    )
    assert (
        error(lambda: root["word"].boolean()) == f"{FILE}: word: expected true or false, got 'yes'"
    )
    assert error(lambda: root["one"].boolean()) == f"{FILE}: one: expected true or false, got 1"


def test_date() -> None:
    root = read('day = 1980-02-17\nstamp = 1980-02-17T00:00:00\ntext = "1980-02-17"')
    assert root["day"].date() == dt.date(1980, 2, 17)
    expected = f"{FILE}: stamp: expected a date (YYYY-MM-DD), got 1980-02-17T00:00:00"
    assert error(lambda: root["stamp"].date()) == expected
    expected = f"{FILE}: text: expected a date (YYYY-MM-DD), got '1980-02-17'"
    assert error(lambda: root["text"].date()) == expected


def test_hex() -> None:
    root = read('aid = "F0 54:41 58 49"\nkey = "00112233445566778899AABBCCDDEEFF"')
    assert root["aid"].hex(5, 16) == bytes.fromhex("F054415849")
    assert root["key"].hex(16, 16) == bytes(range(0, 256, 17))
    assert root["absent"].hex(0, 4, "") == b""


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        ('"zz"', 16, 16, "expected 16 bytes in hex, got 'zz'"),
        ('"０１"', 1, 1, "expected 1 byte in hex, got '０１'"),
        ('"001122"', 16, 16, "expected 16 bytes in hex, got '001122'"),
        ('"F0AABBCC"', 5, 16, "expected 5 to 16 bytes in hex, got 'F0AABBCC'"),
        ('"AABBCC"', 0, 2, "expected at most 2 bytes in hex, got 'AABBCC'"),
        ("12", 1, 2, "expected 1 to 2 bytes in hex, got 12"),
    ],
)
def test_hex_length_rules(value: str, low: int, high: int, message: str) -> None:
    assert error(lambda: read(f"h = {value}")["h"].hex(low, high)) == f"{FILE}: h: {message}"


def test_choice() -> None:
    root = read('kind = "record"\nfiller = 0x00\nbad = 0x20\nflag = false\nword = "x"')
    kinds = ("transparent", "record", "counter")
    assert root["kind"].choice(kinds) == "record"
    assert root["absent"].choice(kinds, "counter") == "counter"

    def hex_int(value: int) -> str:
        return f"0x{value:02X}"

    assert root["filler"].choice((0xFF, 0x00), spell=hex_int) == 0
    assert error(lambda: root["bad"].choice((0xFF, 0x00), spell=hex_int)) == (
        f"{FILE}: bad: expected 0xFF or 0x00, got 0x20"
    )
    # false is no integer 0, and a value of another type is shown as written
    assert error(lambda: root["flag"].choice((0xFF, 0x00), spell=hex_int)) == (
        f"{FILE}: flag: expected 0xFF or 0x00, got false"
    )
    assert error(lambda: root["word"].choice(kinds)) == (
        f"{FILE}: word: expected 'transparent', 'record' or 'counter', got 'x'"
    )
    assert error(lambda: root["word"].choice((1,))) == f"{FILE}: word: expected 1, got 'x'"


def test_nested_tables_and_unknown_fields() -> None:
    root = read('[holder]\nname = "山田\u3000太郎"\nkana = "ヤマダ"\n[card.inner]\nx = 1')
    holder = root["holder"].table()
    assert holder["name"].text() == "山田\u3000太郎"
    assert "kana" in holder and "sex" not in holder
    assert root["card"].table()["inner"].table(("x",))["x"].integer(0, 1) == 1
    assert error(lambda: root["holder"].table(("name", "sex"))) == (
        f"{FILE}: holder.kana: expected one of the fields name, sex"
    )
    assert error(lambda: root["card"].table()["inner"].table(("y",))) == (
        f"{FILE}: card.inner.x: expected one of the fields y"
    )


def test_tables_present_absent_and_wrong() -> None:
    root = read("number = 1\n[quirks]\n")
    assert root["quirks"].table(optional=True).value == {}
    assert root["counters"].table(optional=True).value == {}
    assert error(lambda: root["counters"].table()) == (
        f"{FILE}: counters: expected a table, got nothing"
    )
    assert error(lambda: root["number"].table()) == f"{FILE}: number: expected a table, got 1"


def test_paths_into_arrays_of_tables() -> None:
    root = read(
        "[[free_area.apps]]\n"
        'name = "taxi"\n'
        "[[free_area.apps.files]]\n"
        'fid = "0001"\n'
        "[[free_area.apps.files]]\n"
        'fid = "zz"\n'
        "[[free_area.apps]]\n"
        'name = "library"\n'
    )
    apps = root["free_area"].table()["apps"].tables(("name", "files"))
    assert [app["name"].text() for app in apps] == ["taxi", "library"]
    assert apps[1]["files"].tables() == []
    files = apps[0]["files"].tables(("fid",))
    assert files[0]["fid"].text() == "0001"
    fid = "a 4-digit hex FID"
    assert error(lambda: files[1]["fid"].text(pattern="[0-9A-F]{4}", expected=fid)) == (
        f"{FILE}: free_area.apps[0].files[1].fid: expected a 4-digit hex FID, got 'zz'"
    )
    assert error(lambda: apps[0]["files"].tables(("type",))) == (
        f"{FILE}: free_area.apps[0].files[0].fid: expected one of the fields type"
    )


def test_items() -> None:
    root = read('records = ["AA", "BB"]\nvalues = []\nrules = "always"\nbad = [1, "x"]')
    records = root["records"].items(0, 8)
    assert [record.hex(1, 1) for record in records] == [b"\xaa", b"\xbb"]
    assert records[1].path == "records[1]"
    assert root["absent"].items(0, 8, []) == []
    assert error(lambda: root["records"].items(0, 1)) == (
        f"{FILE}: records: expected an array of at most 1 item, got ['AA', 'BB']"
    )
    assert error(lambda: root["values"].items(1, 254)) == (
        f"{FILE}: values: expected an array of 1 to 254 items, got []"
    )
    assert error(lambda: root["values"].items(1)) == (
        f"{FILE}: values: expected an array of at least 1 item, got []"
    )
    assert error(lambda: root["rules"].items()) == f"{FILE}: rules: expected an array, got 'always'"
    assert error(lambda: root["bad"].items()[1].integer(0, 9)) == (
        f"{FILE}: bad[1]: expected an integer 0 to 9, got 'x'"
    )
    assert error(lambda: root["bad"].tables()) == f"{FILE}: bad[0]: expected a table, got 1"


def test_fail_for_checks_of_the_caller() -> None:
    field = read('my_number = "537686677187"')["my_number"]
    caught = field.fail("check digit 8", "7")
    assert isinstance(caught, ProfileError) and isinstance(caught, ValueError)
    assert (caught.file, caught.path, caught.problem) == (
        FILE,
        "my_number",
        "expected check digit 8, got 7",
    )
    assert str(caught) == f"{FILE}: my_number: expected check digit 8, got 7"
    assert str(field.fail("a key other than card_key")) == (
        f"{FILE}: my_number: expected a key other than card_key"
    )


def test_a_field_below_a_path_of_its_own() -> None:
    root = document(b'name = "x"', "a.toml", "app")
    assert root["name"].path == "app.name"
    assert Field(None, "state", "bench").fail("a table").args == ("state: bench: expected a table",)


def test_documents_that_are_not_utf8_or_not_toml() -> None:
    with pytest.raises(ProfileError, match=r"^profiles/x\.toml: not UTF-8 \(invalid start byte"):
        document(b'name = "\xff"', FILE)
    with pytest.raises(ProfileError, match=r"^profiles/x\.toml: invalid TOML: "):
        document(b"[holder", FILE)
    assert read('name = "山田\u3000太郎"')["name"].text() == "山田\u3000太郎"


def test_control_characters_stay_on_one_line() -> None:
    root = read('text = "a\\nb"')
    assert error(lambda: root["text"].integer(0, 1)) == (
        f"{FILE}: text: expected an integer 0 to 1, got 'a\\nb'"
    )
