"""Where the bench sends its APDUs: one small interface, several transports (yubikit-style).

- `EmulatorTarget`: the emulator in this process, a fresh card state per example.
- `PcscTarget`: any PC/SC reader through pyscard (the emulator behind vpcd, or a real card).
- `TranscriptTarget`: a recorded transcript answering the same commands again.
- `RecordingTarget`, `ChainedResponses`: layers on any target (`TargetLayer`): recording
  its traffic as a transcript, collecting 61xx pieces.

This is the only module of the bench that imports the emulator, and only to open it as a
target: what the card *should* answer comes from `model`, never from mynacard code.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from .transcript import Action, Exchange, Pattern, Recorder


class TargetError(RuntimeError):
    """The transport failed (reader gone, command refused by the driver, transcript ended)."""


@runtime_checkable
class Target(Protocol):
    """A card the bench can talk to."""

    name: str
    disposable: bool  # its state may be thrown away: wrong PINs may block it

    def transmit(self, command: bytes) -> bytes: ...

    def reset(self) -> bytes:
        """Warm reset; returns the ATR."""
        ...

    def power_cycle(self) -> bytes | None:
        """Cold reset, where the transport can do it; returns the ATR, or None if it cannot."""
        ...

    def fresh(self) -> None:
        """Start a new example: a disposable target goes back to its initial state."""
        ...

    def close(self) -> None: ...


class CardLike(Protocol):
    """What `EmulatorTarget` needs from an open card (`mynacard.open_card` returns one)."""

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def reset(self) -> bytes: ...

    def transmit(self, command: bytes) -> bytes: ...

    def close(self) -> None: ...


CardOpener = Callable[[Path], CardLike]


def _scratch_root() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="mynacard-bench-", dir=shm if shm.is_dir() else None))


class EmulatorTarget:
    """The emulator in process: each `fresh()` opens the card on a new state directory.

    `initial_state` (a state directory) is copied for every example instead of starting from
    the profile's own counters: a snapshot.  `opener` replaces `mynacard.open_card`, for
    deliberately broken variants in tests.
    """

    disposable = True

    def __init__(
        self,
        profile: str | Path = "default",
        *,
        initial_state: Path | None = None,
        opener: CardOpener | None = None,
    ) -> None:
        if opener is None:
            from mynacard import load_profile, open_card

            loaded = load_profile(profile)  # read once: examples and restarts reopen the card

            def opener(state: Path) -> CardLike:
                return open_card(loaded, state, exclusive=True)  # a scratch state of its own

        self.name = f"emulator ({Path(str(profile)).stem})"
        self._open = opener
        self._initial = initial_state
        self._root = _scratch_root()
        self._examples = 0
        self._card: CardLike | None = None
        self.fresh()

    def restart(self) -> bytes:
        """A power loss or a new process between two commands: the card is closed and opened
        again on the same state directory, then powered on; returns the ATR."""
        self.card.close()
        self._card = None
        self._card = self._open(self.state_dir)
        return self._card.power_on()

    def _state_dir(self) -> Path:
        self._examples += 1
        state = self._root / str(self._examples)
        if self._initial is not None:
            shutil.copytree(self._initial, state)
        return state

    def fresh(self) -> None:
        if self._card is not None:
            self._card.close()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._card = None
        self._card = self._open(self._state_dir())
        self._card.power_on()

    @property
    def state_dir(self) -> Path:
        """The state directory of the card now open."""
        return self._root / str(self._examples)

    @property
    def card(self) -> CardLike:
        if self._card is None:
            raise TargetError("the emulator target is closed")
        return self._card

    def transmit(self, command: bytes) -> bytes:
        return self.card.transmit(command)

    def reset(self) -> bytes:
        return self.card.reset()

    def power_cycle(self) -> bytes | None:
        self.card.power_off()
        return self.card.power_on()

    def close(self) -> None:
        if self._card is not None:
            self._card.close()
            self._card = None
        shutil.rmtree(self._root, ignore_errors=True)


class PcscTarget:
    """A card in a PC/SC reader, through pyscard's `smartcard.scard` (pcscd on Linux).

    Never disposable: a real card may be behind any reader, so the PIN guard applies.
    `reader` is a reader name, or None for the first reader holding a card.
    """

    disposable = False

    def __init__(self, reader: str | None = None) -> None:
        try:
            from smartcard import scard
        except ImportError as error:
            raise TargetError(f"PC/SC needs pyscard: install mynacard[pcsc] ({error})") from None
        self._scard = scard
        rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        self._check(rc, "cannot reach pcscd")
        self._context = context
        self._handle: int | None = None
        try:
            self.reader = reader if reader is not None else self._first_reader_with_card()
            self.name = f"pcsc:{self.reader}"
            rc, handle, protocol = scard.SCardConnect(
                context, self.reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1
            )
            if rc != scard.SCARD_S_SUCCESS:
                rc, handle, protocol = scard.SCardConnect(
                    context, self.reader, scard.SCARD_SHARE_SHARED,
                    scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
                )  # fmt: skip
            self._check(rc, f"cannot connect to the card in {self.reader!r}")
        except BaseException:
            scard.SCardReleaseContext(context)
            raise
        self._handle = handle
        self.protocol = protocol

    def _check(self, rc: int, what: str) -> None:
        if rc != self._scard.SCARD_S_SUCCESS:
            raise TargetError(
                f"{what}: {self._scard.SCardGetErrorMessage(rc)} (0x{rc & 0xFFFFFFFF:08X})"
            )

    def _first_reader_with_card(self) -> str:
        scard = self._scard
        rc, names = scard.SCardListReaders(self._context, [])
        self._check(rc, "cannot list readers")
        if names:
            rc, states = scard.SCardGetStatusChange(
                self._context, 0, [(name, scard.SCARD_STATE_UNAWARE) for name in names]
            )
            self._check(rc, "cannot read the readers' states")
            for name, event, _atr in states:
                if event & scard.SCARD_STATE_PRESENT:
                    return str(name)
        raise TargetError(f"no reader holds a card (readers: {', '.join(names) or 'none'})")

    def transmit(self, command: bytes) -> bytes:
        if self._handle is None:
            raise TargetError(f"{self.name} is closed")
        rc, response = self._scard.SCardTransmit(self._handle, self.protocol, list(command))
        self._check(rc, f"{self.reader!r} did not transmit {command.hex().upper()}")
        return bytes(response)

    def _reconnect(self, disposition: int) -> bytes:
        if self._handle is None:
            raise TargetError(f"{self.name} is closed")
        scard = self._scard
        rc, self.protocol = scard.SCardReconnect(
            self._handle, scard.SCARD_SHARE_SHARED, self.protocol, disposition
        )
        self._check(rc, f"cannot reset the card in {self.reader!r}")
        rc, _reader, _state, _protocol, atr = scard.SCardStatus(self._handle)
        self._check(rc, f"cannot read the ATR in {self.reader!r}")
        return bytes(atr)

    def reset(self) -> bytes:
        return self._reconnect(self._scard.SCARD_RESET_CARD)

    def power_cycle(self) -> bytes | None:
        return self._reconnect(self._scard.SCARD_UNPOWER_CARD)

    def fresh(self) -> None:
        """A real card keeps its state; the session starts over with a warm reset."""
        self.reset()

    def close(self) -> None:
        scard = self._scard
        if self._handle is not None:
            scard.SCardDisconnect(self._handle, scard.SCARD_RESET_CARD)
            self._handle = None
            scard.SCardReleaseContext(self._context)


class TranscriptTarget:
    """A recorded transcript playing the card: each command must be the next one recorded.

    The transcript must hold exact responses (as `RecordingTarget` writes them).
    """

    disposable = True

    def __init__(self, exchanges: Sequence[Exchange], name: str = "transcript") -> None:
        self.name = name
        self._exchanges = list(exchanges)
        self._position = 0

    def _next(self, action: Action, command: bytes) -> bytes:
        if self._position >= len(self._exchanges):
            raise TargetError(f"{self.name}: the recording ends before {action.value}")
        exchange = self._exchanges[self._position]
        self._position += 1
        if exchange.action is not action or exchange.command != command:
            wanted = command.hex().upper() if action is Action.APDU else action.value
            raise TargetError(
                f"{self.name}: step {self._position} recorded {exchange.format()!r}, "
                f"but the bench sent {wanted}"
            )
        try:
            return bytes.fromhex(exchange.expected.text)
        except ValueError:
            raise TargetError(
                f"{self.name}: step {self._position} is a pattern, not a recorded response"
            ) from None

    def transmit(self, command: bytes) -> bytes:
        return self._next(Action.APDU, command)

    def reset(self) -> bytes:
        return self._next(Action.RESET, b"")

    def power_cycle(self) -> bytes | None:
        return self._next(Action.POWER, b"")

    def fresh(self) -> None:
        """A recording is one session: fresh() does not rewind it."""

    def close(self) -> None:
        self._position = len(self._exchanges)


class TargetLayer:
    """A layer stacked on a target (apdu4j-style): everything passes through to `inner`;
    a layer overrides only what it changes."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = inner.name
        self.disposable = inner.disposable

    def transmit(self, command: bytes) -> bytes:
        return self.inner.transmit(command)

    def reset(self) -> bytes:
        return self.inner.reset()

    def power_cycle(self) -> bytes | None:
        return self.inner.power_cycle()

    def fresh(self) -> None:
        self.inner.fresh()

    def close(self) -> None:
        self.inner.close()


