"""The card state database as it is read: its records, the personalisation marker, and
every row checked before use. A state that is missing, empty, damaged, inconsistent or out of
range is a StateError naming the file and the fix (`damaged`), never a fresh card.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "card.sqlite"
LOCK_NAME = "card.lock"
MARKER_NAME = "card.personalised"
MAX_TRIES = 15  # the most a 63Cx status word can tell

_TABLES = ("meta", "pins", "free_apps", "free_files")
CAPACITY_KEY = "free_area_capacity"  # in meta; present once the free area is personalised


class StateError(RuntimeError):
    """A state directory that cannot be used as asked; the message says why."""


class StateLockedError(StateError):
    """The state directory is held by a live card."""


@dataclass(slots=True)
class PinState:
    """A PIN's live value and counter, mirrored in memory and written through."""

    name: str
    value: bytes
    remaining: int
    max_tries: int

    @property
    def blocked(self) -> bool:
        return self.remaining == 0


@dataclass(frozen=True, slots=True)
class PinRecord:
    """A PIN, or an AES key's retry counter, as first stored.

    `value_format` is the regular expression a new value must match; "" for a key counter,
    which has no value to set.
    """

    name: str
    value: bytes
    remaining: int
    max_tries: int
    value_format: str


@dataclass(frozen=True, slots=True)
class FreeAppRecord:
    """A free-area application as the store keeps it.

    `definition` is its declaration (JSON) and `size` the bytes of capacity it takes;
    `files` holds EF contents by FID (initial ones to install, current ones when loaded);
    `pins` are the PINs and key counters it brings (only read when installing).
    """

    name: str
    aid: bytes
    size: int
    definition: str
    files: dict[int, bytes]
    pins: tuple[PinRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class FreeAreaStatus:
    capacity: int
    apps: list[FreeAppRecord]

    @property
    def used(self) -> int:
        return sum(app.size for app in self.apps)


@dataclass(frozen=True, slots=True)
class PinStatus:
    name: str
    remaining: int
    max_tries: int

    @property
    def blocked(self) -> bool:
        return self.remaining == 0


def damaged(path: Path, problem: str) -> StateError:
    """The error for a state that was changed or lost outside mynacard: what and how to fix."""
    state_dir = path if path.is_dir() else path.parent
    return StateError(
        f"{path}: {problem}; the card state was damaged or changed outside mynacard: restore "
        f"the directory from a backup, or `mynacard state reset --state {state_dir}` "
        "re-personalises the card from its profile (every PIN and the free area as issued)"
    )


@contextmanager
def reading(db_path: Path) -> Iterator[None]:
    """sqlite errors as a StateError naming the database."""
    try:
        yield
    except sqlite3.Error as error:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            raise StateError(
                f"{db_path}: the card that has it open keeps it locked (opened `exclusive`, "
                "as the conformance bench's scratch cards are); read it once that card closes"
            ) from None
        if isinstance(error, sqlite3.OperationalError):
            raise StateError(
                f"{db_path}: cannot use the card state ({error}); check the file's owner and "
                f"mode (chmod 600 {db_path}) and the filesystem (not read-only, not full)"
            ) from None
        raise damaged(db_path, f"is not a usable card state ({error})") from None


def connect(db_path: Path, *, create: bool = False) -> sqlite3.Connection:
    """The card state database, checked whole (quick_check); StateError if it is missing,
    empty or not one. `create` makes a new one 0600 (sqlite gives its -wal and -shm the same
    mode)."""
    if not create:
        try:
            size = db_path.stat().st_size
        except FileNotFoundError:
            raise damaged(db_path, "the card's database is missing") from None
        if size == 0:
            raise damaged(db_path, "the card's database is empty (0 bytes)")
    try:  # the card writes before it answers: a database it cannot write is refused now
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as error:
        raise StateError(
            f"{db_path} cannot be written ({error.strerror or error}): the card could not keep "
            f"its counters; chmod 600 {db_path}, or move it off a read-only filesystem"
        ) from None
    with reading(db_path):
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise damaged(db_path, f"the database is damaged ({'; '.join(problems[:3])})")
        except BaseException:
            conn.close()
            raise
    return conn


# -- the personalisation marker ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """What card.personalised records: which card lives here, made from which profile, and
    the most tries of each of its national PINs (the profile's, for `status` to check)."""

    card_id: str
    profile_id: str
    profile: str  # what load_profile takes (a shipped name or a path)
    pins: dict[str, int]

    def as_json(self) -> str:
        fields = {"card_id": self.card_id, "profile_id": self.profile_id}
        return json.dumps({**fields, "profile": self.profile, "pins": self.pins}, indent=1)


def read_marker(state_dir: Path) -> Marker | None:
    """The marker of `state_dir`, None if no card was personalised there."""
    path = state_dir / MARKER_NAME
    try:
        data = json.loads(path.read_bytes())
        marker = Marker(data["card_id"], data["profile_id"], data["profile"], data["pins"])
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateError(f"{path}: {error.strerror or error}") from None
    except (ValueError, KeyError, TypeError):
        raise damaged(path, "the personalisation record does not read") from None
    texts = (marker.card_id, marker.profile_id, marker.profile)
    pins_ok = isinstance(marker.pins, dict) and all(
        isinstance(n, str) and type(m) is int and 0 <= m <= MAX_TRIES
        for n, m in marker.pins.items()
    )
    if not all(isinstance(text, str) for text in texts) or not pins_ok:
        raise damaged(path, "the personalisation record does not read")
    return marker


def write_marker(state_dir: Path, marker: Marker) -> None:
    """Write the marker durably and atomically (a temporary file renamed over it)."""
    path = state_dir / MARKER_NAME
    temporary = path.with_name(MARKER_NAME + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, marker.as_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# -- reading the database, every value checked --------------------------------------------------


_SQL_TYPES = {bytes: "BLOB", str: "TEXT", int: "INTEGER", float: "REAL", type(None): "NULL"}


def _typed(db_path: Path, what: str, value: object, wanted: type) -> None:
    if type(value) is not wanted:
        found = _SQL_TYPES.get(type(value), type(value).__name__)
        raise damaged(db_path, f"{what} is stored as {found}, not {_SQL_TYPES[wanted]}")


def _check_tables(conn: sqlite3.Connection, db_path: Path) -> None:
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    missing = [table for table in _TABLES if table not in names]
    if missing:
        raise damaged(db_path, f"the database has no table {', '.join(missing)}")


def _meta(conn: sqlite3.Connection, db_path: Path) -> dict[str, str]:
    meta = {}
    for key, value in conn.execute("SELECT key, value FROM meta"):
        _typed(db_path, f"meta {key!r}", value, str)
        meta[key] = value
    if "profile_id" not in meta:
        raise damaged(db_path, "the database does not say which profile made it")
    return meta


def _pins(conn: sqlite3.Connection, db_path: Path) -> dict[str, tuple[PinState, str]]:
    """Every PIN and key counter with its value format; StateError for a wrong type or a
    counter outside 0..max_tries (max_tries at most 15)."""
    pins = {}
    rows = conn.execute("SELECT name, value, remaining, max_tries, value_format FROM pins")
    for name, value, remaining, max_tries, value_format in rows:
        _typed(db_path, "a PIN's name", name, str)
        for what, field_value, wanted in (
            ("value", value, bytes),
            ("remaining tries", remaining, int),
            ("maximum tries", max_tries, int),
            ("value format", value_format, str),
        ):
            _typed(db_path, f"PIN {name}: its {what}", field_value, wanted)
        if not 0 <= max_tries <= MAX_TRIES:
            raise damaged(db_path, f"PIN {name}: maximum tries {max_tries} is outside 0..15")
        if not 0 <= remaining <= max_tries:
            raise damaged(
                db_path, f"PIN {name}: remaining tries {remaining} is outside 0..{max_tries}"
            )
        pins[name] = (PinState(name, value, remaining, max_tries), value_format)
    return pins


def expect_pins(
    pins: dict[str, tuple[PinState, str]], maxima: dict[str, int], db_path: Path, source: str
) -> None:
    """Each PIN `maxima` names is stored, with that maximum (from the profile)."""
    for name, max_tries in maxima.items():
        stored = pins.get(name)
        if stored is None:
            raise damaged(db_path, f"PIN {name} is missing")
        if stored[0].max_tries != max_tries:
            raise damaged(
                db_path,
                f"PIN {name} allows {stored[0].max_tries} tries where {source} allows {max_tries}",
            )


def read_free_apps(conn: sqlite3.Connection, db_path: Path) -> list[FreeAppRecord]:
    files: dict[bytes, dict[int, bytes]] = {}
    for aid, fid, content in conn.execute("SELECT aid, fid, content FROM free_files"):
        _typed(db_path, "a free-area EF's AID", aid, bytes)
        _typed(db_path, f"free-area EF {aid.hex().upper()}/{fid!r}: its FID", fid, int)
        _typed(db_path, f"free-area EF {aid.hex().upper()}/{fid:04X}: its content", content, bytes)
        files.setdefault(aid, {})[fid] = content
    apps = []
    rows = conn.execute("SELECT aid, name, size, definition FROM free_apps ORDER BY rowid")
    for aid, name, size, definition in rows:
        _typed(db_path, "a free-area application's name", name, str)
        for what, value, wanted in (("AID", aid, bytes), ("size", size, int)):
            _typed(db_path, f"free-area application {name!r}: its {what}", value, wanted)
        _typed(db_path, f"free-area application {name!r}: its definition", definition, str)
        try:
            if not isinstance(json.loads(definition), dict):
                raise ValueError
        except ValueError:
            raise damaged(
                db_path, f"free-area application {name!r}: its definition is not a JSON object"
            ) from None
        apps.append(FreeAppRecord(name, aid, size, definition, files.get(aid, {})))
    return apps


def read_capacity(conn: sqlite3.Connection, db_path: Path) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CAPACITY_KEY,)).fetchone()
    if row is None:
        raise damaged(
            db_path, "no free-area capacity (the state predates the free area, or lost the row)"
        )
    if not isinstance(row[0], str) or not row[0].isdigit():
        raise damaged(db_path, f"the free-area capacity {row[0]!r} is not a number")
    return int(row[0])


@dataclass(slots=True)
class Checked:
    """A state database opened and read whole, every value checked."""

    conn: sqlite3.Connection
    db_path: Path
    marker: Marker | None
    meta: dict[str, str]
    pins: dict[str, tuple[PinState, str]]
    apps: list[FreeAppRecord]


FreeAreaCheck = Callable[[list[FreeAppRecord]], Iterable[PinRecord]]
"""Reads the stored free-area declarations (StateError if one does not) and returns the PINs
and key counters they need (mynacard.apps.free_area.check_stored)."""


def open_checked(
    state_dir: Path, marker: Marker | None, free_area: FreeAreaCheck | None = None
) -> Checked:
    """The database of the card that lives in `state_dir`, read and checked against its
    marker (a legacy state, from before markers, has none) and, with `free_area`, against
    its free-area declarations."""
    db_path = state_dir / DB_NAME
    conn = connect(db_path)
    try:
        with reading(db_path):
            _check_tables(conn, db_path)
            meta = _meta(conn, db_path)
            if marker is not None and (
                meta.get("card_id") != marker.card_id or meta["profile_id"] != marker.profile_id
            ):
                raise damaged(
                    db_path, f"the database is not the one of the card {MARKER_NAME} records"
                )
            pins = _pins(conn, db_path)
            if marker is not None:
                expect_pins(pins, marker.pins, db_path, "its profile")
            apps = read_free_apps(conn, db_path)
            if CAPACITY_KEY in meta and sum(app.size for app in apps) > read_capacity(
                conn, db_path
            ):
                raise damaged(db_path, "the free-area applications exceed its capacity")
            if free_area is not None:
                try:
                    needed = {pin.name: pin.max_tries for pin in free_area(apps)}
                except StateError as error:
                    raise damaged(db_path, str(error)) from None
                expect_pins(pins, needed, db_path, "its free-area declaration")
        return Checked(conn, db_path, marker, meta, pins, apps)
    except BaseException:
        conn.close()
        raise
