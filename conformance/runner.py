"""Run the bench: open the target(s), survey the card, run the state machine, collect results."""

from __future__ import annotations

import copy
import os
import secrets
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from .bench import Bench, Deviation, Divergence, Link, Stats
from .fleet import example_database
from .guard import GuardRefusal, PinGuard
from .machine import INVARIANT_SECTIONS, build_machine
from .model import CardFacts
from .profile import ProfileFacts, Quirks, read_profile
from .targets import ChainedResponses, RecordingTarget, Target, TargetLayer, open_target
from .transcript import Action, Exchange, Recorder

DEFAULT_MAX_EXAMPLES = 200
DEFAULT_STEPS = 40
HEARTBEAT_SECONDS = 5.0
TRANSPORT = "transport"  # the section of a deviation that is the target failing (bench.py)


@dataclass
class RunConfig:
    """What `mynacard conformance` was asked to do."""

    target: str = "emulator"
    profile: str | None = None
    pins: dict[str, str] = field(default_factory=dict)
    max_examples: int = DEFAULT_MAX_EXAMPLES
    steps: int = DEFAULT_STEPS
    seed: int | None = None  # None: `run` chooses one (and the result says which)
    pin_budget: int = 0
    differential: str | None = None
    record: Path | None = None
    progress: bool = False
    database: str | None = None  # shared example database (`fleet`): redis://... or a folder


@dataclass(frozen=True)
class Evidence:
    """What a deviating target answered: `answer`; in differential mode `reference` is the
    other target's answer to the same command."""

    answer: bytes
    reference: bytes | None = None


@dataclass
class RunResult:
    """A run's outcome; `config.seed` is the seed it ran with (chosen when none was given)."""

    config: RunConfig
    stats: Stats
    deviations: list[Deviation]
    capabilities: dict[str, str]
    quirks: Quirks
    targets: list[str]
    recorded: Recorder | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    section_times: dict[str, float] = field(default_factory=dict)
    evidence: dict[int, Evidence] = field(default_factory=dict)  # by deviation index

    @property
    def conformant(self) -> bool:
        return not self.deviations

    @property
    def seed(self) -> int:
        assert self.config.seed is not None
        return self.config.seed

    @property
    def target_failed(self) -> bool:
        """The run ended because the target (or its transport) failed: an error, not a
        verdict on the card."""
        return any(deviation.section == TRANSPORT for deviation in self.deviations)


def choose_seed() -> int:
    """A fresh seed for a run that was given none (printed, so that it can be repeated)."""
    return secrets.randbelow(1 << 32)


def hypothesis_home_dir() -> Path:
    """Where the bench keeps hypothesis's files: ``$XDG_CACHE_HOME/mynacard/hypothesis``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mynacard" / "hypothesis"


@contextmanager
def hypothesis_home() -> Iterator[None]:
    """Keep hypothesis's files (its caches) out of the working directory during a run, and
    give the process its own setting back afterwards (a test suite may use hypothesis too).

    An explicit HYPOTHESIS_STORAGE_DIRECTORY is left alone."""
    from hypothesis import configuration

    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    key = "__hypothesis_home_directory"  # module-level, not name-mangled
    before = configuration.__dict__.get(key)
    configuration.set_hypothesis_home_dir(hypothesis_home_dir())
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


TargetOpener = Callable[[str, str | None], Target]


def make_facts(profile: ProfileFacts | None, pins: dict[str, str]) -> CardFacts:
    if profile is not None:
        return CardFacts.from_profile(profile, pins)
    return CardFacts.learning(pins)


class LastAnswer(TargetLayer):
    """Remembers the target's last answer (a response or an ATR), for failure reports."""

    def __init__(self, inner: Target) -> None:
        super().__init__(inner)
        self.last = b""

    def transmit(self, command: bytes) -> bytes:
        self.last = self.inner.transmit(command)
        return self.last

    def reset(self) -> bytes:
        self.last = self.inner.reset()
        return self.last

    def power_cycle(self) -> bytes | None:
        atr = self.inner.power_cycle()
        if atr is not None:
            self.last = atr
        return atr


def make_link(
    target: Target, profile: ProfileFacts | None, pins: dict[str, str], budget: int
) -> Link:
    """A target with its own facts, its answers reassembled from 61xx pieces (and the last
    one remembered), and behind the PIN guard unless it is disposable."""
    target = LastAnswer(ChainedResponses(target))
    facts = make_facts(profile, pins)
    guard = None
    if not target.disposable:
        known = {**(profile.pins if profile else {}), **pins}
        guard = PinGuard(target, pins=known, budget=budget)
    return Link(target, facts, guard)


def hypothesis_settings(config: RunConfig) -> settings:
    """Generation only: failing sequences are cut down by `minimize`, which replays APDUs
    directly and is much cheaper than shrinking whole examples."""
    return settings(
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        max_examples=config.max_examples,
        stateful_step_count=config.steps,
        deadline=None,
        database=example_database(config.database),
        derandomize=False,
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )


