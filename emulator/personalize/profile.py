"""Card personas: the data a card is personalised from (TOML profiles)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from mynacard.personalize.eras import FIRST_ERA_DAY, era_yymmdd
from mynacard.personalize.fields import Field, FieldError, Table, document
from mynacard.personalize.fields import ProfileError as ProfileError  # re-exported
from mynacard.personalize.free_area import FreeAreaSpec, free_area_as_json, free_area_from
from mynacard.personalize.mynumber import my_number_check_digit
from mynacard.personalize.national import (
    TextApData,
    VisualApData,
    read_text_ap,
    read_visual_ap,
)
from mynacard.personalize.rsakeys import read_rsa_key

# PIN names as used in profiles, `profile show --json` and the state store.
PIN_NAMES = ("auth", "sign", "text", "juki", "common", "code_a", "code_b", "birth")

# Retry counter maximum per PIN name (docs/card-spec.md §7, docs/decisions.md #12, #24).
PIN_MAX_TRIES: dict[str, int] = {
    "auth": 3,
    "sign": 5,
    "text": 3,
    "juki": 3,
    "common": 3,
    "code_a": 3,
    "code_b": 3,
    "birth": 3,
}

# PINs a profile sets in [pins]; the others are derived from the card data.
SET_PIN_NAMES = ("auth", "sign", "text", "juki", "common")

# ATRs by the names of docs/card-spec.md §1.
KNOWN_ATRS: dict[str, bytes] = {
    "jpki": bytes.fromhex("3BE000FF8131FE4514"),
    "jpki-02": bytes.fromhex("3BDA13FF8131FB468012392F31C173C601C03B"),
    "jpki-03": bytes.fromhex("3BC5FF8131FB458073C6010000"),
    "jpki-04": bytes.fromhex("3BF59100FF918171FE400042000100D1D6"),
    "jpki-05": bytes.fromhex("3BF59100FF918171FE4000420001B3A115"),
    "jpki-06": bytes.fromhex("3B888001000005E0B381A1007F"),
    "jpki-07": bytes.fromhex("3B888001000041E0B381A1003B"),
    "jpki-08": bytes.fromhex("3B888001004B51FF0081D100BC"),
    "jpki-09": bytes.fromhex("3B888001004B51FFB381D1000F"),
    # A phone's secure element through a contactless reader: the PC/SC part 3 ATR of an
    # ISO 14443-4 device with no historical bytes (no capture is public: an assumption).
    "smartphone": bytes.fromhex("3B80800101"),
}
DEFAULT_ATR = KNOWN_ATRS["jpki"]

# The card's two interfaces and the ATR of each that `serve --interface` presents
# (docs/card.md#contact-and-contactless).
INTERFACE_ATRS: dict[str, str] = {"contact": "jpki", "contactless": "jpki-06"}

# What carries the card's applications (docs/profiles.md, "Smartphone forms"): the plastic
# card, or スマホ用電子証明書 in a phone's secure element (only the JPKI-AP, token label
# JPKIAPGPSETOKEN on Android, JPKIAPIOSTOKEN on an iPhone).
FORMS = ("card", "smartphone-android", "smartphone-ios")

# Largest DER certificate that fits the certificate EFs (3808 bytes, docs/card-spec.md §3.1).
MAX_CERT_SIZE = 3808

PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The shipped profiles: package data of `mynacard.profiles` (profiles/ in the repository).
PROFILES_DIR = Path(str(resources.files("mynacard.profiles")))


@dataclass(frozen=True)
class Holder:
    name: str  # family name, U+3000, given name
    address: str
    birth_date: date
    sex: str  # "1" male, "2" female, "3" unknown


@dataclass(frozen=True)
class Quirks:
    """Per-profile switches for behaviours where sources disagree (docs/decisions.md)."""

    blocked_sw: int = 0x6984
    reselect_clears_state: bool = False
    verified_query_sw: int | None = None  # None: answer 63Cx even when verified
    filler: int = 0xFF
    extended_length: bool = True
    t0_chaining: bool = False
    sm_break_blocks_plain: bool = False  # after a broken SM session, plain commands 69FC too


@dataclass(frozen=True)
class JpkiCredentials:
    """Keys and DER certificates of the JPKI-AP (test keys made at `profile new`)."""

    auth_key: RSAPrivateKey
    auth_cert: bytes
    auth_ca_cert: bytes
    sign_key: RSAPrivateKey | None
    sign_cert: bytes | None
    sign_ca_cert: bytes


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    atr: bytes
    holder: Holder
    my_number: str
    card_expiry: date
    security_code: str
    pins: dict[str, str]  # every name in PIN_NAMES, derived ones included
    counters: dict[str, int] = dataclasses.field(
        default_factory=dict
    )  # initial remaining tries by PIN name
    quirks: Quirks = dataclasses.field(default_factory=Quirks)
    jpki: JpkiCredentials | None = None
    fingerprint: str = ""  # sha256 hex of the profile file, identifies it in a state dir
    variant: str = "standard"  # free text: "standard", "no-sign-cert", "sign-blocked", ...
    form: str = "card"  # one of FORMS
    resident_code: str = ""  # 住民票コード, 11 digits
    card_serial: str = ""  # 共通カードAP EF 0001: 15 digits
    municipality_code: str = ""  # 共通カードAP EF 0001: 全国地方公共団体コード, 5 digits
    common_auth_key: RSAPrivateKey | None = None  # 共通カードAP EF 0019 (INTERNAL AUTHENTICATE)
    free_area: FreeAreaSpec = dataclasses.field(default_factory=FreeAreaSpec)
    text_ap: TextApData | None = None  # [text_ap]: 券面事項入力補助AP keys
    visual_ap: VisualApData | None = None  # [visual_ap]: 券面事項確認AP keys and images

    @property
    def has_sign_cert(self) -> bool:
        """Whether the card carries a signature certificate and key (EF 0008 byte 0)."""
        return self.jpki is not None and self.jpki.sign_cert is not None


def derived_pins(
    my_number: str, birth_date: date, expiry: date, security_code: str
) -> dict[str, str]:
    """照合番号A (code_a), 照合番号B (code_b) and the visual AP birth key (birth)."""
    birth = era_yymmdd(birth_date)
    return {
        "code_a": my_number,
        "code_b": f"{birth}{expiry.year:04d}{security_code}",
        "birth": birth,
    }


def shipped_profile_names() -> list[str]:
    """Names of the profiles shipped with mynacard."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name, or a profile file by path; ProfileError if unusable.

    A string without a path separator and without the .toml suffix is a shipped name.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".toml"):
        path = Path(name_or_path)
        label = text
    else:
        path = PROFILES_DIR / f"{text}.toml"
        label = f"profiles/{text}.toml"
        if not path.is_file():
            shipped = ", ".join(shipped_profile_names()) or "none"
            raise ProfileError(f"no shipped profile named {text!r} (shipped: {shipped})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{label}: cannot read: {exc.strerror or exc}") from None
    return parse_profile(data, path=path, label=label)


