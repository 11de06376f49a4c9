"""`mynacard profile new`: write a complete profile with a made-up holder and test keys."""

from __future__ import annotations

import functools
import random
import secrets
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import PIL
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from mynacard.personalize.free_area import EXAMPLES, example_app, render_free_area
from mynacard.personalize.national_sections import national_sections
from mynacard.personalize.persona import JST, SIGN_CERT_MIN_AGE, Persona, make_persona
from mynacard.personalize.profile import (
    DEFAULT_ATR,
    FORMS,
    PIN_MAX_TRIES,
    PROFILE_NAME,
    SET_PIN_NAMES,
    ProfileError,
    Quirks,
    parse_profile,
)
from mynacard.personalize.rsakeys import new_rsa_key
from mynacard.personalize.testca import (
    CardholderCert,
    CertKind,
    TestCa,
    make_auth_cert,
    make_sign_cert,
    make_test_ca,
    shared_test_ca,
)

# Seeded profiles are issued on a day of 2025 chosen by the seed, so their dates never drift.
SEEDED_ISSUE_START = datetime(2025, 1, 6, tzinfo=JST)
_OPAQUE_ID_ALPHABET = string.digits + string.ascii_uppercase
# 全国地方公共団体コード (JIS X 0402, without the check digit) of the persona municipalities.
MUNICIPALITY_CODES = {
    "千代田区": "13101",
    "世田谷区": "13112",
    "つくば市": "08220",
    "豊中市": "27203",
    "函館市": "01202",
    "岡崎市": "23202",
    "宇治市": "26204",
    "石巻市": "04202",
    "松本市": "20202",
    "久留米市": "40203",
    "那覇市": "47201",
}


