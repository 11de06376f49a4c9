"""The free storage area (空き領域) as profiles declare it: `[free_area]` and its applications.

An application is one TOML table, under `[[free_area.apps]]` in a profile or alone in a file
for `mynacard freearea install`:

    name = "taxi"                      # letters a-z, digits, '-', '_'
    aid = "F0544158490001"             # 5-16 bytes, hex
    description = "..."                # optional
    [[files]]                          # EFs, FID 0001-001E (each has an SFI)
    fid = "0002"
    type = "counter"                   # transparent | record | counter | rsa_key
    ...                                # sizes, initial content, access per operation
    [[pins]]                           # application PINs, each with its own counter
    fid = "0011"
    value = "1234"
    [[keys]]                           # AES-128 keys for EXTERNAL AUTHENTICATE
    id = 1
    aes = "000102030405060708090A0B0C0D0E0F"

Access rules per operation: "always", "never", "pin:<FID>" (that PIN verified), "key:<id>"
(EXTERNAL AUTHENTICATE with that key done), or a list of rules of which any one opens it.
This module only reads and writes the declarations; `mynacard.apps.free_area` builds them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from mynacard.personalize.fields import Field, FieldError, Table
from mynacard.personalize.rsakeys import read_rsa_key

DEFAULT_CAPACITY = 4096  # bytes; the real card's free area size is not public
MAX_CAPACITY = 1 << 20
FILLER = 0xFF  # transparent EFs are filled with FF after their initial content

# What each kind of object costs of the capacity, besides the EF allocations.
PIN_COST = 16  # the longest value VERIFY takes
AES_KEY_COST = 16
RSA_KEY_COST = 896  # RSA-2048 in CRT form (p, q, dP, dQ, qInv: 640 bytes) and the modulus

# The national applications and the GlobalPlatform ISD (card-spec appendix). SELECT matches
# by prefix, so a free-area AID may neither be a prefix of one of them nor start with one.
RESERVED_AIDS: dict[bytes, str] = {
    bytes.fromhex("D392F000260100000001"): "the JPKI-AP",
    bytes.fromhex("D3921000310001010408"): "the 券面事項入力補助AP",
    bytes.fromhex("D3921000310001010402"): "the 券面事項確認AP",
    bytes.fromhex("D3921000310001010401"): "the 住基AP",
    bytes.fromhex("D3921000310001010100"): "the 共通カードAP",
    bytes.fromhex("A0000001510000"): "the GlobalPlatform ISD",
}

# Registered application providers (first 5 bytes of an AID) under which middleware selects
# AIDs to probe an unknown card; OpenSC's drivers probe these. A free-area AID under one of
# them could answer a probe (prefix selection) and make the card look like another kind.
PROBED_RIDS: dict[bytes, str] = {
    bytes.fromhex(rid): who
    for rid, who in (
        ("A000000001", "MUSCLE"),
        ("A000000003", "GlobalPlatform card managers"),
        ("A000000018", "Gemalto GemSAFE/IDPrime"),
        ("A000000063", "PKCS#15 applications"),
        ("A000000077", "Oberthur/IAS-ECC"),
        ("A000000079", "DoD CAC"),
        ("A000000116", "GSA CAC/CoolKey"),
        ("A000000164", "ASEPCOS"),
        ("A000000167", "German eSign"),
        ("A000000245", "STARCOS eSign"),
        ("A000000247", "ICAO eMRTD/nPA"),
        ("A000000308", "PIV"),
        ("A000000397", "GIDS"),
        ("4D494F4D43", "IAS-ECC (MIOMCT)"),
        ("604632FF00", "GemSAFE PTEID"),
        ("627601FF00", "CoolKey"),
        ("D276000124", "OpenPGP"),
        ("D276000180", "NQ-Applet"),
        ("E80704007F", "BSI eID"),
        ("E82B060104", "SmartCard-HSM"),
        ("F276A288BC", "IsoApplet"),
    )
}

OPERATIONS: dict[str, tuple[str, ...]] = {
    "transparent": ("read", "update"),
    "record": ("read", "update", "append"),
    "counter": ("read", "update", "decrease", "increase"),
    "rsa_key": ("use",),
}
_OPEN_BY_DEFAULT = ("read", "use")  # other operations default to "never"

_SHAPES = {
    "transparent": ("size", "content"),
    "record": ("record_size", "max_records", "records"),
    "counter": ("width", "maximum", "values"),
    "rsa_key": ("private_key",),
}

APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_FID = re.compile(r"00(0[1-9A-Fa-f]|1[0-9A-Ea-e])")  # 0001 to 001E
_RULE = re.compile(r"always|never|pin:[0-9A-Fa-f]{4}|key:[0-9]{1,2}")
_RULES = 'a rule: "always", "never", "pin:<FID>" or "key:<id>"'
_PIN_VALUE = re.compile(r"[\x00-\x7f]{1,16}")
_T = TypeVar("_T")

Fail = Callable[[str, str], Exception]
"""Makes the error for a field (`where`, `problem`); the caller raises it."""


def _aid_clash(aid: bytes, other: bytes) -> bool:
    return aid.startswith(other) or other.startswith(aid)


def aid_problem(aid: bytes) -> str | None:
    """Why `aid` cannot name a free-area application, or None if it can."""
    if not 5 <= len(aid) <= 16:
        return f"must be 5 to 16 bytes, got {len(aid)}"
    for reserved, owner in RESERVED_AIDS.items():
        if _aid_clash(aid, reserved):
            return f"clashes with {owner} ({reserved.hex().upper()}): SELECT matches prefixes"
    for rid, owner in PROBED_RIDS.items():
        if aid.startswith(rid):
            return f"is under RID {rid.hex().upper()} ({owner}), which middleware probes"
    return None


@dataclass(frozen=True)
class TransparentSpec:
    fid: int
    access: Mapping[str, tuple[str, ...]]
    size: int
    content: bytes  # initial content, without the filler

    @property
    def allocation(self) -> int:
        return self.size


@dataclass(frozen=True)
class RecordSpec:
    """A linear record EF: up to `max_records` records of 1..`record_size` bytes."""

    fid: int
    access: Mapping[str, tuple[str, ...]]
    record_size: int
    max_records: int
    records: tuple[bytes, ...]

    @property
    def allocation(self) -> int:
        return self.record_size * self.max_records


@dataclass(frozen=True)
class CounterSpec:
    """A record EF of counters, each a `width`-byte big-endian unsigned value <= maximum."""

    fid: int
    access: Mapping[str, tuple[str, ...]]
    width: int
    maximum: int
    values: tuple[int, ...]

    @property
    def allocation(self) -> int:
        return self.width * len(self.values)


@dataclass(frozen=True)
class RsaKeySpec:
    """An RSA-2048 key EF answering INTERNAL AUTHENTICATE; its public half is not on the card."""

    fid: int
    access: Mapping[str, tuple[str, ...]]
    key: RSAPrivateKey

    @property
    def allocation(self) -> int:
        return RSA_KEY_COST


FileSpec = TransparentSpec | RecordSpec | CounterSpec | RsaKeySpec


@dataclass(frozen=True)
class PinSpec:
    fid: int
    value: str
    tries: int
    value_format: str  # regular expression every value (also a changed one) must match


@dataclass(frozen=True)
class KeySpec:
    """An AES-128 key for EXTERNAL AUTHENTICATE; `tries` None = unlimited (6300 when wrong)."""

    number: int
    value: bytes
    tries: int | None


@dataclass(frozen=True)
class FreeAppSpec:
    name: str
    aid: bytes
    description: str
    files: tuple[FileSpec, ...]
    pins: tuple[PinSpec, ...]
    keys: tuple[KeySpec, ...]
    table: Mapping[str, object]  # the declaration as read, kept in the card state

    @property
    def size(self) -> int:
        """Bytes of the free area this application takes."""
        return (
            sum(spec.allocation for spec in self.files)
            + PIN_COST * len(self.pins)
            + AES_KEY_COST * len(self.keys)
        )

    def definition(self) -> str:
        """The declaration as JSON, the form the card state keeps."""
        return json.dumps(self.table, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class FreeAreaSpec:
    capacity: int = DEFAULT_CAPACITY
    apps: tuple[FreeAppSpec, ...] = ()


def free_area_from(field: Field) -> FreeAreaSpec:
    """A profile's `[free_area]` table (absent: the default capacity and no applications)."""
    area = field.table(("capacity", "apps"), optional=True)
    capacity = area["capacity"].integer(0, MAX_CAPACITY, DEFAULT_CAPACITY)
    tables = area["apps"].tables()
    apps = [app_from(table) for table in tables]
    for n, app in enumerate(apps):
        for other in apps[:n]:
            if app.name == other.name:
                raise tables[n]["name"].fail("a name no other application has", repr(app.name))
            if _aid_clash(app.aid, other.aid):
                raise tables[n]["aid"].fail(
                    f"an AID of its own (clashes with {other.name!r} "
                    f"({other.aid.hex().upper()}): SELECT matches prefixes)"
                )
    used = sum(app.size for app in apps)
    if used > capacity:
        raise area["capacity"].fail(
            f"at least {used} (the bytes the applications take)", str(capacity)
        )
    return FreeAreaSpec(capacity, tuple(apps))