def parse_profile(data: bytes, *, path: Path, label: str) -> Profile:
    """Build a Profile from the bytes of a profile file; `label` prefixes error messages."""
    root = document(data, label).table(_SECTIONS)
    name, description, atr, variant, form = _profile_section(root["profile"])
    holder = _holder(root["holder"])
    card = root["card"].table(_CARD_FIELDS)
    my_number = _my_number(card["my_number"])
    expiry = card["expiry"].date()
    if expiry <= holder.birth_date:
        raise card["expiry"].fail("a date after holder.birth_date", str(expiry))
    security_code = _digits(card["security_code"], 4)
    resident_code = _digits(card["resident_code"], 11)
    pins = _pins(root["pins"])
    pins.update(derived_pins(my_number, holder.birth_date, expiry, security_code))
    counters = _counters(root["counters"])
    quirks = read_quirks(root["quirks"])
    with_sign = _certificates(root["certificates"])
    keys = root["keys"].table(_KEY_FIELDS)
    return Profile(
        name=name,
        path=path,
        description=description,
        atr=atr,
        holder=holder,
        my_number=my_number,
        card_expiry=expiry,
        security_code=security_code,
        pins=pins,
        counters=counters,
        quirks=quirks,
        jpki=_jpki(keys, with_sign),
        fingerprint=hashlib.sha256(data).hexdigest(),
        variant=variant,
        form=form,
        resident_code=resident_code,
        card_serial=_digits(card["serial_number"], 15),
        municipality_code=_digits(card["municipality_code"], 5),
        common_auth_key=read_rsa_key(keys["common_auth_key"]),
        free_area=free_area_from(root["free_area"]),
        text_ap=read_text_ap(root["text_ap"]),
        visual_ap=read_visual_ap(root["visual_ap"]),
    )


