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

import functools
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

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

APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_RULE = re.compile(r"always|never|pin:[0-9A-Fa-f]{4}|key:[0-9]{1,2}")
_HEX_SPACES = re.compile(r"[\s:]")

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


@functools.lru_cache(maxsize=32)
def _load_rsa_key(pem: str) -> RSAPrivateKey | None:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, RSAPrivateKey) and key.key_size == 2048 else None


class _Reader:
    """Reads declarations, reporting problems through `fail` with the field's path."""

    def __init__(self, fail: Fail) -> None:
        self.fail = fail

    def table(self, value: object, where: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        return value

    def tables(self, value: object, where: str) -> list[dict[str, object]]:
        if not isinstance(value, list):
            raise self.fail(where, "must be an array of tables ([[...]])")
        return [self.table(item, f"{where}[{n}]") for n, item in enumerate(value)]

    def known(self, table: dict[str, object], where: str, keys: Sequence[str]) -> None:
        for key in table:
            if key not in keys:
                raise self.fail(f"{where}.{key}", "unknown field")

    def integer(
        self,
        table: dict[str, object],
        where: str,
        key: str,
        low: int,
        high: int,
        default: int | None = None,
    ) -> int:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where}.{key}", "missing")
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(f"{where}.{key}", f"must be an integer {low} to {high}, got {value!r}")
        return value

    def text(self, table: dict[str, object], where: str, key: str, default: str | None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", "missing" if value is None else "must be a string")
        return value

    def hex_bytes(self, value: object, where: str) -> bytes:
        if not isinstance(value, str):
            raise self.fail(where, "must be a string of hex digits")
        try:
            return bytes.fromhex(_HEX_SPACES.sub("", value))
        except ValueError:
            raise self.fail(where, f"must be hex digits, got {value!r}") from None

    def fid(self, table: dict[str, object], where: str) -> int:
        text = self.text(table, where, "fid", None)
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", text) or not 0x0001 <= int(text, 16) <= 0x001E:
            raise self.fail(f"{where}.fid", f"must be 0001 to 001E (4 hex digits), got {text!r}")
        return int(text, 16)

    def rules(self, table: dict[str, object], where: str, operation: str) -> tuple[str, ...]:
        value = table.get(operation, "always" if operation in _OPEN_BY_DEFAULT else "never")
        rules = [value] if isinstance(value, str) else value
        if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
            raise self.fail(f"{where}.{operation}", "must be a rule or a list of rules")
        for rule in rules:
            if not _RULE.fullmatch(rule):
                raise self.fail(
                    f"{where}.{operation}",
                    f'rules are "always", "never", "pin:<FID>" or "key:<id>"; got {rule!r}',
                )
        if len(rules) > 1 and ("always" in rules or "never" in rules):
            raise self.fail(f"{where}.{operation}", '"always" and "never" stand alone')
        return tuple(rules)

    # -- applications ------------------------------------------------------------------------

    def free_area(self, value: object, where: str) -> FreeAreaSpec:
        if value is None:
            return FreeAreaSpec()
        table = self.table(value, where)
        self.known(table, where, ("capacity", "apps"))
        capacity = self.integer(table, where, "capacity", 0, MAX_CAPACITY, DEFAULT_CAPACITY)
        apps = tuple(
            self.app(app, f"{where}.apps[{n}]")
            for n, app in enumerate(self.tables(table.get("apps", []), f"{where}.apps"))
        )
        for n, app in enumerate(apps):
            for other in apps[:n]:
                if app.name == other.name:
                    raise self.fail(f"{where}.apps[{n}].name", f"{app.name!r} is used twice")
                if _aid_clash(app.aid, other.aid):
                    raise self.fail(
                        f"{where}.apps[{n}].aid",
                        f"clashes with {other.name!r} ({other.aid.hex().upper()}): "
                        "SELECT matches prefixes",
                    )
        used = sum(app.size for app in apps)
        if used > capacity:
            raise self.fail(f"{where}.capacity", f"the applications take {used} bytes")
        return FreeAreaSpec(capacity, apps)

    def app(self, value: object, where: str) -> FreeAppSpec:
        table = self.table(value, where)
        self.known(table, where, ("name", "aid", "description", "files", "pins", "keys"))
        name = self.text(table, where, "name", None)
        if not APP_NAME.fullmatch(name):
            raise self.fail(f"{where}.name", f"use a-z, 0-9, '-' and '_' (≤ 32), got {name!r}")
        aid = self.hex_bytes(table.get("aid"), f"{where}.aid")
        problem = aid_problem(aid)
        if problem:
            raise self.fail(f"{where}.aid", problem)
        description = self.text(table, where, "description", "")
        pins = tuple(
            self.pin(pin, f"{where}.pins[{n}]")
            for n, pin in enumerate(self.tables(table.get("pins", []), f"{where}.pins"))
        )
        keys = tuple(
            self.key(key, f"{where}.keys[{n}]")
            for n, key in enumerate(self.tables(table.get("keys", []), f"{where}.keys"))
        )
        files = tuple(
            self.file(file, f"{where}.files[{n}]")
            for n, file in enumerate(self.tables(table.get("files", []), f"{where}.files"))
        )
        fids = [obj.fid for obj in (*files, *pins)]
        for fid in fids:
            if fids.count(fid) > 1:
                raise self.fail(f"{where}.files", f"FID {fid:04X} is used twice")
        numbers = [key.number for key in keys]
        if len(set(numbers)) != len(numbers):
            raise self.fail(f"{where}.keys", "a key id is used twice")
        pin_fids = {pin.fid for pin in pins}
        for n, spec in enumerate(files):
            for operation, rules in spec.access.items():
                for rule in rules:
                    kind, _, ref = rule.partition(":")
                    if kind == "pin" and int(ref, 16) not in pin_fids:
                        raise self.fail(f"{where}.files[{n}].{operation}", f"no PIN {ref} here")
                    if kind == "key" and int(ref) not in numbers:
                        raise self.fail(f"{where}.files[{n}].{operation}", f"no key {ref} here")
        return FreeAppSpec(name, aid, description, files, pins, keys, table)

    def file(self, table: dict[str, object], where: str) -> FileSpec:
        kind = self.text(table, where, "type", None)
        if kind not in OPERATIONS:
            raise self.fail(f"{where}.type", f"must be one of {', '.join(OPERATIONS)}")
        shape = {
            "transparent": ("size", "content"),
            "record": ("record_size", "max_records", "records"),
            "counter": ("width", "maximum", "values"),
            "rsa_key": ("private_key",),
        }[kind]
        self.known(table, where, ("fid", "type", *shape, *OPERATIONS[kind]))
        fid = self.fid(table, where)
        access = {operation: self.rules(table, where, operation) for operation in OPERATIONS[kind]}
        if kind == "transparent":
            size = self.integer(table, where, "size", 1, 0x7FFF)
            content = self.hex_bytes(table.get("content", ""), f"{where}.content")
            if len(content) > size:
                raise self.fail(f"{where}.content", f"{len(content)} bytes do not fit {size}")
            return TransparentSpec(fid, access, size, content)
        if kind == "record":
            record_size = self.integer(table, where, "record_size", 1, 255)
            max_records = self.integer(table, where, "max_records", 1, 254)
            records = table.get("records", [])
            if not isinstance(records, list) or len(records) > max_records:
                raise self.fail(f"{where}.records", f"must be a list of ≤ {max_records} records")
            parsed = tuple(
                self.hex_bytes(record, f"{where}.records[{n}]") for n, record in enumerate(records)
            )
            for n, record in enumerate(parsed):
                if not 1 <= len(record) <= record_size:
                    raise self.fail(f"{where}.records[{n}]", f"must be 1 to {record_size} bytes")
            return RecordSpec(fid, access, record_size, max_records, parsed)
        if kind == "counter":
            width = self.integer(table, where, "width", 1, 4, 4)
            largest = (1 << 8 * width) - 1
            maximum = self.integer(table, where, "maximum", 0, largest, largest)
            values = table.get("values")
            if not isinstance(values, list) or not 1 <= len(values) <= 254:
                raise self.fail(f"{where}.values", "must be a list of 1 to 254 counter values")
            for n, value in enumerate(values):
                if type(value) is not int or not 0 <= value <= maximum:
                    raise self.fail(f"{where}.values[{n}]", f"must be 0 to {maximum}")
            return CounterSpec(fid, access, width, maximum, tuple(values))
        key = _load_rsa_key(self.text(table, where, "private_key", None))
        if key is None:
            raise self.fail(f"{where}.private_key", "must be an unencrypted RSA-2048 PEM key")
        return RsaKeySpec(fid, access, key)

    def pin(self, table: dict[str, object], where: str) -> PinSpec:
        self.known(table, where, ("fid", "value", "tries", "format"))
        fid = self.fid(table, where)
        value_format = self.text(table, where, "format", "[0-9]{4}")
        try:
            re.compile(value_format)
        except re.error as exc:
            raise self.fail(f"{where}.format", f"not a regular expression ({exc})") from None
        value = self.text(table, where, "value", None)
        if not (value.isascii() and 1 <= len(value) <= 16):
            raise self.fail(f"{where}.value", "must be 1 to 16 ASCII characters")
        if not re.fullmatch(value_format, value):
            raise self.fail(f"{where}.value", f"does not match format {value_format!r}")
        return PinSpec(fid, value, self.integer(table, where, "tries", 1, 15, 3), value_format)

    def key(self, table: dict[str, object], where: str) -> KeySpec:
        self.known(table, where, ("id", "aes", "tries"))
        number = self.integer(table, where, "id", 1, 31)
        value = self.hex_bytes(table.get("aes"), f"{where}.aes")
        if len(value) != 16:
            raise self.fail(f"{where}.aes", f"must be 16 bytes (AES-128), got {len(value)}")
        tries = None if "tries" not in table else self.integer(table, where, "tries", 1, 15)
        return KeySpec(number, value, tries)


def read_free_area(value: object, fail: Fail) -> FreeAreaSpec:
    """The `[free_area]` table of a profile (None: the default capacity and no applications)."""
    return _Reader(fail).free_area(value, "free_area")


def read_app(value: object, fail: Fail, where: str = "app") -> FreeAppSpec:
    """One application declaration (a `[[free_area.apps]]` entry, or an install file)."""
    return _Reader(fail).app(value, where)


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
