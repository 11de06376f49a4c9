"""Benchmarks of the conformance bench; each figure is printed beside its baseline.

1. In process: stateful steps per second of `mynacard conformance --target emulator
   --profile default`, beside a no-op hypothesis RuleBasedStateMachine (three rules that do
   nothing, one small argument each) run with the same settings in the same process: each
   round runs it just before and just after the bench and takes the mean of the two as its
   baseline (a shared host's speed drifts); the median per-round ratio is printed (target
   >= 50%).  A step is
   one rule of the state machine: one to five APDUs, each checked against the model.  The
   ratio is given by wall time and by CPU time of this process (the machine's part of the
   run, survey excluded, in both): on a machine shared with other work the latter is the
   steadier figure.
2. Time to detection of each deliberately broken emulator of
   tests/test_conformance_mutants.py with the default budget: the median over 5 seeds of
   the time from the start of the run (target opened, survey included) to the first
   deviation (target <= 10 s each), and of the whole run with the minimal transcript.
3. Through pcscd + vpcd + `mynacard serve` (the PIN guard on, as for any PC/SC target).

    .venv/bin/python bench/bench_conformance.py [--examples N] [--rounds N] [--seeds N]
                                                [--skip-mutants] [--skip-pcsc]

Part 3 needs pcscd with the vsmartcard vpcd driver (`sudo ./setup.sh test` installs them);
it starts pcscd when it is not running and stops it again afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import pcsc  # noqa: E402  (the tests' pcscd helpers)
from hypothesis import seed, strategies  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test  # noqa: E402
from test_conformance_mutants import MUTANTS, PROFILE  # noqa: E402  (the mutants themselves)

from mynacard.conformance import runner  # noqa: E402
from mynacard.conformance.bench import Bench  # noqa: E402
from mynacard.conformance.profile import read_profile  # noqa: E402
from mynacard.conformance.runner import (  # noqa: E402
    RunConfig,
    RunResult,
    hypothesis_home,
    hypothesis_settings,
    make_link,
    run,
    run_bench,
)
from mynacard.conformance.targets import EmulatorTarget  # noqa: E402


def figures(label: str, result: RunResult) -> str:
    stats = result.stats
    verdict = "conformant" if result.conformant else f"{len(result.deviations)} deviation(s)"
    return (
        f"{label}: {stats.rule_steps} steps ({stats.apdus} APDUs) in {stats.elapsed:.2f} s = "
        f"{stats.steps_per_second:,.0f} steps/s, {stats.apdus / stats.elapsed:,.0f} APDUs/s; "
        f"{verdict}"
    )


# -- 1. in process, beside a machine that does nothing -------------------------------------


class NoOp(RuleBasedStateMachine):
    """The cheapest stateful test hypothesis runs: rules that only count themselves."""

    steps = 0

    @rule(index=strategies.integers(0, 15))
    def first(self, index: int) -> None:
        NoOp.steps += 1

    @rule(index=strategies.integers(0, 15))
    def second(self, index: int) -> None:
        NoOp.steps += 1

    @rule(flag=strategies.booleans())
    def third(self, flag: bool) -> None:
        NoOp.steps += 1


def no_op(config: RunConfig) -> tuple[float, float]:
    """Steps per second (wall, CPU) of the no-op machine with the bench's settings."""
    NoOp.steps = 0
    started, cpu = time.perf_counter(), time.process_time()
    with hypothesis_home():
        run_state_machine_as_test(seed(config.seed)(NoOp), settings=hypothesis_settings(config))
    return (
        NoOp.steps / (time.perf_counter() - started),
        NoOp.steps / (time.process_time() - cpu),
    )


def machine_cpu_time(config: RunConfig) -> tuple[RunResult, float]:
    """`run(config)`, and the CPU time its state machine took (the part `elapsed` times)."""
    spent: list[float] = []
    machine_run = runner.run_state_machine_as_test

    def timed(*args: Any, **kwargs: Any) -> None:
        cpu = time.process_time()
        try:
            machine_run(*args, **kwargs)
        finally:
            spent.append(time.process_time() - cpu)

    runner.run_state_machine_as_test = timed  # type: ignore[assignment]
    try:
        result = run(config)
    finally:
        runner.run_state_machine_as_test = machine_run
    return result, sum(spent)