def profile_as_json(profile: Profile) -> dict[str, object]:
    """The profile as JSON-ready data (`mynacard profile show NAME --json`); no keys.

    Byte values (ATR, status words, filler) are upper-case hex strings.
    """
    quirks = profile.quirks
    return {
        "name": profile.name,
        "description": profile.description,
        "variant": profile.variant,
        "form": profile.form,
        "path": str(profile.path),
        "fingerprint": profile.fingerprint,
        "atr": profile.atr.hex().upper(),
        "holder": {
            "name": profile.holder.name,
            "address": profile.holder.address,
            "birth_date": profile.holder.birth_date.isoformat(),
            "sex": profile.holder.sex,
        },
        "my_number": profile.my_number,
        "card": {
            "expiry": profile.card_expiry.isoformat(),
            "security_code": profile.security_code,
            "resident_code": profile.resident_code,
            "serial_number": profile.card_serial,
            "municipality_code": profile.municipality_code,
        },
        "certificates": {"sign": profile.has_sign_cert, "auth": profile.jpki is not None},
        "pins": {name: profile.pins[name] for name in PIN_NAMES},
        "counters": {name: profile.counters[name] for name in PIN_NAMES},
        "quirks": {
            "blocked_sw": f"{quirks.blocked_sw:04X}",
            "reselect_clears_state": quirks.reselect_clears_state,
            "verified_query_sw": (
                None if quirks.verified_query_sw is None else f"{quirks.verified_query_sw:04X}"
            ),
            "filler": f"{quirks.filler:02X}",
            "extended_length": quirks.extended_length,
            "t0_chaining": quirks.t0_chaining,
            "sm_break_blocks_plain": quirks.sm_break_blocks_plain,
        },
        "free_area": free_area_as_json(profile.free_area),
    }


def atr_problem(atr: bytes) -> str | None:
    """Why `atr` is not a well-formed ISO 7816-3 ATR, or None if it is."""
    if len(atr) < 2 or len(atr) > 33:
        return "must be 2 to 33 bytes"
    if atr[0] not in (0x3B, 0x3F):
        return "must start with 3B or 3F"
    position = 1
    indicator = atr[1]
    protocols: set[int] = set()
    while True:
        position += bin(indicator >> 4).count("1")  # TAi..TDi present per the high nibble
        if not indicator & 0x80:
            break
        if position >= len(atr):
            return "interface bytes run past the end"
        indicator = atr[position]
        protocols.add(indicator & 0x0F)
    expected = position + 1 + (atr[1] & 0x0F) + (1 if protocols - {0} else 0)
    if len(atr) != expected:
        return f"length should be {expected} bytes by its T0/TDi bytes, got {len(atr)}"
    if protocols - {0}:
        check = 0
        for byte in atr[1:]:
            check ^= byte
        if check:
            return "TCK check byte is wrong"
    return None


_SIGN_PIN = re.compile(r"[A-Z0-9]{6,16}")
_SECTIONS = (
    "profile",
    "holder",
    "card",
    "certificates",
    "pins",
    "counters",
    "quirks",
    "keys",
    "free_area",
    "text_ap",
    "visual_ap",
)
_CARD_FIELDS = (
    "my_number",
    "expiry",
    "security_code",
    "resident_code",
    "serial_number",
    "municipality_code",
)
_KEY_FIELDS = (
    "test_only",
    "auth_key",
    "auth_cert",
    "auth_ca_cert",
    "sign_key",
    "sign_cert",
    "sign_ca_cert",
    "common_auth_key",
)


def _is_text(value: str) -> bool:
    """No control, format or unassigned characters (Unicode category C*)."""
    return not any(unicodedata.category(char).startswith("C") for char in value)


