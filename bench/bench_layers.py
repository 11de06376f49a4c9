"""Benchmark: what layers cost the card in process (issue 11, item 9).

The card alone (`open_card`, the stack `serve` builds without --fault, --trace or -v) is the
baseline; each variant's round is measured between two of the bare card's, in the same run,
and the median of the per-round ratios of APDUs per second is printed:

- `serve without options`: what `serve` stacks with no fault plan: nothing, the bare card
  itself, so its ratio's distance from 1 is the noise of the run;
- `pass-through layer`: one `Layer` that changes nothing (a layer compiled in but off);
- `idle fault`: a fault plan that never hits (a delay for an INS never sent);
- `served card, no plan`: the stack a `ServedCard` (`serve`) drives without a fault plan,
  trace or -v: its lock and counters (and room for `ctl fault` to stack a plan);
- `trace json` / `trace scriptor`: `--trace FILE` in each format (a file in /dev/shm);
- `trace floor`: the cheapest capture CPython allows, formatting nothing: a closure set as
  the layer's `transmit`, its names bound at construction, that reads the clock twice and
  extends one list by the exchange's bytes and readings (what `Trace` does on the card's side,
  without the formatting its thread does later). No trace written in Python costs less.

Targets: an idle layer costs at most 3% of the baseline rate, tracing at most 25%. Each row
also prints the spread of its per-round ratios (their quartiles, as costs), and what it adds
to an APDU in its best round over the bare card's best (least disturbed by other work; the
difference of two minima, so a few ns of noise). A trace's round ends when its lines are
written, so it pays for formatting them. Rates are per second of wall time; `--cpu-time`
counts this process's CPU time instead (all its threads, so a trace's writing thread counts),
which other processes on a shared machine disturb less.

Then, as a served card is traced: `mynacard serve --trace` against `mynacard serve`, both
through pcscd + vpcd (readers 0 and 1, the servers pinned to CPU 0, this process to CPU 1),
READ BINARY round trips in alternating rounds; it needs pcscd with vpcd (starts one if none
runs), `--skip-pcsc` leaves it out.

    .venv/bin/python bench/bench_layers.py [--rounds N] [--cpu-time] [--skip-pcsc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench_card import READ_32, SELECT_TOKEN, _pinned, _round_trip_ns, pcsc

from mynacard import open_card
from mynacard.faults import Fault, stack_faults
from mynacard.layers import CardInterface, Layer
from mynacard.served import CardSpec, ServedCard
from mynacard.trace import Trace, TraceFormat

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
PAIRS = 20_000

Variant = Callable[[CardInterface, ExitStack], CardInterface]


def _trace(fmt: TraceFormat) -> Variant:
    def stack(card: CardInterface, resources: ExitStack) -> CardInterface:
        scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        out = resources.enter_context(tempfile.TemporaryFile("w+", dir=scratch))  # noqa: SIM115
        return Trace(card, out, reader="bench", fmt=fmt)

    return stack


def _served(card: CardInterface, resources: ExitStack) -> CardInterface:
    """A ServedCard's stack, not served (its own card, like `card`, selected the same way)."""
    state = Path(resources.enter_context(tempfile.TemporaryDirectory()))
    served = ServedCard(CardSpec(profile="default", state=state))
    resources.callback(served.close)
    served.stack.power_on()
    assert served.stack.transmit(SELECT_JPKI) == b"\x90\x00"
    return served.stack


class _CaptureOnly(Layer):
    """Keeps each exchange's bytes and clock readings, formats nothing: a trace's floor."""

    def __init__(self, inner: CardInterface) -> None:
        super().__init__(inner)
        self.kept: list[bytes | int] = []
        clock, inner_transmit, keep = time.perf_counter_ns, inner.transmit, self.kept.extend

        def transmit(capdu: bytes) -> bytes:
            start = clock()
            response = inner_transmit(capdu)
            keep((capdu, response, start, clock()))
            return response

        self.transmit = transmit  # type: ignore[method-assign]


VARIANTS: dict[str, Variant] = {
    "serve without options": lambda card, _: stack_faults(card, [], 0, lambda event: None),
    "pass-through layer": lambda card, _: Layer(card),
    "idle fault": lambda card, _: stack_faults(
        card, [Fault("delay", ins=frozenset({0x2A}), ms=1)], 0, lambda event: None
    ),
    "served card, no plan": _served,
    "trace json": _trace("json"),
    "trace scriptor": _trace("scriptor"),
    "trace floor": lambda card, _: _CaptureOnly(card),
}