def app_from(field: Field) -> FreeAppSpec:
    """One application declaration (a `[[free_area.apps]]` entry, or an install file)."""
    app = field.table(("name", "aid", "description", "files", "pins", "keys"))
    name = app["name"].text(
        pattern=APP_NAME, expected="a name of a-z, 0-9, '-' and '_' (at most 32)"
    )
    aid = app["aid"].hex(5, 16)
    problem = aid_problem(aid)
    if problem:
        raise app["aid"].fail(f"an AID of its own ({problem})")
    description = app["description"].text("")
    pins = tuple(_pin(pin) for pin in app["pins"].tables(("fid", "value", "tries", "format")))
    keys = tuple(_key(key) for key in app["keys"].tables(("id", "aes", "tries")))
    tables = app["files"].tables()
    files = tuple(_file(table) for table in tables)
    fids = [obj.fid for obj in (*files, *pins)]
    for fid in fids:
        if fids.count(fid) > 1:
            raise app["files"].fail("each FID once in files and pins", f"{fid:04X} twice")
    numbers = [key.number for key in keys]
    if len(set(numbers)) != len(numbers):
        raise app["keys"].fail("each key id once")
    pin_fids = {pin.fid for pin in pins}
    for table, spec in zip(tables, files, strict=True):
        for operation, rules in spec.access.items():
            for rule in rules:
                kind, _, ref = rule.partition(":")
                if (kind == "pin" and int(ref, 16) not in pin_fids) or (
                    kind == "key" and int(ref) not in numbers
                ):
                    raise table[operation].fail(
                        "a rule naming a PIN or key of this application", repr(rule)
                    )
    return FreeAppSpec(name, aid, description, files, pins, keys, app.value)


