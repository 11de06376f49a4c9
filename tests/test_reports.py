"""Your own target (`--target python:MODULE:FACTORY`) and reports people can act on: the
seed, run metadata, a replay command per failure, the first differing byte, per-section
time, sections not run, exit codes, Ctrl-C, progress, and no `.hypothesis/` left behind.

Everything runs through the `mynacard` command, as a user runs it.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mynacard.cli import main as mynacard
from mynacard.conformance import runner
from mynacard.conformance.bench import Stats
from mynacard.conformance.runner import Progress, RunConfig, run
from mynacard.conformance.transcript import Pattern
from mynacard.store import read_pin_status

REPO = Path(__file__).resolve().parents[1]
BENCH_DOC = REPO / "docs" / "bench.md"
MYNACARD = [sys.executable, "-m", "mynacard"]


def documented_factory() -> str:
    """The example factory of docs/bench.md ("Your own target"), as the user copies it."""
    text = BENCH_DOC.read_text(encoding="utf-8")
    section = text[text.index("## Your own target") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def my_card(tmp_path: Path) -> Path:
    """my_card.py of the docs, in a folder of its own."""
    path = tmp_path / "my_card.py"
    path.write_text(documented_factory(), encoding="utf-8")
    return path


# Your own variants of the card: the emulator behind a small wrapper of the user's.
VARIANTS = '''
import os
import tempfile

import mynacard

VISUAL_AP = bytes.fromhex("D3921000310001010402")


class Card:
    disposable = True

    def __init__(self, state):
        self.state, self.runs, self.card = state, 0, None
        self.restart()

    def restart(self):
        if self.card is not None:
            self.card.close()
        self.runs += 1
        os.makedirs(self.state, exist_ok=True)
        self.card = mynacard.open_card("default", tempfile.mkdtemp(dir=self.state))
        self.card.power_on()

    def transmit(self, command):
        return self.card.transmit(command)

    def reset(self):
        return self.card.reset()

    def power_cycle(self):
        self.card.power_off()
        return self.card.power_on()


class OneTryLess(Card):
    """Answers every retry query with one try less than the card has: 63C3 as 63C2, on
    every seed (the survey reads every counter first)."""

    def transmit(self, command):
        answer = self.card.transmit(command)
        if command[1] == 0x20 and len(command) == 4 and answer == b"\\x63\\xc3":
            return b"\\x63\\xc2"
        return answer


class WithoutVisualAp(Card):
    def transmit(self, command):
        name = command[5 : 5 + command[4]] if len(command) > 5 else b""
        if command[1:3] == b"\\xa4\\x04" and name.startswith(VISUAL_AP):
            return b"\\x6a\\x82"
        return self.card.transmit(command)


class Breaks(Card):
    def transmit(self, command):
        if command[1] == 0x84:
            raise ConnectionError("simulator went away")
        return self.card.transmit(command)


class Kept(Card):
    """A card that keeps its state (as a real one does): one state directory."""

    disposable = False

    def restart(self):
        self.card = mynacard.open_card("default", self.state)
        self.card.power_on()

    def close(self):
        self.card.close()


def one_try_less():
    return OneTryLess(STATE)


def without_visual_ap():
    return WithoutVisualAp(STATE)


def breaks():
    return Breaks(STATE)


def kept():
    return Kept(STATE)
'''


@pytest.fixture
def variants(tmp_path: Path) -> Path:
    path = tmp_path / "variants.py"
    state = tmp_path / "states"
    path.write_text(f"STATE = {str(state)!r}\n{VARIANTS}", encoding="utf-8")
    return path


def conformance(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = mynacard(["conformance", "--max-examples", "20", *argv])
    out, err = capsys.readouterr()
    return status, out, err


# -- item 7: your own target --------------------------------------------------------------


def test_documented_factory_runs_the_bench(
    my_card: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = conformance(
        capsys, "--target", f"python:{my_card}:my_card", "--profile", "default", "--seed", "1"
    )
    assert status == 0, out
    assert "targets: my card" in out and out.rstrip().endswith("conformant")
    assert "commands refused by the PIN guard: 0" in out


def test_factory_by_module_name_from_the_working_directory(
    my_card: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"my_card_{os.getpid()}_{time.monotonic_ns()}"  # a name no other test imported
    my_card.rename(my_card.with_name(f"{module}.py"))
    monkeypatch.chdir(my_card.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    status, out, _ = conformance(capsys, "--target", f"python:{module}:my_card", "--seed", "2")
    assert status == 0, out
    assert "targets: my card" in out


def test_a_kept_card_of_your_own_is_behind_the_pin_guard(
    variants: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not disposable: a wrong PIN in a transcript is not sent, the bench keeps within the
    budget (refusing the rest), and the card's counters end where they began."""
    target = f"python:{variants}:kept"
    wrong = tmp_path / "wrong-pin.apdu"
    wrong.write_text(
        "# mynacard transcript 1\n00A4040C0AD392F000260100000001 -> 9000\n"
        "00A4020C020018 -> 9000\n0020008004 39393939 -> 63C2\n"
    )
    status = mynacard(["replay", str(wrong), "--target", target, "--profile", "default"])
    out = capsys.readouterr().out
    assert status == 1 and "exchange 3 of 3: not sent:" in out
    start = read_pin_status(tmp_path / "states")
    status, out, _ = conformance(
        capsys, "--target", target, "--profile", "default", "--pin-budget", "1", "--seed", "1"
    )
    assert status == 0, out
    refused = re.search(r"commands refused by the PIN guard: (\d+)", out)
    assert refused and int(refused.group(1)) > 0
    assert read_pin_status(tmp_path / "states") == start


