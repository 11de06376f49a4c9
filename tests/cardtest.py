"""One card for a test body, in process or through pcscd + vpcd, and the APDU helpers tests share.

The `card` fixture (conftest.py) yields a `TestedCard`: `InProcessCard` wraps
``mynacard.open_card``, `PcscCard` serves the card with ``mynacard serve`` on a vpcd reader and
talks to it through pcscd with `smartcard.scard`. Both have the same methods, so each behaviour
is written once and runs on both backends.

The helpers take either the card (`tx`) or a `send` function (C-APDU bytes -> R-APDU bytes, e.g.
``card.transmit``), so the client-side checks in *_checks.py run on anything that transmits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import pytest
from pcsc import CardServer, ScardConnection, wait_for_card

from mynacard import open_card
from mynacard.layers import CardInterface
from mynacard.personalize.profile import PROFILES_DIR, Profile

Send = Callable[[bytes], bytes]

BACKENDS = ("inproc", "pcsc")
SELECT_EF = "00A4020C02"  # + the 2-byte FID in hex: SELECT EF under the current DF, no FCI


class Transmits(Protocol):
    def transmit(self, capdu: bytes, /) -> bytes: ...


Link = TypeVar("Link")


# -- APDUs -------------------------------------------------------------------------------------


def sw(response: bytes) -> str:
    """The status word of a response as upper-case hex."""
    return response[-2:].hex().upper()


def ok(response: bytes) -> bytes:
    """The data of a 9000 response; AssertionError naming the SW otherwise."""
    assert response[-2:] == b"\x90\x00", f"SW {sw(response)}"
    return response[:-2]


def apdu(header: str, data: bytes = b"", le: int | None = None) -> bytes:
    """A short APDU from a hex header (CLA INS P1 P2), data and Le."""
    raw = bytes.fromhex(header)
    if data:
        raw += bytes((len(data),)) + data
    if le is not None:
        raw += bytes((le & 0xFF,))
    return raw


def tx(card: Transmits, *hexes: str) -> str:
    """Send APDUs given as hex (spaces allowed); the last response as upper-case hex."""
    response = b""
    for text in hexes:
        response = card.transmit(bytes.fromhex(text.replace(" ", "")))
    return response.hex().upper()


def select(send: Send, aid: bytes) -> None:
    """SELECT an application by AID (P2 0C); it must answer 9000."""
    ok(send(apdu("00A4040C", aid)))


def select_ef(send: Send, fid: int) -> bytes:
    """SELECT EF `fid` under the current application; the response."""
    return send(apdu("00A4020C", fid.to_bytes(2, "big")))


def read_ef(send: Send, fid: int) -> bytes:
    """SELECT and read a whole EF in 256-byte chunks until 6B00 (how OpenSC-like clients read)."""
    ok(select_ef(send, fid))
    data = b""
    while True:
        response = send(b"\x00\xb0" + len(data).to_bytes(2, "big") + b"\x00")
        if sw(response) == "6B00":
            return data
        data += ok(response)


class InTheApplication:
    """Base of a test class whose tests start with `aid` selected on the `card`."""

    aid: bytes

    @pytest.fixture(autouse=True)
    def in_the_application(self, card: TestedCard[object]) -> None:
        select(card.transmit, self.aid)


# -- which card --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardProfile:
    """A profile for the `card` fixture: a shipped name or a path, optionally with text edits
    (each `old` must occur once) and TOML appended; an edited one is written to a file, so the
    same profile can be served by `mynacard serve`."""

    name: str | Path = "default"
    edits: tuple[tuple[str, str], ...] = ()
    append: str = ""

    @classmethod
    def of(
        cls, name: str | Path = "default", edits: dict[str, str] | None = None, append: str = ""
    ) -> CardProfile:
        return cls(name, tuple((edits or {}).items()), append)

    def source(self, directory: Path) -> str | Path:
        """What open_card and `mynacard serve --profile` take: the name, or a written file."""
        if not self.edits and not self.append:
            return self.name
        shipped = isinstance(self.name, str) and "/" not in self.name
        path = PROFILES_DIR / f"{self.name}.toml" if shipped else Path(self.name)
        text = path.read_text(encoding="utf-8")
        for old, new in self.edits:
            assert text.count(old) == 1, f"{old!r} is not once in {path}"
            text = text.replace(old, new)
        text += self.append
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        written = directory / f"{Path(self.name).stem}-{digest}.toml"
        if not written.exists():
            written.write_text(text, encoding="utf-8")
        return written


class TestedCard(Generic[Link]):
    """The card a test talks to: the same methods on every backend.

    `transmit` one APDU; `reset` (warm reset) and `power_cycle` (power off, then on) return
    the ATR; `close` ends the card (its state stays in `state_dir`), `open` brings it back on
    the same state, `reopen` does both.
    """

    __test__ = False  # not a test class for pytest
    backend: str

    def __init__(self, source: str | Path, profile: Profile, state_dir: Path) -> None:
        self.source = source
        self.profile = profile
        self.state_dir = state_dir
        self._link: Link | None = None  # the open card, or the connection to it

    @property
    def is_open(self) -> bool:
        return self._link is not None

    def _live(self) -> Link:
        assert self._link is not None, "the card is closed"
        return self._link

    @property
    def atr(self) -> bytes:
        raise NotImplementedError

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def transmit(self, capdu: bytes) -> bytes:
        raise NotImplementedError

    def reset(self) -> bytes:
        raise NotImplementedError

    def power_cycle(self) -> bytes:
        raise NotImplementedError

    def reopen(self) -> None:
        self.close()
        self.open()

    def __repr__(self) -> str:
        return f"<{self.backend} card {self.source}>"


class InProcessCard(TestedCard[CardInterface]):
    """``mynacard.open_card(profile, state_dir)`` in this process (the profile loaded from
    `source`, as the server would load it)."""

    backend = "inproc"

    @property
    def atr(self) -> bytes:
        return bytes(self._live().atr)

    def open(self) -> None:
        assert self._link is None, "the card is open"
        self._link = open_card(self.profile, self.state_dir)

    def close(self) -> None:
        if self._link is not None:
            card, self._link = self._link, None
            card.close()

    def transmit(self, capdu: bytes) -> bytes:
        return bytes(self._live().transmit(capdu))

    def reset(self) -> bytes:
        return bytes(self._live().reset())

    def power_cycle(self) -> bytes:
        card = self._live()
        card.power_off()
        return bytes(card.power_on())


class PcscCard(TestedCard[ScardConnection]):
    """``mynacard serve`` on vpcd reader `reader`, reached through pcscd with `smartcard.scard`:
    reset and power cycle are SCardReconnect with SCARD_RESET_CARD and SCARD_UNPOWER_CARD."""

    backend = "pcsc"

    def __init__(
        self, source: str | Path, profile: Profile, state_dir: Path, reader: int = 0
    ) -> None:
        super().__init__(source, profile, state_dir)
        self.reader = reader
        self._server = CardServer(source, state_dir, reader)
        self.reader_name = self._server.name

    @property
    def atr(self) -> bytes:
        return self._live().atr()

    def open(self) -> None:
        assert self._link is None, "the card is open"
        self._server.start()
        try:
            self._link = ScardConnection(self.reader_name)
        except BaseException:
            self._server.stop(check=False)
            raise

    def _disconnect(self) -> None:
        if self._link is not None:
            connection, self._link = self._link, None
            connection.close()

    def close(self, *, wait_gone: bool = True) -> None:
        """Disconnect, then SIGTERM the server (it must exit cleanly); without `wait_gone`,
        pcscd may still show the card for a moment."""
        self._disconnect()
        self._server.stop(wait_gone=wait_gone)

    def kill(self) -> None:
        """End the server with SIGKILL, as a crash would; `open` serves the state again."""
        self._disconnect()
        self._server.kill()

    def transmit(self, capdu: bytes) -> bytes:
        # vpcd reads a 1-byte message as a control code (power off, on, reset, ATR): the card
        # would never answer and SCardTransmit would wait for ever.
        if len(capdu) < 2:
            raise ValueError(f"a {len(capdu)}-byte APDU cannot travel through vpcd")
        return self._live().transmit(capdu)

    def reset(self) -> bytes:
        return self._live().reset()

    def power_cycle(self) -> bytes:
        return self._live().power_cycle()


class PcscCards:
    """The served cards of one test module.

    Tests that can share a card get the one already served for the same profile, on reader
    1, after a warm reset (nothing selected, nothing verified; counters and data as earlier
    tests left them). A `fresh` card gets a new state and its own server on reader 0, stopped
    after the test; the shared card stays in reader 1 meanwhile, so the next test has it at
    once.
    """

    SHARED_READER = 1
    FRESH_READER = 0

    def __init__(self, shared_state: Path) -> None:
        self._shared_state = shared_state
        self._shared: PcscCard | None = None
        self._fresh: PcscCard | None = None
        self._leaving: str | None = None  # a reader whose card is still going away
        self._count = 0

    def shared(self, source: str | Path, profile: Profile) -> PcscCard:
        card = self._shared
        if card is not None and card.is_open and card.source == source:
            card.reset()
            return card
        self.release_shared()
        self._count += 1
        state = self._shared_state / f"{self._count}-{Path(source).stem}"
        self._shared = PcscCard(source, profile, state, self.SHARED_READER)
        self._shared.open()
        return self._shared

    def fresh(self, source: str | Path, profile: Profile, state: Path) -> PcscCard:
        self.release_fresh()
        self._fresh = PcscCard(source, profile, state, self.FRESH_READER)
        self._fresh.open()
        return self._fresh

    def release_shared(self) -> None:
        card, self._shared = self._shared, None
        if card is not None and card.is_open:
            card.close()

    def release_fresh(self, *, wait_gone: bool = True) -> None:
        """Stop the fresh card; without `wait_gone`, the next `fresh` or `release` waits
        until pcscd has seen it go."""
        card, self._fresh = self._fresh, None
        if card is not None and card.is_open:
            card.close(wait_gone=False)
            self._leaving = card.reader_name
        if wait_gone and self._leaving is not None:
            wait_for_card(self._leaving, present=False, timeout=5.0)
            self._leaving = None

    def release(self) -> None:
        """Stop every card being served."""
        try:
            self.release_fresh()
        finally:
            self.release_shared()