def _file(field: Table) -> FileSpec:
    kind = field["type"].choice(tuple(OPERATIONS))
    file = field.table(("fid", "type", *_SHAPES[kind], *OPERATIONS[kind]))
    fid = _fid(file["fid"])
    access = {operation: _rules(file[operation], operation) for operation in OPERATIONS[kind]}
    if kind == "transparent":
        size = file["size"].integer(1, 0x7FFF)
        return TransparentSpec(fid, access, size, file["content"].hex(0, size, ""))
    if kind == "record":
        record_size = file["record_size"].integer(1, 255)
        max_records = file["max_records"].integer(1, 254)
        records = file["records"].items(0, max_records, [])
        parsed = tuple(record.hex(1, record_size) for record in records)
        return RecordSpec(fid, access, record_size, max_records, parsed)
    if kind == "counter":
        width = file["width"].integer(1, 4, 4)
        largest = (1 << 8 * width) - 1
        maximum = file["maximum"].integer(0, largest, largest)
        values = tuple(value.integer(0, maximum) for value in file["values"].items(1, 254))
        return CounterSpec(fid, access, width, maximum, values)
    return RsaKeySpec(fid, access, read_rsa_key(file["private_key"]))


def _fid(field: Field) -> int:
    return int(field.text(pattern=_FID, expected="a 4-digit hex FID 0001 to 001E"), 16)


