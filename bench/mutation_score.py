"""The bench's mutation score: cosmic-ray mutates the card's code, and the conformance bench
alone (not the emulator's unit tests) is the test that must kill each mutant.

    .venv/bin/python bench/mutation_score.py [--sample N] [--workers K] [--mode profile|learning]

Each worker is a git worktree of HEAD with its own venv (cosmic-ray mutates files in place),
running `cosmic-ray exec` on its share of the jobs. `--sample N` runs a random sample of N
mutants (fixed `--seed`), for a score with a known margin in minutes instead of hours. The
surviving mutants are printed with their diffs, for triage in docs/mutation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# The card's code: session and security state, dispatch, every command group, the objects
# (access rules, PINs, signing). Personalisation and transport are not the bench's to judge.
MODULES = ["emulator/card.py", "emulator/session.py", "emulator/commands", "emulator/files.py"]

# The default run with a profile, on `default` and on each shipped profile with free-area
# applications (the default profile has none: its commands would be out of the bench's
# reach); a mutant is killed when any run is not conformant (cosmic-ray runs the command
# without a shell, hence `sh -c`).
PROFILES = ("default", "taxi-tickets", "library-card", "building-entry")
BENCH = {
    "profile": 'sh -c "'
    + " && ".join(
        f".venv/bin/python -m mynacard conformance --target emulator --profile {p}"
        for p in PROFILES
    )
    + '"',
    "learning": ".venv/bin/python -m mynacard conformance --target emulator --pin auth=1234 "
    "--pin sign=ABC123 --pin text=1234 --pin juki=1234 --pin common=1234",
}


def config(mode: str, timeout: float) -> str:
    modules = ", ".join(f'"{m}"' for m in MODULES)
    return (
        "[cosmic-ray]\n"
        f"module-path = [{modules}]\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = '{BENCH[mode]}'\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )


def run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def worker_tree(root: Path, n: int) -> Path:
    """A worktree of HEAD with the package installed from it (editable)."""
    tree = root / f"worker{n}"
    run(["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], REPO_ROOT)
    run([sys.executable, "-m", "venv", ".venv"], tree)
    run([".venv/bin/pip", "install", "-q", "-e", ".", "cosmic-ray>=8.3"], tree)
    return tree


def mutations(session: Path) -> dict[tuple[str, str, int], str]:
    """Job ids by mutation (module, operator, occurrence): the same in every worker's session."""
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT job_id, module_path, operator_name, occurrence FROM mutation_specs"
        )
        return {(module, operator, occurrence): job for job, module, operator, occurrence in rows}


def keep_only(session: Path, keep: set[tuple[str, str, int]]) -> None:
    with sqlite3.connect(session) as db:
        for mutation, job in mutations(session).items():
            if mutation not in keep:
                db.execute("DELETE FROM mutation_specs WHERE job_id = ?", (job,))
                db.execute("DELETE FROM work_items WHERE job_id = ?", (job,))


def results(session: Path) -> list[dict[str, object]]:
    dump = subprocess.run(
        [str(session.parent / ".venv/bin/cosmic-ray"), "dump", str(session)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is not None:
            (mutation,) = item["mutations"]
            rows.append({"job_id": item["job_id"], **mutation, **result})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(BENCH), default="profile")
    parser.add_argument("--sample", type=int, default=0, help="random sample of N mutants")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="per mutant, seconds")
    parser.add_argument("--json", metavar="FILE", help="write every result here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mynacard-mutation-"))
    trees: list[Path] = []
    try:
        trees = [worker_tree(root, n) for n in range(args.workers)]
        for tree in trees:
            (tree / "cr.toml").write_text(config(args.mode, args.timeout))
            run([".venv/bin/cosmic-ray", "init", "cr.toml", "session.sqlite"], tree)
        jobs = sorted(mutations(trees[0] / "session.sqlite"))
        total = len(jobs)
        if args.sample:
            jobs = sorted(random.Random(args.seed).sample(jobs, min(args.sample, total)))
        for n, tree in enumerate(trees):
            keep_only(tree / "session.sqlite", set(jobs[n :: args.workers]))
        with ThreadPoolExecutor(len(trees)) as pool:
            list(
                pool.map(
                    lambda t: run([".venv/bin/cosmic-ray", "exec", "cr.toml", "session.sqlite"], t),
                    trees,
                )
            )
        rows = [row for tree in trees for row in results(tree / "session.sqlite")]
    finally:
        for tree in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT)
        shutil.rmtree(root, ignore_errors=True)

    killed = [r for r in rows if r.get("test_outcome") == "killed"]
    survived = [r for r in rows if r.get("test_outcome") == "survived"]
    broken = [r for r in rows if r.get("test_outcome") not in ("killed", "survived")]
    score = len(killed) / max(1, len(killed) + len(survived))
    margin = 1.96 * math.sqrt(score * (1 - score) / max(1, len(killed) + len(survived)))
    print(f"mode {args.mode}: {len(rows)} of {total} mutants run (seed {args.seed})")
    print(f"killed {len(killed)}, survived {len(survived)}, incompetent/timeouts {len(broken)}")
    print(f"score {score:.1%} ± {margin:.1%} (95%, before triage of equivalent mutants)")
    for r in survived:
        where = f"{r['module_path']}:{r['start_pos'][0]} ({r['definition_name']})"  # type: ignore[index]
        print(f"\n--- survived: {where} {r['operator_name']}")
        print(r.get("diff", ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