def new_profile(
    path: Path,
    seed: int | None = None,
    *,
    sign_cert: bool = True,
    variant: str = "standard",
    description: str | None = None,
    holder_age: int | None = None,
    pins: Mapping[str, str] | None = None,
    counters: Mapping[str, int] | None = None,
    atr: str = DEFAULT_ATR.hex().upper(),
    overwrite: bool = False,
    free_area: Sequence[str] = (),
    holder_name: str | None = None,
    unified_pin: bool = False,
    form: str = "card",
) -> Path:
    """Write a new profile file at `path` and return `path`.

    With a seed the file is byte-identical on every run (persona, keys, certificates and
    dates all follow from it, and seeded profiles share one test CA); without one everything
    is random and the card is issued now. `pins` overrides any of auth, sign, text, juki and
    common; `counters` sets initial remaining tries; `free_area` names example free-area
    applications to install (free_area.EXAMPLES); `holder_name` replaces the made-up
    name (family name, U+3000, given name); `unified_pin` gives the JPKI auth, text, 住基
    and 共通 PINs one value (docs/decisions.md #14), else they differ; `form` is the card or
    a smartphone (profile.FORMS). Raises ProfileError for a
    bad argument or an existing file (unless `overwrite`); nothing is written then.
    """
    if path.suffix != ".toml" or not PROFILE_NAME.fullmatch(path.stem):
        raise ProfileError(
            f"{path}: name the file <profile name>.toml, the name made of letters, digits, "
            "'.', '_' and '-'"
        )
    if path.exists() and not overwrite:
        raise ProfileError(f"{path}: already exists")
    if form not in FORMS:
        raise ProfileError(f"form: one of {', '.join(FORMS)}, got {form!r}")
    if holder_age is not None and not 0 <= holder_age <= 120:
        raise ProfileError(f"holder_age: must be 0 to 120, got {holder_age}")
    if sign_cert and holder_age is not None and holder_age < SIGN_CERT_MIN_AGE:
        raise ProfileError(
            f"holder_age: holders under {SIGN_CERT_MIN_AGE} get no signature certificate; "
            "use sign_cert=False"
        )
    pins = dict(pins or {})
    counters = dict(counters or {})
    for name in pins:
        if name not in SET_PIN_NAMES:
            raise ProfileError(f"pins.{name}: only {', '.join(SET_PIN_NAMES)} can be set")
    for example in free_area:
        if example not in EXAMPLES:
            raise ProfileError(f"free_area: no example {example!r} (known: {', '.join(EXAMPLES)})")

    rng: random.Random = (
        secrets.SystemRandom() if seed is None else random.Random(f"mynacard/{seed}/persona")
    )
    if seed is None:
        issued_at = datetime.now(JST).replace(microsecond=0)
    else:
        issued_at = SEEDED_ISSUE_START + timedelta(
            days=rng.randrange(360), seconds=rng.randrange(9 * 3600, 17 * 3600)
        )
    persona = make_persona(rng, issued_at, holder_age)
    if holder_name is not None:
        persona = replace(persona, holder=replace(persona.holder, name=holder_name))
    four_digit = [persona.pin] * 4 if unified_pin else _distinct_pins(persona.pin, seed)
    pin_values = (
        dict(zip(("auth", "text", "juki", "common"), four_digit, strict=True))
        | {"sign": persona.sign_password}
        | pins
    )

    auth_ca = _test_ca("auth", seed, issued_at, rng)
    sign_ca = _test_ca("sign", seed, issued_at, rng)
    auth_key = new_rsa_key(None if seed is None else f"mynacard/{seed}/auth-key")
    auth_cert = make_auth_cert(auth_ca, _cardholder_cert(rng, persona, auth_key, "auth"))
    keys: dict[str, str] = {
        "auth_key": _private_key_pem(auth_key),
        "auth_cert": _cert_pem(auth_cert),
        "auth_ca_cert": _cert_pem(auth_ca.cert),
    }
    if sign_cert:
        sign_key = new_rsa_key(None if seed is None else f"mynacard/{seed}/sign-key")
        request = _cardholder_cert(rng, persona, sign_key, "sign")
        keys["sign_key"] = _private_key_pem(sign_key)
        keys["sign_cert"] = _cert_pem(make_sign_cert(sign_ca, request, persona.holder))
    keys["sign_ca_cert"] = _cert_pem(sign_ca.cert)
    keys["common_auth_key"] = _private_key_pem(
        new_rsa_key(None if seed is None else f"mynacard/{seed}/common-auth-key")
    )
    card_rng = _seeded_rng(seed, "card-serial")
    card_serial = "".join(card_rng.choice(string.digits) for _ in range(15))
    municipality_code = MUNICIPALITY_CODES[persona.place.municipality]
    national = national_sections(seed, persona, municipality_code)
    free_area_apps = [
        example_app(
            example,
            _seeded_rng(seed, f"free-area/{example}"),
            municipality_code=municipality_code,
            valid_until=persona.card_expiry,
            new_rsa_key_pem=functools.partial(_free_area_key_pem, seed, example),
        )
        for example in free_area
    ]

    command = _equivalent_command(
        path, seed, sign_cert, variant, description, holder_age, pins, counters, atr
    ) + [["--free-area", example] for example in free_area]
    if holder_name is not None:
        command.append(["--name", holder_name])
    if unified_pin:
        command.append(["--unified-pin"])
    if form != "card":
        command.append(["--form", form])
    if description is None:
        description = "Made-up holder" + (f" (seed {seed})" if seed is not None else "")
    text = render_profile(
        name=path.stem,
        description=description,
        atr=atr,
        variant=variant,
        form=form,
        persona=persona,
        sign_cert=sign_cert,
        pins=pin_values,
        counters=counters,
        keys=keys,
        command=command,
        reproducible=seed is not None,
        card_serial=card_serial,
        municipality_code=municipality_code,
        free_area=render_free_area(free_area_apps) if free_area_apps else "",
        national=national,
    )
    data = text.encode("utf-8")
    parse_profile(data, path=path, label=str(path))  # refuse to write an unloadable profile
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("wb" if overwrite else "xb") as file:
            file.write(data)
    except FileExistsError:
        raise ProfileError(f"{path}: already exists") from None
    return path