def _rules(field: Field, operation: str) -> tuple[str, ...]:
    default = "always" if operation in _OPEN_BY_DEFAULT else "never"
    if isinstance(field.value, list):
        rules = tuple(rule.text(pattern=_RULE, expected=_RULES) for rule in field.items(1))
    else:
        rules = (field.text(default, pattern=_RULE, expected=_RULES),)
    if len(rules) > 1 and ("always" in rules or "never" in rules):
        raise field.fail('"always" and "never" alone, not in a list')
    return rules


def _pin(pin: Table) -> PinSpec:
    fid = _fid(pin["fid"])
    value_format = pin["format"].text("[0-9]{4}")
    try:
        re.compile(value_format)
    except re.error as exc:
        raise pin["format"].fail(f"a regular expression ({exc})") from None
    value = pin["value"].text(pattern=_PIN_VALUE, expected="1 to 16 ASCII characters")
    if not re.fullmatch(value_format, value):
        raise pin["value"].fail(f"a value of format {value_format!r}", repr(value))
    return PinSpec(fid, value, pin["tries"].integer(1, 15, 3), value_format)


def _key(key: Table) -> KeySpec:
    tries = key["tries"].integer(1, 15) if "tries" in key else None
    return KeySpec(key["id"].integer(1, 31), key["aes"].hex(16, 16), tries)


def read_free_area(value: object, fail: Fail) -> FreeAreaSpec:
    """The `[free_area]` table of a profile (None: the default capacity and no applications)."""
    return _reporting(fail, free_area_from, Field(value, "", "free_area"))


def read_app(value: object, fail: Fail, where: str = "app") -> FreeAppSpec:
    """One application declaration (a `[[free_area.apps]]` entry, or an install file)."""
    return _reporting(fail, app_from, Field(value, "", where))


def _reporting(fail: Fail, read: Callable[[Field], _T], field: Field) -> _T:
    """`read(field)`, its FieldError made into `fail(path, problem)`."""
    try:
        return read(field)
    except FieldError as exc:
        raise fail(exc.path, exc.problem) from None


def free_area_as_json(spec: FreeAreaSpec) -> dict[str, object]:
    """A summary for `mynacard profile show --json`: capacity and applications, no keys."""
    return {
        "capacity": spec.capacity,
        "apps": [
            {"name": app.name, "aid": app.aid.hex().upper(), "size": app.size} for app in spec.apps
        ],
    }


# -- writing declarations: the example applications of `mynacard profile new --free-area` --


