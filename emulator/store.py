"""Durable card state in a state directory (sqlite3): PIN values and retry counters, and the
free storage area (its applications and the content of their EFs).

Every change is one committed transaction (WAL, synchronous=FULL) before the card answers,
so a counter or a write survives `kill -9` and power loss and a wrong try is never free.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .files import MAX_PIN_LENGTH

DB_NAME = "card.sqlite"
LOCK_NAME = "card.lock"

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


def _connect(db_path: Path) -> sqlite3.Connection:
    """The card state database; StateError if `db_path` is not one (e.g. a damaged file).
    A new one is created 0600 (sqlite gives its -wal and -shm files the same mode)."""
    try:
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as error:
        raise StateError(f"{db_path}: {error.strerror or error}") from None
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as error:
        raise StateError(
            f"{db_path} is not a usable card state ({error}); move the state directory "
            "away (a fresh one starts from the profile) or choose another --state"
        ) from None
    return conn


def _insert_pins(conn: sqlite3.Connection, pins: Iterable[PinRecord]) -> None:
    """Add PINs the state does not hold yet; existing ones keep their value and counter."""
    conn.executemany(
        "INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?, ?)",
        [(p.name, p.value, p.remaining, p.max_tries, p.value_format) for p in pins],
    )


def _free_apps(conn: sqlite3.Connection) -> list[FreeAppRecord]:
    files: dict[bytes, dict[int, bytes]] = {}
    for aid, fid, content in conn.execute("SELECT aid, fid, content FROM free_files"):
        files.setdefault(bytes(aid), {})[fid] = bytes(content)
    return [
        FreeAppRecord(name, bytes(aid), size, definition, files.get(bytes(aid), {}))
        for aid, name, size, definition in conn.execute(
            "SELECT aid, name, size, definition FROM free_apps ORDER BY rowid"
        )
    ]


def _capacity(conn: sqlite3.Connection, state_dir: Path) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_CAPACITY_KEY,)).fetchone()
    if row is None:
        raise StateError(
            f"the card state in {state_dir} predates the free area; open it once with "
            "`mynacard serve` first"
        )
    return int(row[0])


def _install(conn: sqlite3.Connection, app: FreeAppRecord, capacity: int) -> None:
    """Add a free-area application inside the caller's transaction; StateError if it cannot."""
    installed = _free_apps(conn)
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


class CardStore:
    """The state directory of one card, held exclusively while the card is open."""

    def __init__(self, state_dir: Path, lock_fd: int, conn: sqlite3.Connection) -> None:
        self.state_dir = state_dir
        self._lock_fd = lock_fd
        self._conn = conn
        self.pins: dict[str, PinState] = {}

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
    ) -> CardStore:
        """Open (creating 0700 if missing) and lock `state_dir` for the card of `profile_id`.

        `pins` are the personalised PINs; those the state does not hold yet are added,
        existing ones keep their value and counter. The free area is personalised once, with
        `free_capacity` and `free_apps`; after that the state alone holds it.
        """
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            reason = "it is a file" if state_dir.is_file() else (error.strerror or str(error))
            raise StateError(f"cannot use {state_dir} as a state directory: {reason}") from None
        check_private(state_dir)
        lock_fd = _lock(state_dir)
        try:
            conn = _connect(state_dir / DB_NAME)
            row = conn.execute("SELECT value FROM meta WHERE key = 'profile_id'").fetchone()
            if row is None:
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("profile_id", profile_id), ("profile", profile_label)],
                )
            elif row[0] != profile_id:
                label = conn.execute("SELECT value FROM meta WHERE key = 'profile'").fetchone()
                conn.close()
                raise StateError(
                    f"state directory {state_dir} belongs to another card (profile "
                    f"{label[0] if label else '?'}); use a fresh --state for {profile_label}"
                )
            store = cls(state_dir, lock_fd, conn)
            with _transaction(conn):
                _insert_pins(conn, pins)
                personalised = conn.execute("SELECT 1 FROM meta WHERE key = ?", (_CAPACITY_KEY,))
                if personalised.fetchone() is None:
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (_CAPACITY_KEY, free_capacity))
                    for app in free_apps:
                        _install(conn, app, free_capacity)
            for name, value, remaining, max_tries in conn.execute(
                "SELECT name, value, remaining, max_tries FROM pins"
            ):
                store.pins[name] = PinState(name, bytes(value), remaining, max_tries)
            return store
        except BaseException:
            os.close(lock_fd)
            raise

    def set_remaining(self, pin: PinState, remaining: int) -> None:
        """Durably set a counter (one autocommitted statement), then the in-memory mirror."""
        self._conn.execute("UPDATE pins SET remaining = ? WHERE name = ?", (remaining, pin.name))
        pin.remaining = remaining

    def set_value(self, pin: PinState, value: bytes) -> None:
        self._conn.execute("UPDATE pins SET value = ? WHERE name = ?", (value, pin.name))
        pin.value = value

    def free_apps(self) -> list[FreeAppRecord]:
        """The installed free-area applications with the current content of their EFs."""
        return _free_apps(self._conn)

    def save_file(self, aid: bytes, fid: int, content: bytes) -> None:
        """Durably replace a free-area EF's content (one autocommitted statement)."""
        cursor = self._conn.execute(
            "UPDATE free_files SET content = ? WHERE aid = ? AND fid = ?", (content, aid, fid)
        )
        if cursor.rowcount != 1:
            raise StateError(f"no EF {fid:04X} of {aid.hex().upper()} in {self.state_dir}")

    def close(self) -> None:
        self._conn.close()
        os.close(self._lock_fd)


