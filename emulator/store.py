"""Durable card state in a state directory (sqlite3): PIN values and retry counters, and the
free storage area (its applications and the content of their EFs).

Every change is one committed transaction (WAL, synchronous=FULL), copied into the database
file (a checkpoint) before the card answers, so a counter or a write survives `kill -9` and
power loss, a wrong try is never free, and losing the -wal file loses no answered change.

A state directory never starts over by itself: personalisation writes a marker
(card.personalised) after the database, and from then on a missing, empty, damaged or
inconsistent database, or a value out of range, is a StateError naming the file and the fix.
Only `wipe` (`mynacard state reset`) makes room for a new card.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .files import MAX_PIN_LENGTH

DB_NAME = "card.sqlite"
LOCK_NAME = "card.lock"
MARKER_NAME = "card.personalised"
MAX_TRIES = 15  # the most a 63Cx status word can tell

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    remaining INTEGER NOT NULL,
    max_tries INTEGER NOT NULL,
    value_format TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS free_apps (
    aid BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    definition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS free_files (
    aid BLOB NOT NULL,
    fid INTEGER NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (aid, fid)
);
"""
_TABLES = ("meta", "pins", "free_apps", "free_files")
_CAPACITY_KEY = "free_area_capacity"  # in meta; present once the free area is personalised


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


def check_private(state_dir: Path) -> None:
    """StateError unless the state directory and its files belong to this user and no one
    else may read or write them (they hold the PIN values)."""
    uid = os.getuid()
    for path in [state_dir, *sorted(state_dir.glob("card.*"))]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StateError(f"{path}: {error.strerror or error}") from None
        wanted = 0o700 if path == state_dir else 0o600
        if info.st_uid != uid:
            raise StateError(
                f"{path} belongs to another user (uid {info.st_uid}); use a --state of your own"
            )
        if info.st_mode & 0o077:
            raise StateError(
                f"{path} can be read or written by others (mode {info.st_mode & 0o777:04o}); "
                f"it holds PIN values: chmod {wanted:o} {path}"
            )


def _lock(state_dir: Path) -> int:
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLockedError(
            f"state directory {state_dir} is in use by a live card (another `mynacard serve` "
            "or open_card); stop it or choose another --state"
        ) from None
    return fd


def damaged(path: Path, problem: str) -> StateError:
    """The error for a state that was changed or lost outside mynacard: what and how to fix."""
    state_dir = path if path.is_dir() else path.parent
    return StateError(
        f"{path}: {problem}; the card state was damaged or changed outside mynacard: restore "
        f"the directory from a backup, or `mynacard state reset --state {state_dir}` "
        "re-personalises the card from its profile (every PIN and the free area as issued)"
    )