@pytest.mark.parametrize(
    ("source", "factory", "message"),
    [
        (None, "nowhere_to_be_found_module:make", "no module named 'nowhere_to_be_found_module'"),
        ("", "FILE:make", "card.py has no 'make'"),
        ("make = 3\n", "FILE:make", "make is not callable (it is an int)"),
        ("def make():\n    return object()\n", "FILE:make",
         "the object from make() has no transmit(), reset(), power_cycle()"),
        ("class C:\n    disposable = True\n    def transmit(self, c): return c\n"
         "    def reset(self): return b''\n    def power_cycle(self): return None\n"
         "def make():\n    return C()\n", "FILE:make",
         "says it is disposable but has no restart()"),
        ("def make():\n    raise OSError('simulator not running')\n", "FILE:make",
         "make() raised OSError: simulator not running (card.py:2)"),
        ("import nowhere_to_be_found_module\n", "FILE:make",
         "ModuleNotFoundError: No module named 'nowhere_to_be_found_module' (card.py:1)"),
        ("def make(:\n", "FILE:make", "SyntaxError:"),
        (None, "/nonexistent/card.py:make", "no file /nonexistent/card.py"),
        (None, "card.py", "expected python:MODULE:FACTORY"),
    ],
)  # fmt: skip
def test_a_target_that_cannot_be_loaded_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str | None,
    factory: str,
    message: str,
) -> None:
    path = tmp_path / "card.py"
    if source is not None:
        path.write_text(source)
    target = "python:" + factory.replace("FILE", str(path))
    transcript = tmp_path / "select.apdu"
    transcript.write_text("00A4040C00 -> 9000\n")
    for command in (["conformance"], ["replay", str(transcript)]):
        assert mynacard([*command, "--target", target]) == 2
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith(f"mynacard: {target}: "), err
        assert message in err, err
        assert "conformant" not in out


def test_a_target_that_fails_during_the_run_is_an_error(
    variants: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = conformance(capsys, "--target", f"python:{variants}:breaks", "--seed", "1")
    assert status == 2
    assert "the target failed" in err and "ConnectionError: simulator went away" in err
    assert "conformant" not in out


# -- item 8: reports people can act on ----------------------------------------------------


def seed_of(out: str) -> int:
    found = re.match(r"seed: (\d+)", out)
    assert found, out
    return int(found.group(1))


def figures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("examples:", "stateful"))]


def test_the_seed_is_always_printed_and_repeats_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, first, _ = conformance(capsys, "--profile", "default")
    assert status == 0
    seed = seed_of(first)
    assert "(chosen for this run; --seed repeats it)" in first.splitlines()[0]
    status, again, _ = conformance(capsys, "--profile", "default", "--seed", str(seed))
    assert again.splitlines()[0] == f"seed: {seed}"
    assert figures(again) == figures(first) and len(figures(first)) == 2