def _digits(field: Field, count: int) -> str:
    return field.text(pattern=f"[0-9]{{{count}}}", expected=f"a string of {count} digits 0-9")


def _profile_section(field: Field) -> tuple[str, str, bytes, str, str]:
    table = field.table(("name", "description", "atr", "variant", "form"))
    name = table["name"].text(
        pattern=PROFILE_NAME, expected="a name of letters, digits, '.', '_' and '-'"
    )
    description = table["description"].text("")
    variant = table["variant"].text("standard")
    if not variant.strip():
        raise table["variant"].fail("a non-blank string", repr(variant))
    form = table["form"].choice(FORMS, "card")
    return name, description, _atr(table["atr"]), variant, form


def _atr(field: Field) -> bytes:
    text = field.text("jpki")
    if text.lower() in KNOWN_ATRS:
        return KNOWN_ATRS[text.lower()]
    try:
        atr = bytes.fromhex(text)
    except ValueError:
        raise field.fail(f"hex bytes or one of {', '.join(KNOWN_ATRS)}", repr(text)) from None
    problem = atr_problem(atr)
    if problem:
        raise field.fail(f"a well-formed ATR ({problem})")
    return atr


def _holder(field: Field) -> Holder:
    table = field.table(("name", "address", "birth_date", "sex"))
    name = table["name"].text()
    family, _, given = name.partition("\u3000")
    if not family or not given or not _is_text(name):
        raise table["name"].fail("family name, U+3000 (　), given name", repr(name))
    address = table["address"].text()
    if not address or not _is_text(address) or len(address) > 200:
        raise table["address"].fail("1 to 200 characters, no control characters")
    ascii_digit = re.search(r"[0-9]", address)
    if ascii_digit:
        raise table["address"].fail(
            "full-width digits (０-９) as on the card", repr(ascii_digit[0])
        )
    birth_date = table["birth_date"].date()
    if not FIRST_ERA_DAY <= birth_date <= date.today():
        raise table["birth_date"].fail(
            f"a date from {FIRST_ERA_DAY} (明治 1) to today", str(birth_date)
        )
    sex = table["sex"].text(pattern="[123]", expected='"1" (male), "2" (female) or "3" (unknown)')
    return Holder(name=name, address=address, birth_date=birth_date, sex=sex)


def _my_number(field: Field) -> str:
    my_number = _digits(field, 12)
    expected = my_number_check_digit(my_number[:11])
    if int(my_number[11]) != expected:
        raise field.fail(f"check digit {expected}", my_number[11])
    return my_number


def _pins(field: Field) -> dict[str, str]:
    table = field.table()
    for name in PIN_NAMES:
        if name in table and name not in SET_PIN_NAMES:
            raise table[name].fail("no value (it is derived from the card data)")
    table = field.table(SET_PIN_NAMES)
    return {
        name: (
            table[name].text(pattern=_SIGN_PIN, expected="a string of 6-16 characters A-Z 0-9")
            if name == "sign"
            else _digits(table[name], 4)
        )
        for name in SET_PIN_NAMES
    }


def with_quirks(profile: Profile, assignments: Sequence[tuple[str, str]]) -> Profile:
    """`profile` with quirks changed by NAME=VALUE pairs (VALUE as in TOML: 0x6983, true),
    checked as the profile's own [quirks] are; FieldError names the bad one."""
    table = {k: v for k, v in dataclasses.asdict(profile.quirks).items() if v is not None}
    for name, text in assignments:
        try:
            table[name] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            table[name] = text
    if any(name == "verified_query_sw" and text == "none" for name, text in assignments):
        del table["verified_query_sw"]
    quirks = read_quirks(Field(table, "--quirk", ""))
    return dataclasses.replace(profile, quirks=quirks)


def with_atr(profile: Profile, atr: str) -> Profile:
    """`profile` presenting another ATR: an interface (contact, contactless), a name of
    KNOWN_ATRS or hex; ProfileError listing the names if it is none of them."""
    try:
        value = _atr(Field(INTERFACE_ATRS.get(atr.lower(), atr), "--atr", "ATR"))
    except FieldError as error:
        raise ProfileError(
            f"--atr {atr}: {error.problem} (or an interface: {', '.join(INTERFACE_ATRS)})"
        ) from None
    return dataclasses.replace(profile, atr=value)