@contextmanager
def _reading(db_path: Path) -> Iterator[None]:
    """sqlite errors as a StateError naming the database."""
    try:
        yield
    except sqlite3.Error as error:
        if isinstance(error, sqlite3.OperationalError):
            raise StateError(
                f"{db_path}: cannot use the card state ({error}); check the file's owner and "
                f"mode (chmod 600 {db_path}) and the filesystem (not read-only, not full)"
            ) from None
        raise damaged(db_path, f"is not a usable card state ({error})") from None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One atomic, durable transaction (the connection is in autocommit mode otherwise)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    _checkpoint(conn)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the committed changes into the database file, so it holds every answered change
    by itself (a deleted -wal loses nothing that was acknowledged)."""
    conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()


def _connect(db_path: Path, *, create: bool = False) -> sqlite3.Connection:
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
    with _reading(db_path):
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


def _write_marker(state_dir: Path, marker: Marker) -> None:
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


def _expect_pins(
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


def _free_apps(conn: sqlite3.Connection, db_path: Path) -> list[FreeAppRecord]:
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


def _capacity(conn: sqlite3.Connection, db_path: Path) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_CAPACITY_KEY,)).fetchone()
    if row is None:
        raise damaged(
            db_path, "no free-area capacity (the state predates the free area, or lost the row)"
        )
    if not isinstance(row[0], str) or not row[0].isdigit():
        raise damaged(db_path, f"the free-area capacity {row[0]!r} is not a number")
    return int(row[0])


@dataclass(slots=True)
class _Checked:
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


def _open_checked(
    state_dir: Path, marker: Marker | None, free_area: FreeAreaCheck | None = None
) -> _Checked:
    """The database of the card that lives in `state_dir`, read and checked against its
    marker (a legacy state, from before markers, has none) and, with `free_area`, against
    its free-area declarations."""
    db_path = state_dir / DB_NAME
    conn = _connect(db_path)
    try:
        with _reading(db_path):
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
                _expect_pins(pins, marker.pins, db_path, "its profile")
            apps = _free_apps(conn, db_path)
            if _CAPACITY_KEY in meta and sum(app.size for app in apps) > _capacity(conn, db_path):
                raise damaged(db_path, "the free-area applications exceed its capacity")
            if free_area is not None:
                try:
                    needed = {pin.name: pin.max_tries for pin in free_area(apps)}
                except StateError as error:
                    raise damaged(db_path, str(error)) from None
                _expect_pins(pins, needed, db_path, "its free-area declaration")
        return _Checked(conn, db_path, marker, meta, pins, apps)
    except BaseException:
        conn.close()
        raise


def _insert_pins(conn: sqlite3.Connection, pins: Iterable[PinRecord]) -> None:
    conn.executemany(
        "INSERT INTO pins VALUES (?, ?, ?, ?, ?)",
        [(p.name, p.value, p.remaining, p.max_tries, p.value_format) for p in pins],
    )


def _install(conn: sqlite3.Connection, app: FreeAppRecord, capacity: int, db_path: Path) -> None:
    """Add a free-area application inside the caller's transaction; StateError if it cannot."""
    installed = _free_apps(conn, db_path)
    for other in installed:
        if other.name == app.name:
            raise StateError(f"a free-area application named {app.name!r} is installed already")
        if other.aid.startswith(app.aid) or app.aid.startswith(other.aid):
            raise StateError(
                f"AID {app.aid.hex().upper()} clashes with {other.name!r} "
                f"({other.aid.hex().upper()}): SELECT matches prefixes"
            )
    used = sum(other.size for other in installed)
    if used + app.size > capacity:
        raise StateError(
            f"{app.name!r} needs {app.size} bytes but the free area has {capacity - used} of "
            f"{capacity} left"
        )
    prefix = free_pin_prefix(app.name)
    if conn.execute(
        "SELECT 1 FROM pins WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
    ).fetchone():
        raise StateError(f"PINs named {prefix}… are in the state already")
    conn.execute(
        "INSERT INTO free_apps VALUES (?, ?, ?, ?)", (app.aid, app.name, app.size, app.definition)
    )
    conn.executemany(
        "INSERT INTO free_files VALUES (?, ?, ?)",
        [(app.aid, fid, content) for fid, content in app.files.items()],
    )
    _insert_pins(conn, app.pins)


def _is_vacant(db_path: Path) -> bool:
    """No card ever lived at `db_path`: no database, or one a personalisation cut short left
    without tables (only asked when there is no marker)."""
    if not db_path.exists() or db_path.stat().st_size == 0:
        return True
    conn = _connect(db_path)
    try:
        with _reading(db_path):
            tables: int = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            return tables == 0
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Personalisation:
    """What a new card's state is made of (from its profile)."""

    profile_id: str
    profile_label: str
    profile_source: str  # what load_profile takes, for `mynacard state reset`
    pins: tuple[PinRecord, ...]
    free_capacity: int
    free_apps: tuple[FreeAppRecord, ...]


def _personalise(state_dir: Path, card: Personalisation) -> None:
    """Make the database of a new card in one transaction, then the marker."""
    db_path = state_dir / DB_NAME
    card_id = uuid.uuid4().hex
    conn = _connect(db_path, create=True)
    try:
        with _reading(db_path), _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("profile_id", card.profile_id),
                    ("profile", card.profile_label),
                    ("card_id", card_id),
                    (_CAPACITY_KEY, str(card.free_capacity)),
                ],
            )
            _insert_pins(conn, card.pins)
            for app in card.free_apps:
                _install(conn, app, card.free_capacity, db_path)
    finally:
        conn.close()
    maxima = {pin.name: pin.max_tries for pin in card.pins}
    _write_marker(state_dir, Marker(card_id, card.profile_id, card.profile_source, maxima))


def _adopt(state_dir: Path, card: Personalisation, free_area: FreeAreaCheck | None) -> None:
    """Give a state from before markers its marker (and its free area, if it predates it),
    once it reads whole and holds every PIN of its profile."""
    checked = _open_checked(state_dir, None, free_area)
    conn, db_path = checked.conn, checked.db_path
    try:
        _belongs(checked, card, state_dir)
        maxima = {pin.name: pin.max_tries for pin in card.pins}
        _expect_pins(checked.pins, maxima, db_path, "its profile")
        card_id = checked.meta.get("card_id") or uuid.uuid4().hex
        with _reading(db_path), _transaction(conn):
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('card_id', ?)", (card_id,))
            if _CAPACITY_KEY not in checked.meta:
                conn.execute("INSERT INTO meta VALUES (?, ?)", (_CAPACITY_KEY, card.free_capacity))
                for app in card.free_apps:
                    _install(conn, app, card.free_capacity, db_path)
    finally:
        conn.close()
    _write_marker(state_dir, Marker(card_id, card.profile_id, card.profile_source, maxima))


