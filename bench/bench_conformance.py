"""Benchmark of the conformance bench: stateful steps per second, in process and via pcscd.

1. In process: `mynacard conformance --target emulator --profile default`, target >= 1,000
   steps/s (a step is one rule of the state machine: one to five APDUs).
2. Through pcscd + vpcd + `mynacard serve` (the PIN guard on, as for any PC/SC target).

    .venv/bin/python bench/bench_conformance.py [--examples N] [--skip-pcsc]

Part 2 needs pcscd with the vsmartcard vpcd driver (`sudo ./setup.sh test` installs them);
it starts pcscd when it is not running and stops it again afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import pcsc  # noqa: E402  (the tests' pcscd helpers)

from mynacard.conformance.runner import RunConfig, RunResult, run  # noqa: E402


def figures(label: str, result: RunResult) -> str:
    stats = result.stats
    verdict = "conformant" if result.conformant else f"{len(result.deviations)} deviation(s)"
    return (
        f"{label}: {stats.rule_steps} steps ({stats.apdus} APDUs) in {stats.elapsed:.2f} s = "
        f"{stats.steps_per_second:,.0f} steps/s, {stats.apdus / stats.elapsed:,.0f} APDUs/s; "
        f"{verdict}"
    )


def in_process(examples: int) -> RunResult:
    return run(RunConfig(target="emulator", profile="default", max_examples=examples, seed=1))


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=600, help="examples per run")
    parser.add_argument("--skip-pcsc", action="store_true")
    args = parser.parse_args()
    local = in_process(args.examples)
    print(figures("in process", local))
    ok = local.conformant and local.stats.steps_per_second >= 1000
    if not args.skip_pcsc:
        remote = through_pcscd(max(args.examples // 4, 60))
        print(figures("through pcscd", remote))
        ok = ok and remote.conformant
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
