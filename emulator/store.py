"""Durable card state: PIN values and retry counters in a state directory (sqlite3).

Every change is one committed transaction (WAL, synchronous=FULL) before the card answers,
so a counter survives `kill -9` and power loss and a wrong try is never free.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .files import Pin

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
"""


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
class PinStatus:
    name: str
    remaining: int
    max_tries: int

    @property
    def blocked(self) -> bool:
        return self.remaining == 0


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
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


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
        pins: Iterable[tuple[Pin, str, int]],
    ) -> CardStore:
        """Open (creating 0700 if missing) and lock `state_dir` for the card of `profile_id`.

        `pins` gives each PIN object with its personalised value and initial counter; PINs
        the state does not hold yet are added, existing ones keep their value and counter.
        """
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _lock(state_dir)
        try:
            conn = _connect(state_dir / DB_NAME)
            conn.executescript(_SCHEMA)
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
                for pin, value, remaining in pins:
                    conn.execute(
                        "INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?, ?)",
                        (
                            pin.state_name,
                            value.encode(),
                            remaining,
                            pin.max_tries,
                            pin.value_format,
                        ),
                    )
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

    def close(self) -> None:
        self._conn.close()
        os.close(self._lock_fd)


def _open_existing(state_dir: Path) -> sqlite3.Connection:
    db_path = state_dir / DB_NAME
    if not db_path.is_file():
        raise StateError(f"no card state in {state_dir} (it is made by the first `mynacard serve`)")
    return _connect(db_path)


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
    lock_fd = _lock(state_dir)
    try:
        conn = _open_existing(state_dir)
        try:
            row = conn.execute(
                "SELECT max_tries, value_format FROM pins WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                names = ", ".join(n for (n,) in conn.execute("SELECT name FROM pins"))
                raise StateError(f"no PIN named {name!r} in {state_dir} (known: {names})")
            max_tries, value_format = row
            if value is not None and re.fullmatch(value_format, value) is None:
                raise StateError(f"new value for {name} does not match its format {value_format}")
            with _transaction(conn):
                conn.execute("UPDATE pins SET remaining = ? WHERE name = ?", (max_tries, name))
                if value is not None:
                    conn.execute("UPDATE pins SET value = ? WHERE name = ?", (value.encode(), name))
        finally:
            conn.close()
    finally:
        os.close(lock_fd)