class CardStore:
    """The state directory of one card, held exclusively while the card is open."""

    def __init__(
        self, state_dir: Path, lock_fd: int, conn: sqlite3.Connection, pins: dict[str, PinState]
    ) -> None:
        self.state_dir = state_dir
        self._lock_fd = lock_fd
        self._conn = conn
        self.pins = pins

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        profile_id: str,
        profile_label: str,
        pins: Iterable[PinRecord],
        free_capacity: int,
        free_apps: Sequence[FreeAppRecord],
        profile_source: str = "",
        free_area: FreeAreaCheck | None = None,
    ) -> CardStore:
        """Open (creating 0700 if missing) and lock `state_dir` for the card of `profile_id`.

        A directory where no card lives yet is personalised: `pins`, the free area of
        `free_capacity` with `free_apps`, then the marker. Otherwise the card that lives there
        is opened, every stored value checked (the national PINs against `pins`' maxima);
        StateError if it is damaged, never a fresh card. `free_area` checks the stored
        free-area declarations; `profile_source` is recorded for `mynacard state reset`.
        """
        card = Personalisation(
            profile_id, profile_label, profile_source, tuple(pins), free_capacity,
            tuple(free_apps),
        )  # fmt: skip
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            reason = "it is a file" if state_dir.is_file() else (error.strerror or str(error))
            raise StateError(f"cannot use {state_dir} as a state directory: {reason}") from None
        check_private(state_dir)
        lock_fd = _lock(state_dir)
        try:
            marker = read_marker(state_dir)
            if marker is None:
                if _is_vacant(state_dir / DB_NAME):
                    _personalise(state_dir, card)
                else:
                    _adopt(state_dir, card, free_area)
                marker = read_marker(state_dir)
            checked = _open_checked(state_dir, marker, free_area)
            try:
                _belongs(checked, card, state_dir)
                maxima = {pin.name: pin.max_tries for pin in card.pins}
                _expect_pins(checked.pins, maxima, checked.db_path, "its profile")
            except BaseException:
                checked.conn.close()
                raise
            states = {name: state for name, (state, _) in checked.pins.items()}
            return cls(state_dir, lock_fd, checked.conn, states)
        except BaseException:
            os.close(lock_fd)
            raise

    def _durably(self, statement: str, parameters: tuple[object, ...]) -> int:
        """One durable autocommitted change, checkpointed; the rows it changed."""
        changed = self._conn.execute(statement, parameters).rowcount
        _checkpoint(self._conn)
        return changed

    def set_remaining(self, pin: PinState, remaining: int) -> None:
        """Durably set a counter, then the in-memory mirror."""
        self._durably("UPDATE pins SET remaining = ? WHERE name = ?", (remaining, pin.name))
        pin.remaining = remaining

    def set_value(self, pin: PinState, value: bytes) -> None:
        self._durably("UPDATE pins SET value = ? WHERE name = ?", (value, pin.name))
        pin.value = value

    def free_apps(self) -> list[FreeAppRecord]:
        """The installed free-area applications with the current content of their EFs."""
        with _reading(self.state_dir / DB_NAME):
            return _free_apps(self._conn, self.state_dir / DB_NAME)

    def save_file(self, aid: bytes, fid: int, content: bytes) -> None:
        """Durably replace a free-area EF's content."""
        statement = "UPDATE free_files SET content = ? WHERE aid = ? AND fid = ?"
        if self._durably(statement, (content, aid, fid)) != 1:
            raise StateError(f"no EF {fid:04X} of {aid.hex().upper()} in {self.state_dir}")

    def close(self) -> None:
        self._conn.close()
        os.close(self._lock_fd)


def _belongs(checked: _Checked, card: Personalisation, state_dir: Path) -> None:
    if checked.meta["profile_id"] != card.profile_id:
        raise StateError(
            f"state directory {state_dir} belongs to another card (profile "
            f"{checked.meta.get('profile', '?')}); use a fresh --state for {card.profile_label}"
        )


def _lived_in(state_dir: Path) -> Marker | None:
    """The marker of `state_dir`; StateError if no card lives there."""
    check_private(state_dir)
    marker = read_marker(state_dir)
    if marker is None and not (state_dir / DB_NAME).is_file():
        raise StateError(f"no card state in {state_dir} (it is made by the first `mynacard serve`)")
    return marker