def _counters(field: Field) -> dict[str, int]:
    table = field.table(PIN_NAMES, optional=True)
    return {
        name: table[name].integer(0, PIN_MAX_TRIES[name], PIN_MAX_TRIES[name]) for name in PIN_NAMES
    }


def read_quirks(field: Field) -> Quirks:
    """The [quirks] table (absent: the defaults); also `serve --quirk NAME=VALUE`."""
    table = field.table([quirk.name for quirk in dataclasses.fields(Quirks)], optional=True)
    default = Quirks()

    def hex_int(value: int) -> str:
        return f"0x{value:02X}"

    return Quirks(
        blocked_sw=table["blocked_sw"].choice((0x6984, 0x6983), default.blocked_sw, spell=hex_int),
        reselect_clears_state=table["reselect_clears_state"].boolean(default.reselect_clears_state),
        verified_query_sw=(
            table["verified_query_sw"].choice((0x9000,), spell=hex_int)
            if "verified_query_sw" in table
            else None
        ),
        filler=table["filler"].choice((0xFF, 0x00), default.filler, spell=hex_int),
        extended_length=table["extended_length"].boolean(default.extended_length),
        t0_chaining=table["t0_chaining"].boolean(default.t0_chaining),
        sm_break_blocks_plain=table["sm_break_blocks_plain"].boolean(default.sm_break_blocks_plain),
    )


def _certificates(field: Field) -> bool:
    """Whether the profile has a signature certificate."""
    table = field.table(("sign", "auth"))
    sign = table["sign"].boolean()
    if not table["auth"].boolean(True):
        raise table["auth"].fail("true (every card has an auth certificate)", "false")
    return sign


def _jpki(keys: Table, with_sign: bool) -> JpkiCredentials:
    if not keys["test_only"].boolean():
        raise keys["test_only"].fail("true (profiles hold test keys only)", "false")
    auth_ca = _certificate(keys, "auth_ca_cert")
    auth_cert = _certificate(keys, "auth_cert", issuer=("auth_ca_cert", auth_ca))
    auth_key = _private_key(keys, "auth_key", ("auth_cert", auth_cert))
    sign_ca = _certificate(keys, "sign_ca_cert")
    sign_key = sign_cert = None
    if with_sign:
        sign_cert = _certificate(keys, "sign_cert", issuer=("sign_ca_cert", sign_ca))
        sign_key = _private_key(keys, "sign_key", ("sign_cert", sign_cert))
    else:
        for key in ("sign_key", "sign_cert"):
            if key in keys:
                raise keys[key].fail("no value when certificates.sign = false")
    return JpkiCredentials(
        auth_key=auth_key,
        auth_cert=auth_cert.public_bytes(Encoding.DER),
        auth_ca_cert=auth_ca.public_bytes(Encoding.DER),
        sign_key=sign_key,
        sign_cert=None if sign_cert is None else sign_cert.public_bytes(Encoding.DER),
        sign_ca_cert=sign_ca.public_bytes(Encoding.DER),
    )


def _certificate(
    keys: Table, key: str, issuer: tuple[str, x509.Certificate] | None = None
) -> x509.Certificate:
    field = keys[key]
    pem = field.text(expected="a PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise field.fail(f"a PEM certificate ({exc})") from None
    size = len(cert.public_bytes(Encoding.DER))
    if size > MAX_CERT_SIZE:
        raise field.fail(
            f"at most {MAX_CERT_SIZE} bytes of DER (the certificate EF)", f"{size} bytes"
        )
    if issuer is not None:
        issuer_key, issuer_cert = issuer
        try:
            cert.verify_directly_issued_by(issuer_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise field.fail(
                f"a certificate issued by keys.{issuer_key} ({str(exc) or 'bad signature'})"
            ) from None
    return cert


def _private_key(keys: Table, key: str, cert: tuple[str, x509.Certificate]) -> RSAPrivateKey:
    private_key = read_rsa_key(keys[key])
    cert_name, certificate = cert
    if certificate.public_key() != private_key.public_key():
        raise keys[key].fail(f"the private key of keys.{cert_name}")
    return private_key
