"""A card served to one vpcd reader from a thread, with its card events under control:
insert, remove, reset, power off, another profile, a fault plan applied or cleared, counters,
and a wait until pcscd sees the card (docs/control.md).

    with ServedCard(CardSpec(profile="default", state=Path("/tmp/s"), reader=0)) as card:
        card.wait_ready(5)
        card.remove()
        card.insert()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from .faults import Fault, read_plan, stack_faults
from .layers import ApduLog, CardInterface, Layer
from .trace import Trace, TraceFormat
from .vpcd import VPCD_BASE_PORT, VPCD_HOST, VpcdClient, reader_name, reader_port

__all__ = ["CardSpec", "Counters", "ServedCard"]

log = logging.getLogger(__name__)

COUNTERS = ("apdus", "power_on", "reset", "power_off", "faults", "connects", "removals",
            "insertions")  # fmt: skip
_CONFIRM_TIMEOUT = 2.0  # how long pcscd may take to report a card vpcd has powered on


@dataclass(frozen=True)
class CardSpec:
    """What to serve where: a profile and its state on a vpcd reader (or any vpcd port)."""

    profile: str | Path
    state: Path
    reader: int = 0
    host: str = VPCD_HOST
    port: int | None = None  # default: the port of `reader`
    quirks: tuple[tuple[str, str], ...] = ()
    atr: str | None = None  # another ATR: an interface, a name of card-spec §1, or hex
    fault: Path | None = None
    trace: TextIO | None = None
    trace_format: TraceFormat = "json"
    trace_secrets: bool = False
    verbose: bool = False
    frame_timeout: float = 1.0

    @property
    def vpcd_port(self) -> int:
        return self.port if self.port is not None else reader_port(self.reader)


class Counters(Layer):
    """Counts what passes: APDUs (`apdus`, a plain int: the cheapest count on the APDU's
    path) and power events (and, through `count`, anything else) in `counts`."""

    def __init__(self, inner: CardInterface) -> None:
        super().__init__(inner)
        self.counts: Counter[str] = Counter()
        self.apdus = 0

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def power_on(self) -> bytes:
        self.count("power_on")
        return super().power_on()

    def reset(self) -> bytes:
        self.count("reset")
        return super().reset()

    def power_off(self) -> None:
        self.count("power_off")
        super().power_off()

    def transmit(self, capdu: bytes) -> bytes:
        self.apdus += 1
        return self.inner.transmit(capdu)


class _Guarded(Layer):
    """One call at a time into the card: the vpcd thread and the controller share `lock`."""

    def __init__(self, inner: CardInterface, lock: threading.RLock) -> None:
        super().__init__(inner)
        self.lock = lock
        self._acquire, self._release = lock.acquire, lock.release

    @property
    def atr(self) -> bytes:
        with self.lock:
            return self.inner.atr

    def power_on(self) -> bytes:
        with self.lock:
            return self.inner.power_on()

    def reset(self) -> bytes:
        with self.lock:
            return self.inner.reset()

    def power_off(self) -> None:
        with self.lock:
            self.inner.power_off()

    def transmit(self, capdu: bytes) -> bytes:
        self._acquire()  # not `with`: on CPython 3.11 it costs twice as much on an RLock
        try:
            return self.inner.transmit(capdu)
        finally:
            self._release()


class ServedCard:
    """A card (profile, state, quirks, faults, trace) served to one vpcd reader.

    The card stack, outermost first: trace, APDU log, counters, the fault layers of the
    current plan (none when there is no plan: switching plans sets the counters' `inner`),
    the card from `open_card`. `start()` runs the vpcd client in a thread;
    `on_ready` is called (from another thread) each time pcscd comes to see the card.
    """

    def __init__(
        self, spec: CardSpec, on_ready: Callable[[ServedCard], None] = lambda card: None
    ) -> None:
        self.spec = spec
        self.on_ready = on_ready
        self.port = spec.vpcd_port
        self.name = reader_name(self.port) if spec.host == VPCD_HOST else None
        self.reader = self.port - VPCD_BASE_PORT if self.name else None  # vpcd reader number
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._generation = 0  # connections so far; a stale readiness check is ignored
        self._powered = False  # vpcd powered the card on in this connection
        self._faults: tuple[list[Fault], int] = read_plan(spec.fault) if spec.fault else ([], 0)
        self.plan = str(spec.fault) if spec.fault else None
        self._trace: Trace | None = None
        self.profile, self.state = spec.profile, spec.state
        self._base, self.profile_name = self._open(spec.profile, spec.state)
        self._counters = Counters(self._base)  # its `inner`: the base card or the fault layers
        self._stack = self._outer_layers(self._counters)
        self._client = VpcdClient(
            _Guarded(self._stack, self._lock),
            spec.host,
            self.port,
            frame_timeout=spec.frame_timeout,
            on_event=self._vpcd_event,
        )
        self._thread: threading.Thread | None = None
        self._stack_faults()

    # -- building the stack -------------------------------------------------------------------

    def _open(self, profile: str | Path, state: Path) -> tuple[CardInterface, str]:
        """The card of `profile` (with the spec's quirks) on `state`, and the profile's name."""
        from .card import open_card
        from .personalize.profile import load_profile, with_atr, with_quirks

        loaded = with_quirks(load_profile(profile), list(self.spec.quirks))
        if self.spec.atr is not None:
            loaded = with_atr(loaded, self.spec.atr)
        return open_card(loaded, state), loaded.name

    def _outer_layers(self, card: CardInterface) -> CardInterface:
        spec = self.spec
        if spec.verbose:
            card = ApduLog(card, logging.getLogger("mynacard.apdu"))
        if spec.trace is not None:
            where = self.name or f"{spec.host}:{self.port}"
            card = self._trace = Trace(
                card, spec.trace, reader=where, fmt=spec.trace_format, secrets=spec.trace_secrets
            )
        return card

    def _note(self, event: str) -> None:
        self._counters.count("faults")
        if self._trace is not None:
            self._trace.note(event)

    @property
    def stack(self) -> CardInterface:
        """The card as the vpcd client drives it: every layer, behind the lock."""
        return self._client.card

    # -- running ------------------------------------------------------------------------------

    def start(self) -> ServedCard:
        """Serve the card from a thread (it connects to vpcd and keeps reconnecting)."""
        self._thread = threading.Thread(
            target=self._client.run, name=f"vpcd-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, then close the card (its state is released)."""
        self._client.request_stop()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            self._stack.close()

    def __enter__(self) -> ServedCard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- readiness ----------------------------------------------------------------------------

    def _vpcd_event(self, event: str) -> None:
        if event == "connected":
            self._generation += 1
            self._powered = False
            self._counters.count("connects")
        elif event == "disconnected":
            self._ready.clear()
        elif event == "power on":
            self._powered = True
        elif event == "atr" and self._powered and not self._ready.is_set():
            # pcscd has read the ATR of the card it powered on: it is about to report it.
            self._powered = False
            generation = self._generation
            threading.Thread(target=self._confirm, args=(generation,), daemon=True).start()

    def _confirm(self, generation: int) -> None:
        """Wait until pcscd reports the card (when pyscard can ask it), then announce it."""
        if self.name is not None:
            _pcscd_reports_card(self.name, _CONFIRM_TIMEOUT)
        if generation == self._generation and self._client.connected:
            self._ready.set()
            self.on_ready(self)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until pcscd sees the card (True) or `timeout` seconds passed (False)."""
        return self._ready.wait(timeout)

    # -- card events ---------------------------------------------------------------------------

    def remove(self) -> None:
        """Take the card out: pcscd reports the reader empty (at its next poll, ≤ 0.4 s)."""
        self._counters.count("removals")
        self._ready.clear()
        self._client.remove()

    def insert(self) -> None:
        """Put the card back in: it connects to vpcd again and pcscd sees it (≤ 0.4 s)."""
        self._counters.count("insertions")
        self._client.insert()

    def reset(self) -> bytes:
        """Warm reset from the card's side (as the `reset` fault): selection and verified
        PINs are gone; pcscd is not told.  Returns the ATR."""
        with self._lock:
            return self._stack.reset()

    def power_off(self) -> None:
        """A power cut: the session is lost and pcscd sees the card leave and come back."""
        with self._lock:
            self._stack.power_off()
            self._ready.clear()
            self._client.drop()

    def use_profile(self, profile: str | Path, state: Path | None = None) -> None:
        """Swap in another card: `profile` with its state in `state` (default: a directory
        named after the profile next to the current one); the fault plan stays."""
        self.remove()
        try:
            with self._lock:
                target = state or self.state.parent / Path(profile).stem
                self._base.close()
                try:
                    self._base, self.profile_name = self._open(profile, target)
                except BaseException:
                    self._base, _ = self._open(self.profile, self.state)  # the old card back
                    raise
                self.profile, self.state = profile, target
                self._stack_faults()
        finally:
            self.insert()

    def apply_faults(self, plan: Path) -> None:
        """Apply a fault plan (TOML, docs/faults.md) from the next command on."""
        faults = read_plan(plan)
        with self._lock:
            self._faults, self.plan = faults, str(plan)
            self._stack_faults()

    def clear_faults(self) -> None:
        """Remove every fault: the card behaves normally from the next command on."""
        with self._lock:
            self._faults, self.plan = ([], 0), None
            self._stack_faults()

    def _stack_faults(self) -> None:
        faults, seed = self._faults
        self._counters.inner = stack_faults(self._base, faults, seed, self._note)

    def status(self) -> dict[str, Any]:
        """What the card is and does now, with its counters (JSON-ready)."""
        return {
            "reader": self.reader,
            "name": self.name,
            "vpcd": f"{self.spec.host}:{self.port}",
            "profile": self.profile_name,
            "state": str(self.state),
            "inserted": self._client.inserted,
            "connected": self._client.connected,
            "ready": self._ready.is_set(),
            "fault_plan": self.plan,
            "counters": {
                **{name: self._counters.counts[name] for name in COUNTERS},
                "apdus": self._counters.apdus,
            },
        }


def _pcscd_reports_card(name: str, timeout: float) -> bool | None:
    """Whether pcscd reports a card in reader `name` within `timeout` s; None if pyscard or
    pcscd cannot be asked."""
    try:
        from smartcard import scard
    except ImportError:
        return None
    rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        return None
    deadline = time.monotonic() + timeout
    try:
        known, wait_ms = scard.SCARD_STATE_UNAWARE, 0
        while True:
            rc, states = scard.SCardGetStatusChange(context, wait_ms, [(name, known)])
            if rc != scard.SCARD_S_SUCCESS:  # timed out, or no such reader
                return False
            if states[0][1] & scard.SCARD_STATE_PRESENT:
                return True
            known = states[0][1] & ~scard.SCARD_STATE_CHANGED
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                return False
    finally:
        scard.SCardReleaseContext(context)
