"""Durable card state in a state directory (sqlite3): PIN values and retry counters, and the
free storage area (its applications and the content of their EFs).

Every change is one committed transaction (WAL, synchronous=FULL), copied into the database
file (a checkpoint) before the card answers, so a counter or a write survives `kill -9` and
power loss, a wrong try is never free, and losing the -wal file loses no answered change.

A state directory never starts over by itself: personalisation writes a marker
(card.personalised) after the database, and from then on a missing, empty, damaged or
inconsistent database, or a value out of range, is a StateError naming the file and the fix
(state_db.py reads and checks it).
Only `wipe` (`mynacard state reset`) makes room for a new card.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .files import MAX_PIN_LENGTH
from .state_db import (
    CAPACITY_KEY,
    MARKER_NAME,
    Checked,
    FreeAreaCheck,
    Marker,
    connect,
    expect_pins,
    open_checked,
    read_capacity,
    read_free_apps,
    read_marker,
    reading,
    write_marker,
)
from .state_db import DB_NAME as DB_NAME
from .state_db import FreeAppRecord as FreeAppRecord
from .state_db import FreeAreaStatus as FreeAreaStatus
from .state_db import PinRecord as PinRecord
from .state_db import PinState as PinState
from .state_db import PinStatus as PinStatus
from .state_db import StateError as StateError
from .state_db import StateLockedError as StateLockedError

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
    _checkpoint(conn)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the committed changes into the database file, so it holds every answered change
    by itself (a deleted -wal loses nothing that was acknowledged)."""
    conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()


def _insert_pins(conn: sqlite3.Connection, pins: Iterable[PinRecord]) -> None:
    conn.executemany(
        "INSERT INTO pins VALUES (?, ?, ?, ?, ?)",
        [(p.name, p.value, p.remaining, p.max_tries, p.value_format) for p in pins],
    )


def _install(conn: sqlite3.Connection, app: FreeAppRecord, capacity: int, db_path: Path) -> None:
    """Add a free-area application inside the caller's transaction; StateError if it cannot."""
    installed = read_free_apps(conn, db_path)
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
    conn = connect(db_path)
    try:
        with reading(db_path):
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
    conn = connect(db_path, create=True)
    try:
        with reading(db_path), _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("profile_id", card.profile_id),
                    ("profile", card.profile_label),
                    ("card_id", card_id),
                    (CAPACITY_KEY, str(card.free_capacity)),
                ],
            )
            _insert_pins(conn, card.pins)
            for app in card.free_apps:
                _install(conn, app, card.free_capacity, db_path)
    finally:
        conn.close()
    maxima = {pin.name: pin.max_tries for pin in card.pins}
    write_marker(state_dir, Marker(card_id, card.profile_id, card.profile_source, maxima))


def _adopt(state_dir: Path, card: Personalisation, free_area: FreeAreaCheck | None) -> None:
    """Give a state from before markers its marker (and its free area, if it predates it),
    once it reads whole and holds every PIN of its profile."""
    checked = open_checked(state_dir, None, free_area)
    conn, db_path = checked.conn, checked.db_path
    try:
        _belongs(checked, card, state_dir)
        maxima = {pin.name: pin.max_tries for pin in card.pins}
        expect_pins(checked.pins, maxima, db_path, "its profile")
        card_id = checked.meta.get("card_id") or uuid.uuid4().hex
        with reading(db_path), _transaction(conn):
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('card_id', ?)", (card_id,))
            if CAPACITY_KEY not in checked.meta:
                conn.execute("INSERT INTO meta VALUES (?, ?)", (CAPACITY_KEY, card.free_capacity))
                for app in card.free_apps:
                    _install(conn, app, card.free_capacity, db_path)
    finally:
        conn.close()
    write_marker(state_dir, Marker(card_id, card.profile_id, card.profile_source, maxima))


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
        exclusive: bool = False,
    ) -> CardStore:
        """Open (creating 0700 if missing) and lock `state_dir` for the card of `profile_id`.

        A directory where no card lives yet is personalised: `pins`, the free area of
        `free_capacity` with `free_apps`, then the marker. Otherwise the card that lives there
        is opened, every stored value checked (the national PINs against `pins`' maxima);
        StateError if it is damaged, never a fresh card. `free_area` checks the stored
        free-area declarations; `profile_source` is recorded for `mynacard state reset`.
        `exclusive` keeps the database locked to this card until it closes: a durable write
        costs half as much, and nothing else (`mynacard state ...`) can read it meanwhile.
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
            checked = open_checked(state_dir, marker, free_area)
            try:
                _belongs(checked, card, state_dir)
                maxima = {pin.name: pin.max_tries for pin in card.pins}
                expect_pins(checked.pins, maxima, checked.db_path, "its profile")
                if exclusive:
                    checked.conn.execute("PRAGMA locking_mode=EXCLUSIVE")
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
        with reading(self.state_dir / DB_NAME):
            return read_free_apps(self._conn, self.state_dir / DB_NAME)

    def save_file(self, aid: bytes, fid: int, content: bytes) -> None:
        """Durably replace a free-area EF's content."""
        statement = "UPDATE free_files SET content = ? WHERE aid = ? AND fid = ?"
        if self._durably(statement, (content, aid, fid)) != 1:
            raise StateError(f"no EF {fid:04X} of {aid.hex().upper()} in {self.state_dir}")

    def close(self) -> None:
        self._conn.close()
        os.close(self._lock_fd)


def _belongs(checked: Checked, card: Personalisation, state_dir: Path) -> None:
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
def _existing(state_dir: Path, free_area: FreeAreaCheck | None = None) -> Iterator[Checked]:
    """The checked state of the card living in `state_dir` (which need not be idle)."""
    marker = _lived_in(state_dir)
    checked = open_checked(state_dir, marker, free_area)
    try:
        with reading(checked.db_path):
            yield checked
    finally:
        checked.conn.close()


@contextmanager
def _offline(state_dir: Path) -> Iterator[Checked]:
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
        return FreeAreaStatus(read_capacity(checked.conn, checked.db_path), checked.apps)


def install_free_app(state_dir: Path, app: FreeAppRecord) -> FreeAreaStatus:
    """The issuer installs a free-area application; refused while the card is live."""
    with _offline(state_dir) as checked:
        conn, db_path = checked.conn, checked.db_path
        capacity = read_capacity(conn, db_path)
        with _transaction(conn):
            _install(conn, app, capacity, db_path)
        return FreeAreaStatus(capacity, read_free_apps(conn, db_path))


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