def in_process(examples: int, rounds: int) -> bool:
    config = RunConfig(target="emulator", profile="default", max_examples=examples, seed=1)
    ratios, cpu_ratios, bench_speeds, no_op_speeds = [], [], [], []
    result = None
    for number in range(1, rounds + 1):
        before = no_op(config)
        result, cpu = machine_cpu_time(config)
        after = no_op(config)
        baseline, baseline_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        bench_speeds.append(result.stats.steps_per_second)
        no_op_speeds.append(baseline)
        ratios.append(result.stats.steps_per_second / baseline)
        cpu_ratios.append(result.stats.rule_steps / cpu / baseline_cpu)
        print(
            f"  round {number}: bench {result.stats.steps_per_second:,.0f} steps/s, "
            f"no-op machine {baseline:,.0f} steps/s: {ratios[-1]:.0%}; by CPU time: bench "
            f"{result.stats.rule_steps / cpu:,.0f}, no-op {baseline_cpu:,.0f}: {cpu_ratios[-1]:.0%}"
        )
    assert result is not None
    ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu_ratios)
    print(figures("in process (last round)", result))
    print(
        f"in process, median of {rounds} rounds: bench {statistics.median(bench_speeds):,.0f} "
        f"steps/s, no-op machine {statistics.median(no_op_speeds):,.0f} steps/s; "
        f"ratio {ratio:.0%} by wall time, {cpu_ratio:.0%} by CPU time (target >= 50%)"
    )
    return result.conformant and max(ratio, cpu_ratio) >= 0.5


# -- 2. time to detection of the mutants ---------------------------------------------------


def detection(opener: Callable[[Path], Any], run_seed: int) -> tuple[float | None, float]:
    """Seconds from the start to the first deviation (None: not caught), and to the end."""
    started = time.perf_counter()
    target = EmulatorTarget(PROFILE, opener=opener)
    try:
        bench = Bench(make_link(target, read_profile(PROFILE), {}, 0))
        first: list[float] = []
        fail = bench.fail

        def noted(*args: Any, **kwargs: Any) -> Any:
            if not first:
                first.append(time.perf_counter() - started)
            return fail(*args, **kwargs)

        bench.fail = noted  # type: ignore[method-assign]
        result = run_bench(bench, RunConfig(seed=run_seed))  # the CLI's default budget
    finally:
        target.close()
    caught = first[0] if first and result.deviations else None
    return caught, time.perf_counter() - started


def mutants(seeds: int) -> bool:
    ok = True
    print(f"time to detection, median over seeds 1-{seeds}, default budget (target <= 10 s):")
    for name in sorted(MUTANTS):
        times = [detection(MUTANTS[name], run_seed) for run_seed in range(1, seeds + 1)]
        caught = [found for found, _ in times if found is not None]
        whole = statistics.median(total for _, total in times)
        if len(caught) < seeds:
            ok = False
        if not caught:
            print(f"  {name}: not caught with any seed ({whole:.1f} s a run)")
            continue
        median = statistics.median(found if found is not None else whole for found, _ in times)
        ok = ok and median <= 10
        print(
            f"  {name}: {median:.2f} s to detection (range {min(caught):.2f}-{max(caught):.2f}), "
            f"{whole:.2f} s with the minimal transcript; caught with {len(caught)}/{seeds} seeds"
        )
    return ok


# -- 3. through pcscd ----------------------------------------------------------------------


def through_pcscd(examples: int) -> RunResult:
    started = None if pcsc.vpcd_listening() else pcsc.start_pcscd()
    try:
        with (
            tempfile.TemporaryDirectory() as state,
            pcsc.serve_card("default", Path(state), 0) as reader,
        ):
            config = RunConfig(
                target=f"pcsc:{reader}",
                profile="default",
                pin_budget=1,
                max_examples=examples,
                seed=1,
            )
            return run(config)
    finally:
        if started is not None:
            pcsc.stop_pcscd(started)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--examples", type=int, default=600, help="examples per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bench and no-op")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per mutant")
    parser.add_argument("--skip-mutants", action="store_true")
    parser.add_argument("--skip-pcsc", action="store_true")
    args = parser.parse_args()
    ok = in_process(args.examples, args.rounds)
    if not args.skip_mutants:
        ok = mutants(args.seeds) and ok
    if not args.skip_pcsc:
        remote = through_pcscd(max(args.examples // 4, 60))
        print(figures("through pcscd", remote))
        ok = ok and remote.conformant
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
