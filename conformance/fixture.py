"""The `mynacard_card` fixture for users' own tests: a card served for one test, in process or
through pcscd (`--mynacard-backend`), with the profile, quirks, ATR and fault plan the test
asks for, its state in the test's tmp_path (docs/testing-your-middleware.md).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mynacard.card import open_card
from mynacard.faults import read_plan, stack_faults
from mynacard.layers import CardInterface
from mynacard.personalize.profile import Profile, load_profile, with_atr, with_quirks
from mynacard.store import StateError

from .targets import PcscTarget, TargetError

BACKENDS = ("inproc", "pcsc")
SETTINGS = ("profile", "quirks", "faults", "seed", "atr", "interface")
START_TIMEOUT = 10.0


class CardSetupError(Exception):
    """The card the test asked for cannot be served; the message says why."""


@dataclass(frozen=True)
class CardSettings:
    """What a test asks for: from `@pytest.mark.mynacard(...)` or an indirect parameter."""

    profile: str | Path = "default"
    quirks: Mapping[str, Any] = field(default_factory=dict)
    faults: str | Path | Sequence[Mapping[str, Any]] = ()
    seed: int = 0
    atr: str | None = None  # a name of card-spec §1, "contact", "contactless" or hex

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> CardSettings:
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise CardSetupError(
                f"mynacard: no setting {', '.join(unknown)} (settings: {', '.join(SETTINGS)})"
            )
        given = dict(values)
        if "interface" in given and "atr" in given:
            raise CardSetupError("mynacard: give interface or atr, not both")
        if "interface" in given:
            given["atr"] = given.pop("interface")
        return cls(**given)

    def quirk_assignments(self) -> list[tuple[str, str]]:
        """The quirks as `serve --quirk NAME=VALUE` takes them (VALUE in TOML)."""
        return [(name, _toml(value)) for name, value in self.quirks.items()]

    def plan_file(self, directory: Path) -> Path | None:
        """The fault plan as a file (written to `directory` when given as a list)."""
        if isinstance(self.faults, str | Path):
            return Path(self.faults)
        if not self.faults:
            return None
        lines = [f"seed = {self.seed}"]
        for fault in self.faults:
            lines += ["[[fault]]", *(f"{key} = {_toml(value)}" for key, value in fault.items())]
        path = directory / "faults.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def load(self) -> Profile:
        profile = with_quirks(load_profile(self.profile), self.quirk_assignments())
        return with_atr(profile, self.atr) if self.atr is not None else profile


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


class FixtureCard(ABC):
    """A served card at the transmit level. `reader` is the PC/SC reader name for your own
    client (None in process); `profile` the card's data; `state_dir` its state."""

    def __init__(self, backend: str, profile: Profile, state_dir: Path) -> None:
        self.backend = backend
        self.profile = profile
        self.state_dir = state_dir
        self.reader: str | None = None

    @property
    def atr(self) -> bytes:
        return self.profile.atr

    @abstractmethod
    def transmit(self, command: bytes) -> bytes:
        """One command APDU, its response (data + SW)."""

    @abstractmethod
    def reset(self) -> bytes:
        """Warm reset; returns the ATR."""

    @abstractmethod
    def power_cycle(self) -> bytes:
        """Power off and on; returns the ATR."""

    @abstractmethod
    def close(self) -> None:
        """Release the card (through pcscd: stop its server)."""


class InProcessCard(FixtureCard):
    """`open_card` in this process, inside the fault layers of the plan (a `remove` fault
    raises `mynacard.faults.CardRemoved` from `transmit`)."""

    def __init__(self, profile: Profile, state_dir: Path, plan: Path | None) -> None:
        super().__init__("inproc", profile, state_dir)
        faults, seed = read_plan(plan) if plan is not None else ([], 0)
        self.card: CardInterface = stack_faults(
            open_card(profile, state_dir), faults, seed, lambda event: None
        )
        self.card.power_on()

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def transmit(self, command: bytes) -> bytes:
        return self.card.transmit(command)

    def reset(self) -> bytes:
        return self.card.reset()

    def power_cycle(self) -> bytes:
        self.card.power_off()
        return self.card.power_on()

    def close(self) -> None:
        self.card.close()