def test_reports_carry_the_run_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = conformance(
        capsys, "--profile", "default", "--seed", "7", "--report", str(tmp_path)
    )
    assert status == 0
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    from mynacard import __version__

    assert properties["mynacard version"] == __version__
    assert properties["seed"] == "7" and properties["profile"] == "default"
    assert properties["target"] == "emulator (default)"
    command = properties["command line"] or ""
    assert command == (
        "mynacard conformance --target emulator --profile default --max-examples 20 "
        "--steps 40 --seed 7"
    )
    assert properties["extended length (emulator (default))"] == "yes"
    assert properties["blocked_sw"] == "6984" and properties["t0_chaining"] == "False"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", suite.get("timestamp", ""))
    page = (tmp_path / "report.html").read_text()
    for text in (
        "mynacard version",
        "seed",
        "command line",
        html_escape(command),
        "quirks",
        "extended length",
        "t0_chaining = False",
        properties["started"] or "?",
    ):
        assert text in page, text  # fmt: skip
    # the command line in the report repeats the run
    status, again, _ = conformance(capsys, *shlex.split(command)[2:])
    assert figures(again) == figures(out)


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_junit_has_per_case_time_and_sections_not_run(
    variants: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    status, out, _ = conformance(
        capsys, "--target", f"python:{variants}:without_visual_ap", "--seed", "1",
        "--report", str(report),
    )  # fmt: skip
    assert status == 0, out
    cases = {c.get("name"): c for c in ElementTree.parse(report / "junit.xml").iter("testcase")}
    visual = cases["§5 visual AP"]
    skipped = visual.find("skipped")
    assert skipped is not None and skipped.get("type") == "not run"
    assert skipped.get("message") == "not run: the application is not on the card"
    times = {name: float(case.get("time", "-1")) for name, case in cases.items()}
    assert times["§5 visual AP"] == 0 and times["§3 JPKI-AP"] > 0 and times["§7 PINs"] > 0
    assert all(time >= 0 for time in times.values())
    page = (report / "report.html").read_text()
    assert "<tr class='not-run'><td>§5 visual AP</td><td>not run</td>" in page


def test_each_failure_has_one_command_that_replays_it(
    variants: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    target = f"python:{variants}:one_try_less"
    status, out, _ = conformance(
        capsys, "--target", target, "--profile", "default", "--seed", "2", "--report", "out"
    )
    assert status == 1 and "NOT conformant: 1 deviation(s)" in out
    replays = [line for line in out.splitlines() if line.startswith("replay: ")]
    expected = f"replay: mynacard replay out/failure-1.apdu --target {target} --profile default"
    assert replays == [expected]
    failure = (tmp_path / "out" / "failure-1.apdu").read_text()
    assert failure in out  # the same transcript, marker included
    command = shlex.split(replays[0].removeprefix("replay: "))
    assert mynacard(command[1:]) == 1  # fails on the broken card ...
    assert "expected 63C3, got 63C2" in capsys.readouterr().out
    command[command.index("--target") + 1] = "emulator"
    assert mynacard(command[1:]) == 0  # ... and passes on the emulator
    capsys.readouterr()
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert (
        f"# {expected}" in junit
        and expected.removeprefix("replay: ") in (tmp_path / "out" / "report.html").read_text()
    )
    # without --report: the run again, with its seed
    status, out, _ = conformance(capsys, "--target", target, "--profile", "default")
    replays = [line for line in out.splitlines() if line.startswith("replay: ")]
    assert replays == [
        f"replay: mynacard conformance --target {target} --profile default --max-examples 20 "
        f"--steps 40 --seed {seed_of(out)}"
    ]
    status, again, _ = conformance(capsys, *shlex.split(replays[0])[3:])
    assert status == 1 and figures(again) == figures(out)


def test_the_first_differing_byte_is_marked(
    variants: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = conformance(
        capsys, "--target", f"python:{variants}:one_try_less", "--profile", "default", "--seed", "2"
    )
    lines = out.splitlines()
    noted = next(i for i, line in enumerate(lines) if line.endswith("# card answered 63C2"))
    marker = lines[noted + 1]
    assert marker.startswith("#") and marker.index("^^") == lines[noted].rindex("63C2") + 2
    assert marker.endswith(
        "first difference at offset 1 (0x1) of 2 bytes: C2 where C3 was expected"
    )


@pytest.mark.parametrize(
    ("pattern", "answer", "offset"),
    [
        ("9000", "9000", None),
        ("63C2", "63C3", 1),
        ("9000", "6A82", 0),
        ("63C. | 9000", "6984", 0),
        ("[*] 9000", "AABB6A82", 2),  # the status word, not "more data would match"
        ("[*] 9000 | 6A82", "AABB6A82", 2),
        ("3082 [2] 9000", "30820632009000", 4),
        ("[1-3] 9000 | 6B00", "AABBCCDD9000", 3),
        ("[2-4] 9000", "AABBCCDD6A82", 4),
        ("0102 [2] 0506", "0102AABB0507", 5),
        ("9000", "90", 1),  # ends too early: the offset is the length
        ("[0]", "9000", 0),
    ],
)
def test_first_difference_of_an_answer_and_a_pattern(
    pattern: str, answer: str, offset: int | None
) -> None:
    assert Pattern(pattern).first_difference(bytes.fromhex(answer)) == offset


def test_exit_codes_tell_a_verdict_from_an_error(
    variants: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert conformance(capsys, "--seed", "1")[0] == 0
    status, out, _ = conformance(
        capsys, "--target", f"python:{variants}:one_try_less", "--profile", "default"
    )
    assert status == 1 and "NOT conformant" in out
    status, out, err = conformance(capsys, "--target", "floppy")
    assert status == 2 and err.startswith("mynacard: ") and "conformant" not in out

    def bug(config: RunConfig) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runner, "run", bug)
    status, out, err = conformance(capsys, "--seed", "1")
    assert status == 3 and "Traceback" in err and "internal error" in err
    assert "conformant" not in out


def test_ctrl_c_stops_within_a_second_with_130(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*MYNACARD, "conformance", "--max-examples", "1000000", "--steps", "60"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the seed: the run has begun
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = process.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert took < 1, f"{took:.2f} s"
    assert "conformant" not in first + out + err
    assert f"--seed {seed_of(first)}" in err  # how to run it again
    assert not (tmp_path / ".hypothesis").exists()


def test_no_hypothesis_directory_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hypothesis import configuration

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYPOTHESIS_STORAGE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = configuration.__dict__.get("__hypothesis_home_directory")
    result = run(RunConfig(profile="default", max_examples=10, seed=3))
    assert result.conformant
    assert not (tmp_path / ".hypothesis").exists()
    assert configuration.__dict__.get("__hypothesis_home_directory") == before  # given back
    plugin = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--card-target", "emulator",
         "--card-profile", "default", "--card-max-examples", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert plugin.returncode == 0, plugin.stdout + plugin.stderr
    assert re.search(r"mynacard conformance: target emulator, seed \d+", plugin.stdout)
    assert not (tmp_path / ".hypothesis").exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_ends_at_its_total() -> None:
    stream = Terminal()
    bar = Progress(200, Stats(), stream)
    for done in (1, 100, 199, 230):  # hypothesis may run more calls than valid examples
        bar(done)
    bar.close(finished=True)
    frames = stream.getvalue().split("\r")
    assert frames[-1] == f"[{'#' * 30}] 200/200 examples\n"
    assert all("230" not in frame for frame in frames)
    stopped = Terminal()
    bar = Progress(200, Stats(), stopped)
    bar(57)
    bar.close(finished=False)
    assert stopped.getvalue().endswith("57/200 examples (stopped)\n")


def test_heartbeat_instead_of_a_bar_off_a_terminal() -> None:
    stream = io.StringIO()
    stats = Stats()
    beat = Progress(200, stats, stream, interval=0.05)
    stats.rule_steps = 123
    beat(17)
    time.sleep(0.3)
    beat.close(finished=True)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) >= 3
    assert lines[0].startswith("progress: 17/200 examples, 123 steps, ")
    assert lines[-1].startswith("progress: 200/200 examples, 123 steps, ")


def test_the_command_prints_heartbeats_when_not_on_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MYNACARD, "conformance", "--max-examples", "15", "--seed", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("progress: 15/15 examples")
    assert done.stdout.splitlines()[-1] == "conformant"
