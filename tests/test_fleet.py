"""Fleet fuzzing: workers share hypothesis's example database in a real Redis
(docs/fleet.md); a failure one worker finds is replayed first by the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

HERE = Path(__file__).resolve().parent
PLANTED = f"python:{HERE / 'planted_cards.py'}:verify_after_challenge"
MYNACARD = [sys.executable, "-m", "mynacard"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own: a free port, its files in a temp folder, stopped after."""
    server = shutil.which("redis-server")
    if server is None:
        reason = "redis-server is not installed (./setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    port = _free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} did not answer")
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def _worker(*options: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [*MYNACARD, "conformance", "--target", PLANTED, "--profile", "default", *options]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_failure_found_by_one_worker_is_replayed_by_the_others(
    redis_url: str, tmp_path: Path
) -> None:
    quick = ("--seed", "3", "--max-examples", "3")
    alone = _worker(*quick, cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr  # 3 examples miss the fault

    finder = _worker("--seed", "1", "--max-examples", "1000", "--database", redis_url, cwd=tmp_path)
    assert finder.returncode == 1, finder.stdout + finder.stderr
    assert "got 6F00" in finder.stdout
    assert redis.Redis.from_url(redis_url).keys("mynacard-conformance:*")

    second = _worker(*quick, "--database", redis_url, cwd=tmp_path)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "got 6F00" in second.stdout

    plugin = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--card-target", PLANTED, "--card-profile", "default", "--card-seed", "3",
         "--card-max-examples", "3", "--card-database", redis_url],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert plugin.returncode == 1, plugin.stdout + plugin.stderr
    assert "got 6F00" in plugin.stdout


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MYNACARD, "conformance", "--database", f"redis://127.0.0.1:{_free_port()}/0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--database redis://" in done.stderr


@pytest.mark.slow
def test_a_hypofuzz_campaign_shares_its_failure_with_one_dashboard(
    redis_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("hypofuzz", reason="HypoFuzz comes with mynacard[fleet]")
    env = {**os.environ, "MYNACARD_DATABASE": redis_url, "MYNACARD_FUZZ_TARGET": PLANTED}
    fuzz = [str(Path(sys.executable).with_name("hypothesis")), "fuzz"]
    collect = ["--", "--pyargs", "mynacard.conformance.fuzz", "-p", "no:cacheprovider"]
    campaign = subprocess.run(
        [*fuzz, "-n", "1", "--no-dashboard", *collect],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert "Found a failing input for every test" in campaign.stdout + campaign.stderr
    assert "AttributeError" not in campaign.stdout + campaign.stderr  # hypothesis<6.157.1, tox.ini
    port = _free_port()
    dashboard = subprocess.Popen(
        [*fuzz, "--dashboard-only", "--port", str(port), *collect],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        failures: dict[str, object] = {}
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tests/") as answer:
                    tests = json.load(answer)
                failures = next(iter(tests.values()), {}).get("failures") or {}
                if failures:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        assert failures, "the dashboard shows no failure"
        assert "6F00" in json.dumps(failures) or "Deviation" in json.dumps(failures)
    finally:
        os.killpg(dashboard.pid, signal.SIGTERM)
        dashboard.wait(timeout=30)


SEEDS_TEST = """
import os
import pytest

@pytest.mark.parametrize("n", range(8))
def test_seed(card_run_config, worker_id, n):
    with open(os.path.join(os.environ["SEEDS"], worker_id), "w") as out:
        out.write(str(card_run_config.seed))
"""


def test_each_xdist_worker_runs_its_own_seed(tmp_path: Path) -> None:
    (tmp_path / "test_seeds.py").write_text(SEEDS_TEST)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-n", "2", "--card-target", "emulator", "--card-seed", "40", "--card-max-examples",
         "1", "--card-steps", "1", "test_seeds.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "SEEDS": str(seeds)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name: p.read_text() for p in seeds.iterdir()} == {"gw0": "40", "gw1": "41"}
