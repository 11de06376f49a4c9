"""Card personas: the data a card is personalised from (TOML profiles)."""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from mynacard.personalize.eras import FIRST_ERA_DAY, era_yymmdd
from mynacard.personalize.fields import ProfileError as ProfileError  # re-exported
from mynacard.personalize.free_area import FreeAreaSpec, free_area_as_json, read_free_area
from mynacard.personalize.mynumber import my_number_check_digit
from mynacard.personalize.national import (
    SectionError,
    TextApData,
    VisualApData,
    read_text_ap,
    read_visual_ap,
)

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
}
DEFAULT_ATR = KNOWN_ATRS["jpki"]

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
    counters: dict[str, int] = field(default_factory=dict)  # initial remaining tries by PIN name
    quirks: Quirks = field(default_factory=Quirks)
    jpki: JpkiCredentials | None = None
    fingerprint: str = ""  # sha256 hex of the profile file, identifies it in a state dir
    variant: str = "standard"  # free text: "standard", "no-sign-cert", "sign-blocked", ...
    resident_code: str = ""  # 住民票コード, 11 digits
    card_serial: str = ""  # 共通カードAP EF 0001: 15 digits
    municipality_code: str = ""  # 共通カードAP EF 0001: 全国地方公共団体コード, 5 digits
    common_auth_key: RSAPrivateKey | None = None  # 共通カードAP EF 0019 (INTERNAL AUTHENTICATE)
    free_area: FreeAreaSpec = field(default_factory=FreeAreaSpec)
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
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{label}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{label}: invalid TOML: {exc}") from None
    return _ProfileReader(label, document).read(path, hashlib.sha256(data).hexdigest())


def profile_as_json(profile: Profile) -> dict[str, object]:
    """The profile as JSON-ready data (`mynacard profile show NAME --json`); no keys.

    Byte values (ATR, status words, filler) are upper-case hex strings.
    """
    quirks = profile.quirks
    return {
        "name": profile.name,
        "description": profile.description,
        "variant": profile.variant,
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


_T = TypeVar("_T")
_MISSING = object()
_DIGITS = re.compile(r"[0-9]+")
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
_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    date: "a date (YYYY-MM-DD)",
}


@functools.lru_cache(maxsize=64)
def _load_private_key(pem: str) -> PrivateKeyTypes:
    """Load (and validate, ~40 ms per RSA key) a PEM key once per process."""
    return load_pem_private_key(pem.encode(), password=None)


def _is_text(value: str) -> bool:
    """No control, format or unassigned characters (Unicode category C*)."""
    return not any(unicodedata.category(char).startswith("C") for char in value)