def render_free_area(apps: Sequence[Mapping[str, object]], capacity: int = DEFAULT_CAPACITY) -> str:
    """The `[free_area]` section of a profile holding `apps` (tables as `read_app` takes)."""
    lines = ["[free_area]", f"capacity = {capacity}"]
    for app in apps:
        lines += ["", "[[free_area.apps]]"]
        groups = {key: value for key, value in app.items() if _is_table_array(value)}
        lines += [f"{key} = {_toml(value)}" for key, value in app.items() if key not in groups]
        for group, entries in groups.items():
            assert isinstance(entries, list)
            for entry in entries:
                lines += ["", f"[[free_area.apps.{group}]]"]
                lines += [f"{key} = {_toml(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "\n" in value:  # PEM keys
            return f"'''\n{value}'''"
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


EXAMPLES = ("library", "taxi", "entry")
"""The example applications `mynacard profile new --free-area NAME` can add."""


def example_app(
    example: str,
    rng: random.Random,
    *,
    municipality_code: str,
    valid_until: date,
    new_rsa_key_pem: Callable[[], str],
) -> dict[str, object]:
    """The declaration of one example application, its numbers and keys drawn from `rng`."""
    until = valid_until.strftime("%Y%m%d").encode()

    def digits(count: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(count))

    def simple_tlv(*objects: tuple[int, bytes]) -> str:
        return b"".join(bytes((tag, len(value))) + value for tag, value in objects).hex().upper()

    def aes_key() -> str:
        return rng.randbytes(16).hex().upper()

    if example == "library":
        return {
            "name": "library",
            "aid": "F04C49425241525901",
            "description": "Public library card: patron number read without a PIN (かざし利用)",
            "files": [
                {
                    "fid": "0001",
                    "type": "transparent",
                    "size": 32,
                    # 01 municipality code, 02 patron number, 03 valid until (simple-TLV)
                    "content": simple_tlv(
                        (0x01, municipality_code.encode()),
                        (0x02, digits(10).encode()),
                        (0x03, until),
                    ),
                    "read": "always",
                    "update": "key:1",
                },
                {
                    "fid": "0002",
                    "type": "record",
                    "record_size": 16,
                    "max_records": 8,
                    "records": [],
                    "read": "always",
                    "append": "key:1",
                    "update": "key:1",
                },
            ],
            "keys": [{"id": 1, "aes": aes_key()}],
        }
    if example == "taxi":
        return {
            "name": "taxi",
            "aid": "F0544158490001",
            "description": "Taxi fare-subsidy tickets (タクシー料金助成券): one ticket per ride",
            "files": [
                {
                    "fid": "0001",
                    "type": "transparent",
                    "size": 32,
                    # 01 municipality code, 02 grant number, 03 valid until (simple-TLV)
                    "content": simple_tlv(
                        (0x01, municipality_code.encode()),
                        (0x02, digits(8).encode()),
                        (0x03, until),
                    ),
                    "read": "always",
                },
                {
                    "fid": "0002",
                    "type": "counter",
                    "width": 4,
                    "maximum": 48,
                    "values": [24],
                    "read": "always",
                    "decrease": "key:1",
                    "increase": "key:2",
                },
                {
                    "fid": "0003",
                    "type": "record",
                    "record_size": 16,
                    "max_records": 48,
                    "records": [],
                    "read": "pin:0011",
                    "append": "key:1",
                },
            ],
            "pins": [{"fid": "0011", "value": digits(4), "tries": 3}],
            "keys": [
                {"id": 1, "aes": aes_key(), "tries": 5},  # the taxi meter's key
                {"id": 2, "aes": aes_key(), "tries": 3},  # the municipal office's key
            ],
        }
    if example == "entry":
        return {
            "name": "entry",
            "aid": "F0454E5452590001",
            "description": "Building-entry ID: the gate checks the card by INTERNAL AUTHENTICATE",
            "files": [
                {
                    "fid": "0001",
                    "type": "transparent",
                    "size": 24,
                    # 01 employee number, 02 valid until (simple-TLV)
                    "content": simple_tlv((0x01, digits(8).encode()), (0x02, until)),
                    "read": "always",
                },
                {
                    "fid": "0002",
                    "type": "rsa_key",
                    "private_key": new_rsa_key_pem(),
                    "use": "always",
                },
            ],
        }
    raise ValueError(f"no example free-area application {example!r} (known: {EXAMPLES})")