def _deviations_in(error: BaseException) -> list[Deviation]:
    if isinstance(error, Deviation):
        return [error]
    if isinstance(error, BaseExceptionGroup):
        return [d for inner in error.exceptions for d in _deviations_in(inner)]
    return []


class Progress:
    """Progress on stderr: a one-line bar on a terminal; elsewhere (a log, CI) a heartbeat
    line every `interval` seconds.  Both end at the total when the run went to its end."""

    WIDTH = 30

    def __init__(
        self,
        total: int,
        stats: Stats,
        stream: TextIO | None = None,
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.total = total
        self.stats = stats
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.bar:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def __call__(self, done: int) -> None:
        self.done = min(done, self.total)
        if self.bar:
            self._draw(self.done)

    def _draw(self, done: int) -> None:
        filled = self.WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} examples")
        self.stream.flush()

    def _line(self, done: int, note: str = "") -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"progress: {done}/{self.total} examples, {self.stats.rule_steps} steps, "
            f"{elapsed:.0f} s{note}\n"
        )
        self.stream.flush()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._line(self.done)

    def close(self, finished: bool) -> None:
        """`finished`: the run spent its budget (the count ends at the total); otherwise it
        stopped early (a deviation, an error, Ctrl-C) and says where."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        done = self.total if finished else self.done
        if self.bar:
            self._draw(done)
            self.stream.write("\n" if finished else " (stopped)\n")
            self.stream.flush()
        else:
            self._line(done, "" if finished else " (stopped)")


class Interrupt:
    """Ctrl-C that always stops the run: the SIGINT handler raises KeyboardInterrupt, and
    remembers it, since an exception raised where Python ignores it (a garbage-collector
    callback, as hypothesis installs one) would be lost; every exchange checks again.

    Only in the main thread and only over Python's own handler (a program's stays)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Interrupt:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


class Instruments:
    """Watches a bench while it runs, without changing what it checks: the time of the
    exchanges counted in each spec section (from the start of the exchange until it is
    counted there), the answer behind each deviation, and Ctrl-C before every exchange."""

    def __init__(self, bench: Bench, interrupt: Interrupt) -> None:
        self.bench = bench
        self.interrupt = interrupt
        self.times: dict[str, float] = {}
        self.evidence: weakref.WeakKeyDictionary[Deviation, Evidence] = weakref.WeakKeyDictionary()
        self._exchange: list[Any] = [0.0, None]  # when the exchange began, the section noted last
        self._installed: list[tuple[object, str]] = []
        section, times, exchange = bench.stats.section, self.times, self._exchange
        clock = time.perf_counter

        def noting(name: str) -> Any:
            if name != exchange[1]:  # an exchange counted twice in one section: timed once
                exchange[1] = name
                times[name] = times.get(name, 0.0) + clock() - exchange[0]
            return section(name)

        self._install(bench.stats, "section", noting)
        for name in ("exchange", "reset", "power_cycle", "restart"):
            self._install(bench, name, self._timed(getattr(bench, name)))
        self._install(bench, "fail", self._witnessed(bench.fail))

    def _install(self, owner: object, name: str, wrapper: Callable[..., Any]) -> None:
        setattr(owner, name, wrapper)
        self._installed.append((owner, name))

    def stop_clocks(self) -> None:
        """No more timing (Ctrl-C and the deviations are still watched)."""
        if (self.bench.stats, "section") in self._installed:
            self._installed.remove((self.bench.stats, "section"))
            del self.bench.stats.section

    def remove(self) -> None:
        for owner, name in self._installed:
            delattr(owner, name)
        self._installed.clear()

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        exchange, clock, check = self._exchange, time.perf_counter, self.interrupt.check

        def timed(*args: Any) -> Any:
            check()
            exchange[0], exchange[1] = clock(), None
            return method(*args)

        return timed

    def _witnessed(self, fail: Callable[..., Deviation]) -> Callable[..., Deviation]:
        def witnessed(*args: Any, **kwargs: Any) -> Deviation:
            deviation = fail(*args, **kwargs)
            primary = self._last(self.bench.primary)
            secondary = self._last(self.bench.secondary)
            if isinstance(deviation, Divergence) and secondary is not None:
                self.evidence[deviation] = Evidence(secondary, primary)
            elif primary is not None:
                self.evidence[deviation] = Evidence(primary)
            return deviation

        return witnessed

    @staticmethod
    def _last(link: Link | None) -> bytes | None:
        if link is None or not isinstance(link.target, LastAnswer):
            return None
        return link.target.last