def render_profile(
    *,
    name: str,
    description: str,
    atr: str,
    variant: str,
    form: str,
    persona: Persona,
    sign_cert: bool,
    pins: Mapping[str, str],
    counters: Mapping[str, int],
    keys: Mapping[str, str],
    command: list[list[str]],
    reproducible: bool,
    card_serial: str,
    municipality_code: str,
    free_area: str = "",
    national: Sequence[str] = (),
) -> str:
    """The text of a profile file (TOML with a comment header).

    `command` is the `mynacard profile new` command line in groups (an option with its value)
    that are kept together when the header wraps it. `free_area` is the rendered
    [free_area] section, or "" for none.
    """
    holder = persona.holder
    made_by = (
        "# Made by (re-create it byte for byte with):"
        if reproducible
        else "# Made without --seed (random: it cannot be re-made) by:"
    )
    quirks = Quirks()
    lines = [
        f"# mynacard profile {name!r}: a made-up My Number Card holder for testing.",
        made_by,
        *_command_comment(command),
        "#",
        f"# Pillow {PIL.__version__} drew the images: another release draws the same pixels",
        "# in other bytes.",
        "# TEST KEYS: the private keys and certificates in [keys] are test keys made by",
        "# `mynacard profile new` under a test CA (O=JPKI-TEST). They are worthless outside",
        "# testing: nothing trusts them, and seeded keys can be re-made by anyone.",
        "# Every person, number and address in this file is made up.",
        "",
        "[profile]",
        f"name = {_toml_string(name)}",
        f"description = {_toml_string(description)}",
        "# hex bytes, or a name from docs/card-spec.md §1: jpki, jpki-02 ... jpki-09",
        f"atr = {_toml_string(atr)}",
        f"variant = {_toml_string(variant)}",
        *([] if form == "card" else [f"form = {_toml_string(form)}  # only the JPKI-AP"]),
        "",
        "[holder]",
        f"name = {_toml_string(holder.name)}",
        f"address = {_toml_string(holder.address)}",
        f"birth_date = {holder.birth_date.isoformat()}",
        f"sex = {_toml_string(holder.sex)}  # 1 male, 2 female, 3 unknown",
        "",
        "[card]",
        f"my_number = {_toml_string(persona.my_number)}",
        f"expiry = {persona.card_expiry.isoformat()}",
        f"security_code = {_toml_string(persona.security_code)}",
        f"resident_code = {_toml_string(persona.resident_code)}  # 住民票コード",
        f"serial_number = {_toml_string(card_serial)}  # 共通カードAP EF 0001",
        f"municipality_code = {_toml_string(municipality_code)}  # 全国地方公共団体コード",
        "",
        "[certificates]",
        f"sign = {_toml_bool(sign_cert)}",
        "auth = true",
        "",
        "[pins]",
        "# code_a (照合番号A), code_b (照合番号B) and birth (生年月日 key) are derived",
        "# from [holder] and [card].",
        *(f"{pin} = {_toml_string(pins[pin])}" for pin in SET_PIN_NAMES),
        "",
        "[counters]",
        "# Remaining tries at first use; 0 = blocked; absent = full:",
        "# " + ", ".join(f"{pin} {most}" for pin, most in PIN_MAX_TRIES.items()),
        *(f"{pin} = {counters[pin]}" for pin in counters),
        "",
        "[quirks]",
        "# Behaviours where sources disagree (docs/decisions.md); these are the defaults.",
        f"blocked_sw = 0x{quirks.blocked_sw:04X}  # or 0x6983",
        f"reselect_clears_state = {_toml_bool(quirks.reselect_clears_state)}",
        "# verified_query_sw = 0x9000  # answer 9000 to a retry query on a verified PIN",
        f"filler = 0x{quirks.filler:02X}  # or 0x00",
        f"extended_length = {_toml_bool(quirks.extended_length)}",
        f"t0_chaining = {_toml_bool(quirks.t0_chaining)}",
        "",
        "[keys]",
        "test_only = true",
        *(f"{key} = '''\n{pem}'''" for key, pem in keys.items()),
        *national,
    ]
    return "\n".join(lines) + "\n" + ("\n" + free_area if free_area else "")