def rate(card: CardInterface, clock: Callable[[], float] = time.perf_counter) -> float:
    """Small APDUs per second of `clock`: SELECT EF + READ BINARY of 32 bytes, PAIRS times;
    a trace's round ends when what it keeps is written (else the lines still waiting would
    be formatted in the bare card's next round and charged to it)."""
    transmit = card.transmit
    drain = card.flush if isinstance(card, Trace) else None
    start = clock()
    for _ in range(PAIRS):
        transmit(SELECT_TOKEN)
        transmit(READ_32)
    if drain is not None:
        drain()
    return 2 * PAIRS / (clock() - start)


def measure(
    rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, tuple[float, list[float], float, float]]:
    """For each variant: its median rate, its per-round ratios to the bare card, and the
    bare card's best round and the variant's, as ns per APDU."""
    results = {}
    with tempfile.TemporaryDirectory() as state, ExitStack() as resources:
        card = resources.enter_context(open_card("default", state))
        card.power_on()
        assert card.transmit(SELECT_JPKI) == b"\x90\x00"
        assert len(card.transmit(SELECT_TOKEN) + card.transmit(READ_32)) == 36
        for name, variant in VARIANTS.items():
            stacked = variant(card, resources)
            rates, ratios, bare = [], [], []
            for _ in range(rounds):  # the bare card before and after each variant's round
                bare.append(rate(card, clock))
                rates.append(rate(stacked, clock))
                bare.append(rate(card, clock))
                ratios.append(2 * rates[-1] / (bare[-2] + bare[-1]))
                if isinstance(stacked, _CaptureOnly):  # a trace's thread would drop them
                    stacked.kept.clear()
            best = (1e9 / max(bare), 1e9 / max(rates))
            results[name] = (statistics.median(rates), ratios, *best)
    return results


def traced_through_pcscd(rounds: int) -> tuple[float, float, float]:
    """Round trips (µs) of READ BINARY 32 bytes to a traced and an untraced served card:
    their medians over alternating rounds of 250, and the median of the per-round ratios."""
    started = None if pcsc.vpcd_listening() else pcsc.start_pcscd()
    os.sched_setaffinity(0, {1})
    servers: list[subprocess.Popen[bytes]] = []
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    try:
        with tempfile.TemporaryDirectory(dir=scratch) as work:
            serve = [sys.executable, "-m", "mynacard", "serve"]
            for reader, extra in (("0", ["--trace", f"{work}/trace.jsonl"]), ("1", [])):
                command = [*serve, "--state", f"{work}/{reader}", "--reader", reader, *extra]
                servers.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, preexec_fn=_pinned(0))
                )
            for reader in (pcsc.reader_name(0), pcsc.reader_name(1)):
                if not pcsc.wait_for_card(reader, present=True, timeout=10):
                    raise RuntimeError(f"no card appeared in {reader}")
            traced: list[float] = []
            plain: list[float] = []
            apdus = [SELECT_JPKI, SELECT_TOKEN, READ_32]
            for _ in range(rounds * 4):
                traced.append(statistics.median(_round_trip_ns(pcsc.reader_name(0), apdus, 250)))
                plain.append(statistics.median(_round_trip_ns(pcsc.reader_name(1), apdus, 250)))
            ratios = [t / p for t, p in zip(traced, plain, strict=True)]
            return (
                statistics.median(traced) / 1000,
                statistics.median(plain) / 1000,
                statistics.median(ratios),
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        if started is not None:
            pcsc.stop_pcscd(started)


def main() -> int:
    parser = argparse.ArgumentParser(description="what layers cost the card in process")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu-time", action="store_true", help="rates per CPU second")
    parser.add_argument("--skip-pcsc", action="store_true", help="skip the served-card part")
    args = parser.parse_args()
    targets = {"trace json": 0.25, "trace scriptor": 0.25, "trace floor": 0.25}
    meaning = {
        "trace floor": " (capture only: two clock readings and the exchange's bytes kept by a "
        "closure, nothing formatted; no Python trace costs less)"
    }
    clock = time.process_time if args.cpu_time else time.perf_counter
    for name, (median, ratios, bare_ns, best_ns) in measure(args.rounds, clock).items():
        target, ratio = targets.get(name, 0.03), statistics.median(ratios)
        low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"{name}{meaning.get(name, '')}: {median:,.0f} APDUs/s, {ratio:.3f} of the bare "
            f"card's rate (cost {1 - ratio:.1%}, quartiles {1 - high:.1%} to {1 - low:.1%}; "
            f"target <= {target:.0%}; median of {args.rounds} rounds; best rounds "
            f"{best_ns - bare_ns:+.0f} ns per APDU over the bare card's {bare_ns:.0f} ns)"
        )
    if not args.skip_pcsc:
        traced_us, plain_us, ratio = traced_through_pcscd(args.rounds)
        print(
            f"served through pcscd: traced {traced_us:.1f} µs, untraced {plain_us:.1f} µs per "
            f"READ BINARY, median ratio of {4 * args.rounds} alternating rounds {ratio:.3f}x "
            "(target <= 1.25x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
