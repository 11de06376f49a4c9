"""Run the bench: open the target(s), survey the card, run the state machine, collect results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test

from .bench import Bench, Deviation, Link, Stats
from .guard import GuardRefusal, PinGuard
from .machine import INVARIANT_SECTIONS, build_machine
from .model import CardFacts
from .profile import ProfileFacts, Quirks, read_profile
from .targets import ChainedResponses, RecordingTarget, Target, open_target
from .transcript import Action, Exchange, Recorder

DEFAULT_MAX_EXAMPLES = 200
DEFAULT_STEPS = 40


@dataclass
class RunConfig:
    """What `mynacard conformance` was asked to do."""

    target: str = "emulator"
    profile: str | None = None
    pins: dict[str, str] = field(default_factory=dict)
    max_examples: int = DEFAULT_MAX_EXAMPLES
    steps: int = DEFAULT_STEPS
    seed: int | None = None
    pin_budget: int = 0
    differential: str | None = None
    record: Path | None = None
    progress: bool = False


@dataclass
class RunResult:
    config: RunConfig
    stats: Stats
    deviations: list[Deviation]
    capabilities: dict[str, str]
    quirks: Quirks
    targets: list[str]
    recorded: Recorder | None = None

    @property
    def conformant(self) -> bool:
        return not self.deviations


TargetOpener = Callable[[str, str | None], Target]


def make_facts(profile: ProfileFacts | None, pins: dict[str, str]) -> CardFacts:
    if profile is not None:
        return CardFacts.from_profile(profile, pins)
    return CardFacts.learning(pins)


def make_link(
    target: Target, profile: ProfileFacts | None, pins: dict[str, str], budget: int
) -> Link:
    """A target with its own facts, its answers reassembled from 61xx pieces, and behind the
    PIN guard unless it is disposable."""
    target = ChainedResponses(target)
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
        database=None,
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


class ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = min(width, width * done // max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{self.total} examples")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


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


def _run_bench(bench: Bench, config: RunConfig, recorder: Recorder | None) -> RunResult:
    deviations: list[Deviation] = []
    try:
        bench.survey()
    except Deviation as deviation:
        deviations.append(minimize(bench, deviation))
    if not deviations:
        machine = build_machine(bench)
        if config.seed is not None:
            machine = seed(config.seed)(machine)
        progress = ProgressBar(config.max_examples) if config.progress else None
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
            deviations += [minimize(bench, deviation) for deviation in found]
        finally:
            bench.stats.elapsed = time.perf_counter() - started
            if progress is not None:
                progress.close()
        for link in bench.links:
            if link.guard is not None:
                link.guard.settle()
                bench.stats.refusals = link.guard.refusals
    for deviation_found in deviations:
        bench.stats.section(deviation_found.section).failures.append(deviation_found)
    return RunResult(
        config=config,
        stats=bench.stats,
        deviations=deviations,
        capabilities=bench.capabilities,
        quirks=bench.primary.facts.quirks,
        targets=[link.target.name for link in bench.links],
        recorded=recorder,
    )