class _ProfileReader:
    """Reads one parsed TOML document, raising ProfileError that names the field."""

    def __init__(self, label: str, document: dict[str, object]) -> None:
        self.label = label
        self.document = document

    def fail(self, where: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.label}: {where}: {problem}")

    def section(self, name: str, *, required: bool = True) -> dict[str, object]:
        value = self.document.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise self.fail(f"[{name}]", "missing section")
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, "must be a table ([" + name + "])")
        return value

    def take(
        self,
        table: dict[str, object],
        section: str,
        key: str,
        kind: type[_T],
        default: object = _MISSING,
    ) -> _T:
        where = f"{section}.{key}"
        value = table.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise self.fail(where, "missing")
            return default  # type: ignore[return-value]
        wrong_type = not isinstance(value, kind)
        if kind is int and isinstance(value, bool):
            wrong_type = True
        if kind is date and isinstance(value, datetime):
            wrong_type = True
        if wrong_type:
            raise self.fail(where, f"must be {_TYPE_NAMES[kind]}, got {value!r}")
        return value  # type: ignore[return-value]

    def reject_unknown(
        self, table: dict[str, object], section: str, known: tuple[str, ...]
    ) -> None:
        for key in table:
            if key not in known:
                raise self.fail(f"{section}.{key}", "unknown field")

    def digits(self, table: dict[str, object], section: str, key: str, count: int) -> str:
        value = self.take(table, section, key, str)
        if len(value) != count or not _DIGITS.fullmatch(value):
            raise self.fail(f"{section}.{key}", f"must be {count} digits 0-9, got {value!r}")
        return value

    def read(self, path: Path, fingerprint: str) -> Profile:
        for name in self.document:
            if name not in _SECTIONS:
                raise self.fail(f"[{name}]", "unknown section")
        name, description, atr, variant = self.read_profile_section()
        holder = self.read_holder()
        my_number, expiry, security_code, resident_code = self.read_card(holder)
        pins = self.read_pins()
        pins.update(derived_pins(my_number, holder.birth_date, expiry, security_code))
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
            counters=self.read_counters(),
            quirks=self.read_quirks(),
            jpki=self.read_keys(self.read_certificates()),
            fingerprint=fingerprint,
            variant=variant,
            resident_code=resident_code,
            card_serial=self.digits(self.section("card"), "card", "serial_number", 15),
            municipality_code=self.digits(self.section("card"), "card", "municipality_code", 5),
            common_auth_key=self.read_common_auth_key(),
            free_area=read_free_area(self.document.get("free_area"), self.fail),
            text_ap=self.national_ap(read_text_ap, "text_ap"),
            visual_ap=self.national_ap(read_visual_ap, "visual_ap"),
        )

    def national_ap(self, read: Callable[[dict[str, object]], _T], name: str) -> _T:
        """A [text_ap] / [visual_ap] section, read by mynacard.personalize.national."""
        try:
            return read(self.section(name))
        except SectionError as exc:
            raise self.fail(exc.where, exc.problem) from None

    def read_profile_section(self) -> tuple[str, str, bytes, str]:
        table = self.section("profile")
        self.reject_unknown(table, "profile", ("name", "description", "atr", "variant"))
        name = self.take(table, "profile", "name", str)
        if not PROFILE_NAME.fullmatch(name):
            raise self.fail("profile.name", f"use letters, digits, '.', '_' and '-', got {name!r}")
        description = self.take(table, "profile", "description", str, "")
        variant = self.take(table, "profile", "variant", str, "standard")
        if not variant.strip():
            raise self.fail("profile.variant", "must not be empty")
        return (
            name,
            description,
            self.parse_atr(self.take(table, "profile", "atr", str, "jpki")),
            variant,
        )

    def parse_atr(self, text: str) -> bytes:
        if text.lower() in KNOWN_ATRS:
            return KNOWN_ATRS[text.lower()]
        try:
            atr = bytes.fromhex(text)
        except ValueError:
            names = ", ".join(KNOWN_ATRS)
            raise self.fail(
                "profile.atr", f"must be hex bytes or one of {names}, got {text!r}"
            ) from None
        problem = atr_problem(atr)
        if problem:
            raise self.fail("profile.atr", problem)
        return atr

    def read_holder(self) -> Holder:
        table = self.section("holder")
        self.reject_unknown(table, "holder", ("name", "address", "birth_date", "sex"))
        name = self.take(table, "holder", "name", str)
        family, _, given = name.partition("\u3000")
        if not family or not given or not _is_text(name):
            raise self.fail(
                "holder.name", f"must be family name, U+3000 (　), given name; got {name!r}"
            )
        address = self.take(table, "holder", "address", str)
        if not address or not _is_text(address) or len(address) > 200:
            raise self.fail("holder.address", "must be 1 to 200 characters, no control characters")
        ascii_digits = re.search(r"[0-9]", address)
        if ascii_digits:
            raise self.fail(
                "holder.address",
                f"use full-width digits (０-９) as on the card, found {ascii_digits[0]!r}",
            )
        birth_date = self.take(table, "holder", "birth_date", date)
        if birth_date < FIRST_ERA_DAY:
            raise self.fail("holder.birth_date", f"must be on or after {FIRST_ERA_DAY} (明治 1)")
        if birth_date > date.today():
            raise self.fail("holder.birth_date", "is in the future")
        sex = self.take(table, "holder", "sex", str)
        if sex not in ("1", "2", "3"):
            raise self.fail(
                "holder.sex", f'must be "1" (male), "2" (female) or "3" (unknown), got {sex!r}'
            )
        return Holder(name=name, address=address, birth_date=birth_date, sex=sex)

    def read_card(self, holder: Holder) -> tuple[str, date, str, str]:
        table = self.section("card")
        self.reject_unknown(
            table,
            "card",
            (
                "my_number",
                "expiry",
                "security_code",
                "resident_code",
                "serial_number",
                "municipality_code",
            ),
        )
        my_number = self.digits(table, "card", "my_number", 12)
        expected = my_number_check_digit(my_number[:11])
        if int(my_number[11]) != expected:
            raise self.fail(
                "card.my_number", f"check digit should be {expected}, got {my_number[11]}"
            )
        expiry = self.take(table, "card", "expiry", date)
        if expiry <= holder.birth_date:
            raise self.fail("card.expiry", "must be after holder.birth_date")
        security_code = self.digits(table, "card", "security_code", 4)
        resident_code = self.digits(table, "card", "resident_code", 11)
        return my_number, expiry, security_code, resident_code

    def read_pins(self) -> dict[str, str]:
        table = self.section("pins")
        for key in table:
            if key in PIN_NAMES and key not in SET_PIN_NAMES:
                raise self.fail(f"pins.{key}", "is derived from the card data; do not set it")
        self.reject_unknown(table, "pins", SET_PIN_NAMES)
        pins = {
            name: self.digits(table, "pins", name, 4) for name in SET_PIN_NAMES if name != "sign"
        }
        sign = self.take(table, "pins", "sign", str)
        if not _SIGN_PIN.fullmatch(sign):
            raise self.fail("pins.sign", f"must be 6-16 characters A-Z 0-9, got {sign!r}")
        pins["sign"] = sign
        return {name: pins[name] for name in SET_PIN_NAMES}

    def read_counters(self) -> dict[str, int]:
        table = self.section("counters", required=False)
        self.reject_unknown(table, "counters", PIN_NAMES)
        counters = {}
        for name in PIN_NAMES:
            most = PIN_MAX_TRIES[name]
            value = self.take(table, "counters", name, int, most)
            if not 0 <= value <= most:
                raise self.fail(f"counters.{name}", f"must be 0 (blocked) to {most}, got {value}")
            counters[name] = value
        return counters

    def read_quirks(self) -> Quirks:
        table = self.section("quirks", required=False)
        defaults = Quirks()
        self.reject_unknown(
            table,
            "quirks",
            (
                "blocked_sw",
                "reselect_clears_state",
                "verified_query_sw",
                "filler",
                "extended_length",
                "t0_chaining",
            ),
        )

        def one_of(key: str, allowed: tuple[int, ...], default: int) -> int:
            value = self.take(table, "quirks", key, int, default)
            if value not in allowed:
                choices = " or ".join(f"0x{choice:02X}" for choice in allowed)
                raise self.fail(f"quirks.{key}", f"must be {choices}, got 0x{value:02X}")
            return value

        verified_query_sw = None
        if "verified_query_sw" in table:
            verified_query_sw = one_of("verified_query_sw", (0x9000,), 0x9000)

        def flag(key: str, default: bool) -> bool:
            return self.take(table, "quirks", key, bool, default)

        return Quirks(
            blocked_sw=one_of("blocked_sw", (0x6984, 0x6983), defaults.blocked_sw),
            reselect_clears_state=flag("reselect_clears_state", defaults.reselect_clears_state),
            verified_query_sw=verified_query_sw,
            filler=one_of("filler", (0xFF, 0x00), defaults.filler),
            extended_length=flag("extended_length", defaults.extended_length),
            t0_chaining=flag("t0_chaining", defaults.t0_chaining),
        )

    def read_certificates(self) -> bool:
        """Whether the profile has a signature certificate."""
        table = self.section("certificates")
        self.reject_unknown(table, "certificates", ("sign", "auth"))
        sign = self.take(table, "certificates", "sign", bool)
        if not self.take(table, "certificates", "auth", bool, True):
            raise self.fail(
                "certificates.auth", "must be true (every card has an auth certificate)"
            )
        return sign

    def read_keys(self, with_sign: bool) -> JpkiCredentials:
        table = self.section("keys")
        self.reject_unknown(
            table,
            "keys",
            (
                "test_only",
                "auth_key",
                "auth_cert",
                "auth_ca_cert",
                "sign_key",
                "sign_cert",
                "sign_ca_cert",
                "common_auth_key",
            ),
        )
        if self.take(table, "keys", "test_only", bool) is not True:
            raise self.fail("keys.test_only", "must be true: profiles hold test keys only")
        auth_ca = self.certificate(table, "auth_ca_cert")
        auth_cert = self.certificate(table, "auth_cert", issuer=("auth_ca_cert", auth_ca))
        auth_key = self.private_key(table, "auth_key", ("auth_cert", auth_cert))
        sign_ca = self.certificate(table, "sign_ca_cert")
        sign_key = sign_cert = None
        if with_sign:
            sign_cert = self.certificate(table, "sign_cert", issuer=("sign_ca_cert", sign_ca))
            sign_key = self.private_key(table, "sign_key", ("sign_cert", sign_cert))
        else:
            for key in ("sign_key", "sign_cert"):
                if key in table:
                    raise self.fail(f"keys.{key}", "must be absent when certificates.sign = false")
        return JpkiCredentials(
            auth_key=auth_key,
            auth_cert=auth_cert.public_bytes(Encoding.DER),
            auth_ca_cert=auth_ca.public_bytes(Encoding.DER),
            sign_key=sign_key,
            sign_cert=None if sign_cert is None else sign_cert.public_bytes(Encoding.DER),
            sign_ca_cert=sign_ca.public_bytes(Encoding.DER),
        )

    def read_common_auth_key(self) -> RSAPrivateKey:
        """共通カードAP EF 0019: an RSA-2048 key whose public half is on no certificate."""
        pem = self.take(self.section("keys"), "keys", "common_auth_key", str)
        try:
            key = _load_private_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise self.fail("keys.common_auth_key", f"not a PEM private key ({exc})") from None
        if not isinstance(key, RSAPrivateKey) or key.key_size != 2048:
            raise self.fail("keys.common_auth_key", "must be an RSA-2048 key")
        return key

    def certificate(
        self, table: dict[str, object], key: str, issuer: tuple[str, x509.Certificate] | None = None
    ) -> x509.Certificate:
        where = f"keys.{key}"
        pem = self.take(table, "keys", key, str)
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            raise self.fail(where, f"not a PEM certificate ({exc})") from None
        if len(cert.public_bytes(Encoding.DER)) > MAX_CERT_SIZE:
            raise self.fail(where, f"larger than the {MAX_CERT_SIZE}-byte certificate EF")
        if issuer is not None:
            issuer_key, issuer_cert = issuer
            try:
                cert.verify_directly_issued_by(issuer_cert)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise self.fail(
                    where, f"not issued by keys.{issuer_key} ({str(exc) or 'bad signature'})"
                ) from None
        return cert

    def private_key(
        self, table: dict[str, object], key: str, cert: tuple[str, x509.Certificate]
    ) -> RSAPrivateKey:
        where = f"keys.{key}"
        pem = self.take(table, "keys", key, str)
        try:
            private_key = _load_private_key(pem)
        except TypeError:
            raise self.fail(where, "encrypted private keys are not supported") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise self.fail(where, f"not a PEM private key ({exc})") from None
        if not isinstance(private_key, RSAPrivateKey) or private_key.key_size != 2048:
            raise self.fail(where, "must be an RSA-2048 key")
        cert_name, certificate = cert
        if certificate.public_key() != private_key.public_key():
            raise self.fail(where, f"does not match keys.{cert_name}")
        return private_key
