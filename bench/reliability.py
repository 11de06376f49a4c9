"""Reliability figures: runs the campaigns of tests/test_campaigns.py at a chosen scale and
writes what they measured to RELIABILITY.md (never a hand-typed number).

    .venv/bin/python bench/reliability.py --write RELIABILITY.md [--scale N] [--skip-pcsc]

Scale 1 runs in about a minute; --scale 10 in about ten. The PC/SC part needs pcscd with the
vsmartcard vpcd driver (`sudo ./setup.sh test` installs them); it starts pcscd when none is
running (and then also restarts it, which it never does to someone else's pcscd). Atheris
runs only when it is installed (`pip install atheris`, or `tox -e atheris`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import campaigns  # noqa: E402  (the tests' campaigns)
import pcsc  # noqa: E402
import test_state_files  # noqa: E402
from card_process import Zygote  # noqa: E402

from mynacard import StateError, __version__, load_profile, open_card  # noqa: E402
from mynacard.store import read_pin_status  # noqa: E402

Row = tuple[str, str, str, str]  # campaign, what was done, measured, losses


def attack_rows(zygote: Zygote, work: Path, scale: int) -> list[Row]:
    rows = []
    for where, directory in (("tmpfs", work / "shm"), ("disk", work / "disk")):
        for card in ("default", "default!compare-first"):
            state = directory / card.replace("!", "-")
            wrong, right = campaigns.verify_latencies(zygote, state, 10, card)
            deadlines = campaigns.deadlines(wrong, right, min(9 + scale, 20))
            guesses = campaigns.timed_kill_attack(zygote, state, deadlines, 3 + scale, card)
            table = campaigns.telling(guesses)
            best = max(table, key=lambda t: table[t][0] * table[t][1])  # the attacker's T
            free, answered = table[best]
            answered_free = sum(g.answer is not None and g.free for g in guesses)
            untried = sum(g.answer is None and g.remaining == 3 for g in guesses)
            label = "the card" if card == "default" else "issue 10's bug put back (compare first)"
            rows.append((
                f"timed-kill attack, {label}, state on {where}",
                f"{len(guesses)} guesses of the auth PIN, kill -9 if no answer within T, "
                f"{len(deadlines)} T from 0 to {deadlines[-1]:,.0f} µs (median answer: wrong "
                f"{median(wrong):,.0f} µs, right {median(right):,.0f} µs)",
                f"{untried} guesses killed with the counter intact; at the attacker's best T, "
                f"{best:,.0f} µs, {free:.0%} of wrong guesses cost nothing while {answered:.0%} "
                "of right ones were answered (the attack needs both near 100 %)",
                f"{answered_free} answered guesses cost no try",
            ))  # fmt: skip
    return rows


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def kill_rows(zygote: Zygote, work: Path, scale: int) -> list[Row]:
    report = campaigns.kill_campaign(zygote, work / "kills", 200 * scale, seed=scale)
    return [(
        "kill -9 during mixed traffic (national PINs, taxi tickets: key checks, counter, records)",
        f"{report.kills:,} kills ({report.killed_in_open} while the card opened its state), "
        f"{report.apdus:,} APDUs, {report.acknowledged_checks:,} acknowledged PIN/key checks, "
        f"{report.office_resets} office resets of blocked PINs",
        f"{report.kills:,} restarts checked against the acknowledged answers",
        f"{len(report.losses)} lost or raised counters or data",
    )]  # fmt: skip


def wal_row(zygote: Zygote, work: Path, scale: int) -> Row:
    """Block the auth PIN in a card process, kill -9 it, delete the -wal and -shm files: the
    card must come back blocked."""
    times, blocked = 20 * scale, 0
    for number in range(times):
        state = work / "wal" / str(number)
        card = zygote.card("default", state)
        for apdu in (campaigns.SELECT_JPKI, campaigns.SELECT_AUTH_PIN):
            card.transmit(apdu)
        for _ in range(3):
            card.transmit(campaigns.verify(campaigns.WRONG_AUTH))
        card.kill()
        for suffix in ("-wal", "-shm"):
            (state / f"card.sqlite{suffix}").unlink()
        blocked += {p.name: p.remaining for p in read_pin_status(state)}["auth"] == 0
    return (
        "-wal and -shm deleted after kill -9 (auth PIN blocked just before)",
        f"{times} kills",
        f"{blocked} of {times} cards came back with the PIN blocked",
        f"{times - blocked} counters reset",
    )


def damage_rows(work: Path) -> list[Row]:
    refused, fresh = 0, 0
    for name, (damage, says, profile) in test_state_files.DAMAGES.items():
        state = work / "damage" / re.sub(r"\W+", "-", name)
        test_state_files.blocked_auth(state, profile)
        damage(state)
        try:
            open_card(profile, state).close()
            fresh += 1
        except StateError as error:
            refused += says in str(error)
    total = len(test_state_files.DAMAGES)
    return [(
        "damaged state directory (truncated, deleted, garbage pages, rows missing or out of "
        "range, wrong types, another card's database, a damaged marker, …)",
        f"{total} kinds of damage to a card with a blocked PIN",
        f"{refused} of {total} refused with the error naming the file and the fix",
        f"{fresh} fresh cards made",
    )]  # fmt: skip


def input_rows(work: Path, scale: int) -> list[Row]:
    count = 100_000 * scale
    checked = campaigns.random_inputs_campaign(load_profile("taxi-tickets"), work / "in", count, 1)
    rows = [(
        "structured-random APDUs, invariants checked after each",
        f"{checked:,} inputs (a power cycle every 50)",
        "invariants: well-formed answer, never 6F00; counters only by VERIFY / EXTERNAL "
        "AUTHENTICATE, decrement first; PIN values only by CHANGE; no protected content "
        "before a check; no private-key bytes or PIN values",
        "0 violations",
    )]  # fmt: skip
    if shutil.which(sys.executable) and _has_atheris():
        runs = 10_000 * scale
        corpus = work / "corpus"
        corpus.mkdir()
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "tests" / "fuzz_transmit.py"),
             f"-atheris_runs={runs}", str(corpus)],
            capture_output=True, text=True, check=False, cwd=work,
        )  # fmt: skip
        done = re.search(r"Done (\d+) in (\d+) second", result.stderr)
        cover = re.findall(r"cov: (\d+)", result.stderr)
        if result.returncode != 0 or done is None:
            raise SystemExit(f"atheris found a violation:\n{result.stderr[-3000:]}")
        rows.append((
            "atheris (coverage-guided) over transmit(), same invariants",
            f"{int(done[1]):,} inputs in {done[2]} s",
            f"coverage {cover[-1] if cover else '?'} edges of mynacard",
            "0 violations",
        ))  # fmt: skip
    return rows


def _has_atheris() -> bool:
    import importlib.util

    return importlib.util.find_spec("atheris") is not None


def memory_rows(work: Path, scale: int) -> list[Row]:
    report = campaigns.memory_campaign(work / "memory", 100_000 * scale, 100 * scale)
    return [(
        "memory (tracemalloc, second half minus first half)",
        f"{report.apdus:,} APDUs on one card; {report.cycles:,} open/close cycles",
        f"{report.apdu_growth:+,} bytes over the APDUs, {report.cycle_growth:+,} bytes over "
        f"the cycles; peak RSS {report.rss_kib / 1024:.0f} MiB",
        "flat" if max(report.apdu_growth, report.cycle_growth) < 256 * 1024 else "GROWS",
    )]  # fmt: skip


def pcsc_rows(work: Path, scale: int) -> list[Row]:
    started = None if pcsc.vpcd_listening() else pcsc.start_pcscd()
    try:
        state = work / "pcsc"
        seconds = min(6 * scale, 60)
        with pcsc.serve_card("default", state) as reader:
            report = campaigns.concurrent_clients(reader, 8, seconds)
            times = campaigns.pcscd_restarts(reader, started, 10 * scale, 2.0) if started else []
            if started:
                started = pcsc.owned_pcscd_pid()
        auth = {p.name: p.remaining for p in read_pin_status(state)}["auth"]
        rows = [(
            "concurrent PC/SC clients through pcscd, each in SCardBeginTransaction",
            f"{report.clients} clients for {seconds} s: {report.transactions:,} transactions, "
            f"{report.apdus:,} APDUs (a wrong and a right VERIFY in each)",
            f"auth counter at the end {auth}/3",
            f"{len(report.inconsistent)} answers that another client's APDU changed",
        )]  # fmt: skip
        if times:
            usable = [t for t in times if t is not None]
            rows.append((
                "pcscd restarted under a served card",
                f"{len(times)} restarts",
                f"card usable (SELECT 9000) after at most {max(usable, default=0):.2f} s, "
                f"median {median(usable) if usable else 0:.2f} s",
                f"{len(times) - len(usable)} restarts without the card within 2 s",
            ))  # fmt: skip
        return rows
    finally:
        if started is not None:
            pcsc.stop_pcscd(started)


def run(scale: int, skip_pcsc: bool) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mynacard-reliability-") as disk:
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(disk)
        with tempfile.TemporaryDirectory(dir=shm, prefix="mynacard-reliability-") as memory:
            work = Path(memory)
            (work / "disk").symlink_to(disk)
            steps: list[tuple[str, Callable[[], list[Row]]]] = []
            with Zygote(work, ["default", "taxi-tickets"]) as zygote:
                steps += [
                    ("timed-kill attack", lambda: attack_rows(zygote, work, scale)),
                    ("kill -9 campaign", lambda: kill_rows(zygote, work, scale)),
                ]
                steps += [
                    ("lost WAL", lambda: [wal_row(zygote, work, scale)]),
                    ("damaged states", lambda: damage_rows(work)),
                    ("random inputs", lambda: input_rows(work, scale)),
                    ("memory", lambda: memory_rows(work, scale)),
                ]
                if not skip_pcsc:
                    steps.append(("PC/SC", lambda: pcsc_rows(work, scale)))
                for name, step in steps:
                    start = time.monotonic()
                    found = step()
                    print(f"{name}: {time.monotonic() - start:.0f} s", file=sys.stderr)
                    for row in found:
                        print(" | ".join(row))
                    rows += found
    return rows


def markdown(rows: list[Row], scale: int, command: str) -> str:
    lines = [
        "# Reliability figures",
        "",
        "Measured by the campaigns of `tests/test_campaigns.py` (bounded there; `-m slow` runs "
        "them long) at scale "
        f"{scale}, written by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"mynacard {__version__}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}, {os.cpu_count()} CPUs, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. What each campaign checks "
        "is in [docs/state.md](docs/state.md#reliability).",
        "",
        "| campaign | faults injected / inputs tried | measured | losses |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="write the table to FILE (Markdown)")
    parser.add_argument("--scale", type=int, default=1, help="campaign sizes times N")
    parser.add_argument("--skip-pcsc", action="store_true", help="no pcscd part")
    args = parser.parse_args()
    rows = run(args.scale, args.skip_pcsc)
    if args.write:
        command = ".venv/bin/python bench/reliability.py --write RELIABILITY.md"
        command += f" --scale {args.scale}" if args.scale != 1 else ""
        command += " --skip-pcsc" if args.skip_pcsc else ""
        Path(args.write).write_text(markdown(rows, args.scale, command), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