@contextmanager
def _existing(state_dir: Path, free_area: FreeAreaCheck | None = None) -> Iterator[_Checked]:
    """The checked state of the card living in `state_dir` (which need not be idle)."""
    marker = _lived_in(state_dir)
    checked = _open_checked(state_dir, marker, free_area)
    try:
        with _reading(checked.db_path):
            yield checked
    finally:
        checked.conn.close()


@contextmanager
def _offline(state_dir: Path) -> Iterator[_Checked]:
    """The checked state of a card that is not live (the lock is held meanwhile)."""
    _lived_in(state_dir)
    lock_fd = _lock(state_dir)
    try:
        with _existing(state_dir) as checked:
            yield checked
    finally:
        os.close(lock_fd)


def read_pin_status(state_dir: Path, free_area: FreeAreaCheck | None = None) -> list[PinStatus]:
    """The counters of the card whose state is in `state_dir` (works while it is live), once
    every stored value is checked (the free area's with `free_area`)."""
    with _existing(state_dir, free_area) as checked:
        rows = checked.conn.execute("SELECT name FROM pins ORDER BY rowid").fetchall()
        pins = [checked.pins[name][0] for (name,) in rows]
        return [PinStatus(pin.name, pin.remaining, pin.max_tries) for pin in pins]


def reset_pin(state_dir: Path, name: str, value: str | None = None) -> None:
    """The municipal office: restore a PIN's counter to its maximum, optionally set a new value.

    Refused while a live card holds the state, so the card's in-memory mirror stays true.
    """
    with _offline(state_dir) as checked:
        conn = checked.conn
        stored = checked.pins.get(name)
        if stored is None:
            raise StateError(
                f"no PIN named {name!r} in {state_dir} (known: {', '.join(checked.pins)})"
            )
        state, value_format = stored
        if value is not None and not value_format:
            raise StateError(f"{name} is a key's retry counter: it has no value to set")
        too_long = value is not None and len(value) > MAX_PIN_LENGTH
        if value is not None and (too_long or re.fullmatch(value_format, value) is None):
            raise StateError(
                f"new value for {name} must match {value_format} in at most {MAX_PIN_LENGTH} "
                "characters"
            )
        with _transaction(conn):
            conn.execute("UPDATE pins SET remaining = ? WHERE name = ?", (state.max_tries, name))
            if value is not None:
                conn.execute("UPDATE pins SET value = ? WHERE name = ?", (value.encode(), name))


def read_free_area(state_dir: Path) -> FreeAreaStatus:
    """The free area of the card whose state is in `state_dir` (works while it is live)."""
    with _existing(state_dir) as checked:
        return FreeAreaStatus(_capacity(checked.conn, checked.db_path), checked.apps)


def install_free_app(state_dir: Path, app: FreeAppRecord) -> FreeAreaStatus:
    """The issuer installs a free-area application; refused while the card is live."""
    with _offline(state_dir) as checked:
        conn, db_path = checked.conn, checked.db_path
        capacity = _capacity(conn, db_path)
        with _transaction(conn):
            _install(conn, app, capacity, db_path)
        return FreeAreaStatus(capacity, _free_apps(conn, db_path))


def remove_free_app(state_dir: Path, name_or_aid: str) -> FreeAppRecord:
    """The issuer deletes a free-area application (by name or AID hex) with its EFs and PINs."""
    with _offline(state_dir) as checked:
        conn = checked.conn
        for app in checked.apps:
            if name_or_aid == app.name or name_or_aid.upper() == app.aid.hex().upper():
                with _transaction(conn):
                    conn.execute("DELETE FROM free_apps WHERE aid = ?", (app.aid,))
                    conn.execute("DELETE FROM free_files WHERE aid = ?", (app.aid,))
                    prefix = free_pin_prefix(app.name)
                    conn.execute(
                        "DELETE FROM pins WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
                    )
                return app
        raise StateError(f"no free-area application {name_or_aid!r} in {state_dir}")


def recorded_profile(state_dir: Path) -> str | None:
    """The profile the card in `state_dir` was personalised from, as its marker records it."""
    marker = read_marker(state_dir)
    return marker.profile if marker is not None and marker.profile else None


def wipe(state_dir: Path) -> None:
    """Remove the card that lives in `state_dir` (refused while it is live): its database
    first, its marker last, so a cut leaves either the card or a clear error."""
    if not state_dir.exists():
        return
    check_private(state_dir)
    lock_fd = _lock(state_dir)
    try:
        for name in (f"{DB_NAME}-wal", f"{DB_NAME}-shm", DB_NAME, MARKER_NAME):
            (state_dir / name).unlink(missing_ok=True)
    finally:
        os.close(lock_fd)


def free_pin_prefix(app_name: str) -> str:
    """State names of a free-area application's PINs and key counters start with this."""
    return f"{app_name}:"