def _existing_db(state_dir: Path) -> Path:
    check_private(state_dir)
    db_path = state_dir / DB_NAME
    if not db_path.is_file():
        raise StateError(f"no card state in {state_dir} (it is made by the first `mynacard serve`)")
    return db_path


def _open_existing(state_dir: Path) -> sqlite3.Connection:
    return _connect(_existing_db(state_dir))


@contextmanager
def _offline(state_dir: Path) -> Iterator[sqlite3.Connection]:
    """The state of a card that is not live (the lock is held meanwhile)."""
    db_path = _existing_db(state_dir)
    lock_fd = _lock(state_dir)
    try:
        conn = _connect(db_path)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        os.close(lock_fd)


def read_pin_status(state_dir: Path) -> list[PinStatus]:
    """The counters of the card whose state is in `state_dir` (works while it is live)."""
    conn = _open_existing(state_dir)
    try:
        rows = conn.execute("SELECT name, remaining, max_tries FROM pins ORDER BY rowid")
        return [PinStatus(name, remaining, max_tries) for name, remaining, max_tries in rows]
    finally:
        conn.close()


def reset_pin(state_dir: Path, name: str, value: str | None = None) -> None:
    """The municipal office: restore a PIN's counter to its maximum, optionally set a new value.

    Refused while a live card holds the state, so the card's in-memory mirror stays true.
    """
    with _offline(state_dir) as conn:
        row = conn.execute(
            "SELECT max_tries, value_format FROM pins WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            names = ", ".join(n for (n,) in conn.execute("SELECT name FROM pins"))
            raise StateError(f"no PIN named {name!r} in {state_dir} (known: {names})")
        max_tries, value_format = row
        if value is not None and not value_format:
            raise StateError(f"{name} is a key's retry counter: it has no value to set")
        too_long = value is not None and len(value) > MAX_PIN_LENGTH
        if value is not None and (too_long or re.fullmatch(value_format, value) is None):
            raise StateError(
                f"new value for {name} must match {value_format} in at most {MAX_PIN_LENGTH} "
                "characters"
            )
        with _transaction(conn):
            conn.execute("UPDATE pins SET remaining = ? WHERE name = ?", (max_tries, name))
            if value is not None:
                conn.execute("UPDATE pins SET value = ? WHERE name = ?", (value.encode(), name))


def read_free_area(state_dir: Path) -> FreeAreaStatus:
    """The free area of the card whose state is in `state_dir` (works while it is live)."""
    conn = _open_existing(state_dir)
    try:
        return FreeAreaStatus(_capacity(conn, state_dir), _free_apps(conn))
    finally:
        conn.close()


def install_free_app(state_dir: Path, app: FreeAppRecord) -> FreeAreaStatus:
    """The issuer installs a free-area application; refused while the card is live."""
    with _offline(state_dir) as conn:
        capacity = _capacity(conn, state_dir)
        with _transaction(conn):
            _install(conn, app, capacity)
        return FreeAreaStatus(capacity, _free_apps(conn))


def remove_free_app(state_dir: Path, name_or_aid: str) -> FreeAppRecord:
    """The issuer deletes a free-area application (by name or AID hex) with its EFs and PINs."""
    with _offline(state_dir) as conn:
        for app in _free_apps(conn):
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


def free_pin_prefix(app_name: str) -> str:
    """State names of a free-area application's PINs and key counters start with this."""
    return f"{app_name}:"