class PcscCard(FixtureCard):
    """`mynacard serve` on a vpcd reader, as a subprocess, until the test ends. `transmit`
    goes through pcscd (TargetError when the transport fails, e.g. the card was removed)."""

    def __init__(
        self, settings: CardSettings, profile: Profile, state_dir: Path, reader: int
    ) -> None:
        super().__init__("pcsc", profile, state_dir)
        self.reader = f"Virtual PCD 00 {reader:02d}"
        self._target: PcscTarget | None = None
        if wait_for_card(self.reader, present=True, timeout=0):
            raise CardSetupError(
                f"{self.reader!r} already holds a card (is another `mynacard serve` running? "
                "--mynacard-reader N picks another reader)"
            )
        command = [sys.executable, "-m", "mynacard", "serve", "--profile", str(settings.profile)]
        command += ["--state", str(state_dir), "--reader", str(reader)]
        command += ["--control-dir", str(state_dir.parent / "control")]  # the test's own
        for name, value in settings.quirk_assignments():
            command += ["--quirk", f"{name}={value}"]
        if settings.atr is not None:
            command += ["--atr", settings.atr]
        plan = settings.plan_file(state_dir.parent)
        if plan is not None:
            command += ["--fault", str(plan)]
        self.log_path = state_dir.parent / "serve.log"
        self._log: IO[str] = self.log_path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        if not wait_for_card(self.reader, present=True, timeout=START_TIMEOUT):
            self.close()
            said = self.log_path.read_text(encoding="utf-8", errors="replace").strip()
            raise CardSetupError(f"no card in {self.reader!r} after {START_TIMEOUT} s: {said}")

    def wait_for_card(self, *, present: bool = True, timeout: float = 5.0) -> bool:
        """Wait until pcscd sees the card in the reader (or, `present=False`, gone)."""
        return bool(wait_for_card(self.reader or "", present=present, timeout=timeout))

    @property
    def target(self) -> PcscTarget:
        if self._target is None:
            self._target = PcscTarget(self.reader)
        return self._target

    def _through(self, call: Callable[[PcscTarget], bytes | None]) -> bytes:
        try:
            return call(self.target) or b""
        except TargetError:
            self._drop_target()  # after a removal the next call connects again
            raise

    def transmit(self, command: bytes) -> bytes:
        return self._through(lambda target: target.transmit(command))

    def reset(self) -> bytes:
        return self._through(PcscTarget.reset)

    def power_cycle(self) -> bytes:
        return self._through(PcscTarget.power_cycle)

    def _drop_target(self) -> None:
        target, self._target = self._target, None
        if target is not None:
            with contextlib.suppress(TargetError):
                target.close()

    def close(self) -> None:
        self._drop_target()
        process = self._process
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._log.close()
        wait_for_card(self.reader or "", present=False, timeout=5.0)


def wait_for_card(reader: str, *, present: bool, timeout: float) -> bool | None:
    """Whether pcscd sees a card in `reader` (or none, `present=False`) within `timeout`
    seconds; None when pcscd cannot be reached."""
    from smartcard import scard

    deadline = time.monotonic() + timeout
    while True:
        rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if rc != scard.SCARD_S_SUCCESS:
            return None
        try:
            rc, states = scard.SCardGetStatusChange(
                context, 0, [(reader, scard.SCARD_STATE_UNAWARE)]
            )
            if rc == scard.SCARD_S_SUCCESS and bool(states[0][1] & scard.SCARD_STATE_PRESENT) == (
                present
            ):
                return True
        finally:
            scard.SCardReleaseContext(context)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def open_fixture_card(
    values: Mapping[str, Any], backend: str, tmp_path: Path, reader: int = 0
) -> FixtureCard:
    """The card `values` (the marker's settings) ask for on `backend`, state in
    tmp_path/"mynacard-state"; the caller closes it. CardSetupError says what is wrong."""
    settings = CardSettings.of(values)
    state_dir = tmp_path / "mynacard-state"
    try:
        profile = settings.load()
        if backend == "inproc":
            return InProcessCard(profile, state_dir, settings.plan_file(tmp_path))
        try:
            import smartcard.scard  # noqa: F401
        except ImportError as error:
            raise CardSetupError(f"the pcsc backend needs pyscard ({error})") from None
        if wait_for_card("", present=False, timeout=0) is None:
            raise CardSetupError(
                "the pcsc backend cannot reach pcscd (is it running with vsmartcard-vpcd?)"
            )
        return PcscCard(settings, profile, state_dir, reader)
    except (OSError, ValueError, StateError) as error:  # ProfileError is a ValueError
        raise CardSetupError(f"mynacard: {error}") from None