def run(config: RunConfig, opener: TargetOpener = open_target) -> RunResult:
    """One conformance run; the targets are closed again before it returns."""
    profile = read_profile(config.profile) if config.profile else None
    recorder = Recorder() if config.record is not None else None
    targets: list[Target] = []
    try:
        primary = opener(config.target, config.profile)
        targets.append(primary)
        if recorder is not None:
            primary = RecordingTarget(primary, recorder)
        links = [make_link(primary, profile, config.pins, config.pin_budget)]
        if config.differential:
            secondary = opener(config.differential, config.profile)
            targets.append(secondary)
            links.append(make_link(secondary, profile, config.pins, config.pin_budget))
        bench = Bench(*links)
        return _run_bench(bench, config, recorder)
    finally:
        for target in targets:
            target.close()


MAX_REPLAYS = 400


def _replay(bench: Bench, steps: list[Exchange], section: str) -> Deviation | None:
    """Run `steps` on a fresh card; the deviation they lead to in `section`, if any."""
    bench.begin_example()
    try:
        for step in steps:
            if step.action is Action.RESET:
                bench.reset()
            elif step.action is Action.POWER:
                bench.power_cycle()
            else:
                try:
                    bench.exchange(step.command)
                except GuardRefusal:
                    continue
            for kind, message in bench.observer.messages.items():
                raise bench.fail(INVARIANT_SECTIONS[kind], f"invariant: {message}")
    except Deviation as deviation:
        return deviation if deviation.section == section else None
    return None


def minimize(bench: Bench, deviation: Deviation) -> Deviation:
    """Cut the failing transcript down to a 1-minimal one (ddmin over its exchanges).

    Only on disposable targets: replaying on a card that keeps its state is not free."""
    if not bench.disposable:
        return deviation
    steps = list(deviation.transcript)
    best, replays, chunks = deviation, 0, 2
    while len(steps) >= 2 and replays < MAX_REPLAYS:
        size = max(1, len(steps) // chunks)
        for start in range(0, len(steps), size):
            candidate = steps[:start] + steps[start + size :]
            replays += 1
            found = _replay(bench, candidate, deviation.section)
            if found is not None:
                steps, best = candidate, found
                chunks = max(chunks - 1, 2)
                break
        else:
            if size == 1:
                break
            chunks = min(len(steps), chunks * 2)
    return best


def run_bench(bench: Bench, config: RunConfig) -> RunResult:
    """Run on an already built bench (tests build their own, e.g. on broken emulators)."""
    return _run_bench(bench, config, None)


def _explore(bench: Bench, config: RunConfig, progress: Progress | None) -> list[Deviation]:
    """The survey, then the state machine (its time is the run's `elapsed`); the deviations
    found, not yet minimized."""
    try:
        bench.survey()
    except Deviation as deviation:
        return [deviation]
    assert config.seed is not None
    machine = seed(config.seed)(build_machine(bench))
    bench.on_example = progress
    started = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=hypothesis_settings(config))
    except (Deviation, Flaky, BaseExceptionGroup) as error:
        # Flaky: a replay of the failing example went differently (a card that keeps
        # its state, or one that misbehaves by chance); the deviation seen stands.
        found = _deviations_in(error)
        if not found and bench.last_deviation is not None:
            found = [bench.last_deviation]
        if not found:
            raise
        return found
    finally:
        bench.stats.elapsed = time.perf_counter() - started
        bench.on_example = None
    return []


def _run_bench(bench: Bench, config: RunConfig, recorder: Recorder | None) -> RunResult:
    if config.seed is None:
        config = replace(config, seed=choose_seed())
    started = datetime.now(UTC)
    interrupt = Interrupt()
    instruments = Instruments(bench, interrupt)
    progress = Progress(config.max_examples, bench.stats) if config.progress else None
    finished = False
    try:
        with hypothesis_home(), interrupt:
            try:
                found = _explore(bench, config, progress)
                finished = not found
            finally:
                if progress is not None:
                    progress.close(finished)
            # Cutting failures down replays them: that is not part of the run's figures.
            instruments.stop_clocks()
            counted = copy.deepcopy(bench.stats)
            times = dict(instruments.times)
            deviations = [minimize(bench, deviation) for deviation in found]
            bench.stats = counted
        for link in bench.links:
            if link.guard is not None:
                link.guard.settle()
                bench.stats.refusals = link.guard.refusals
        for deviation in deviations:
            bench.stats.section(deviation.section).failures.append(deviation)
        evidence = {
            number: instruments.evidence[deviation]
            for number, deviation in enumerate(deviations)
            if deviation in instruments.evidence
        }
    finally:
        instruments.remove()
    return RunResult(
        config=config,
        stats=bench.stats,
        deviations=deviations,
        capabilities=bench.capabilities,
        quirks=bench.primary.facts.quirks,
        targets=[link.target.name for link in bench.links],
        recorded=recorder,
        started=started,
        section_times=times,
        evidence=evidence,
    )