class RecordingTarget(TargetLayer):
    """Passes everything to `inner` and records each exchange with its exact response."""

    def __init__(self, inner: Target, recorder: Recorder) -> None:
        super().__init__(inner)
        self.recorder = recorder

    def transmit(self, command: bytes) -> bytes:
        response = self.inner.transmit(command)
        self.recorder.add(Exchange(Action.APDU, command, Pattern.exact(response)))
        return response

    def reset(self) -> bytes:
        atr = self.inner.reset()
        self.recorder.add(Exchange(Action.RESET, b"", Pattern.exact(atr)))
        return atr

    def power_cycle(self) -> bytes | None:
        atr = self.inner.power_cycle()
        if atr is not None:
            self.recorder.add(Exchange(Action.POWER, b"", Pattern.exact(atr)))
        return atr


class ChainedResponses(TargetLayer):
    """Collects answers a card gives in pieces (61xx, then GET RESPONSE until 9000), as
    T=0 middleware does (docs/decisions.md #23, the `t0_chaining` quirk); a no-op otherwise."""

    MAX_PIECES = 300

    def transmit(self, command: bytes) -> bytes:
        answer = self.inner.transmit(command)
        data = b""
        for _ in range(self.MAX_PIECES):
            if len(answer) < 2 or answer[-2] != 0x61:
                return data + answer
            data += answer[:-2]
            answer = self.inner.transmit(bytes((0x00, 0xC0, 0x00, 0x00, answer[-1])))
        raise TargetError(f"{self.name}: more than {self.MAX_PIECES} GET RESPONSE pieces")


def open_target(spec: str, profile: str | None = None) -> Target:
    """A target from its command-line name: ``emulator``, ``pcsc``, ``pcsc:READER``,
    ``transcript:FILE`` or ``python:MODULE:FACTORY`` (`custom`).  The emulator opens
    `profile` (default ``default``); a factory may take it."""
    kind, _, argument = spec.partition(":")
    if kind == "emulator" and not argument:
        return EmulatorTarget(profile or "default")
    if kind == "pcsc":
        return PcscTarget(argument or None)
    if kind == "transcript" and argument:
        from .transcript import load

        return TranscriptTarget(load(Path(argument)), name=spec)
    if kind == "python":
        from .custom import python_target

        return python_target(argument, profile)
    raise TargetError(
        f"unknown target {spec!r}: use emulator, pcsc, pcsc:READER, transcript:FILE "
        "or python:MODULE:FACTORY"
    )