def _free_area_key_pem(seed: int | None, example: str) -> str:
    return _private_key_pem(
        new_rsa_key(None if seed is None else f"mynacard/{seed}/free-area/{example}/key")
    )


def _distinct_pins(auth_pin: str, seed: int | None) -> list[str]:
    """Four different 4-digit PINs, the first `auth_pin` (auth, text, juki, common)."""
    rng = _seeded_rng(seed, "pins")
    values = [auth_pin]
    while len(values) < 4:
        value = f"{rng.randrange(10_000):04d}"
        if value not in values:
            values.append(value)
    return values


def _seeded_rng(seed: int | None, purpose: str) -> random.Random:
    """A random stream of its own for `purpose`, so adding one leaves the others unchanged."""
    return secrets.SystemRandom() if seed is None else random.Random(f"mynacard/{seed}/{purpose}")


def _equivalent_command(
    path: Path,
    seed: int | None,
    sign_cert: bool,
    variant: str,
    description: str | None,
    holder_age: int | None,
    pins: Mapping[str, str],
    counters: Mapping[str, int],
    atr: str,
) -> list[list[str]]:
    """The `mynacard profile new` command line for these arguments, in option groups."""
    command = [["mynacard", "profile", "new", str(path)]]
    if seed is not None:
        command.append(["--seed", str(seed)])
    if not sign_cert:
        command.append(["--no-sign-cert"])
    if variant != "standard":
        command.append(["--variant", variant])
    if description is not None:
        command.append(["--description", description])
    if holder_age is not None:
        command.append(["--age", str(holder_age)])
    command += [["--pin", f"{name}={value}"] for name, value in pins.items()]
    command += [["--counter", f"{name}={tries}"] for name, tries in counters.items()]
    if atr != DEFAULT_ATR.hex().upper():
        command.append(["--atr", atr])
    return command


def _command_comment(command: list[list[str]]) -> list[str]:
    """`command` as comment lines of about 90 columns, continued shell-style."""
    lines: list[str] = []
    line = "#  "
    for group in command:
        words = shlex.join(group)
        if len(line) + len(words) > 88 and line.strip("# "):
            lines.append(line + " \\")
            line = "#     "
        line += " " + words
    return [*lines, line]


def _test_ca(kind: CertKind, seed: int | None, issued_at: datetime, rng: random.Random) -> TestCa:
    """The shared seeded test CA, or a fresh one valid from the day before issue for 10 years."""
    if seed is not None:
        return shared_test_ca(kind)
    not_before = datetime.combine(issued_at.date() - timedelta(days=1), time(0, 0), UTC)
    not_after = datetime(issued_at.year + 10, 12, 31, 14, 59, 59, tzinfo=UTC)
    serial = rng.randrange(0x10000000, 0x80000000)
    return make_test_ca(kind, new_rsa_key(None), serial, not_before, not_after)


def _cardholder_cert(
    rng: random.Random, persona: Persona, key: RSAPrivateKey, kind: CertKind
) -> CardholderCert:
    """Serial, opaque subject id and validity of one of the holder's certificates."""
    if kind == "auth":
        common_name = "".join(rng.choice(_OPAQUE_ID_ALPHABET) for _ in range(22)) + "A"
    else:  # issuance time + 13 digits + "A", like 202502240907273800303201003A
        stamp = persona.issued_at.astimezone(JST).strftime("%Y%m%d%H%M%S")
        common_name = stamp + "".join(rng.choice(string.digits) for _ in range(13)) + "A"
    return CardholderCert(
        public_key=key.public_key(),
        serial=rng.randrange(0x10000000, 0x80000000),
        common_name=common_name,
        not_before=persona.issued_at.astimezone(UTC),
        not_after=datetime.combine(persona.cert_expiry, time(14, 59, 59), UTC),
        prefecture_romaji=persona.place.prefecture_romaji,
        municipality_romaji=persona.place.municipality_romaji,
    )


def _private_key_pem(key: RSAPrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"


def _toml_string(text: str) -> str:
    """A TOML basic string; non-ASCII text stays as UTF-8."""
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
