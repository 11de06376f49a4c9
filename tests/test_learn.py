"""`mynacard learn`: AALpy learns an application's Mealy machine through the mapper; the
faithful emulator's equals the model's, and a mutant that changes it is shown as a diff
with transcripts `mynacard replay` runs (docs/learning.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from test_conformance_mutants import MUTANTS

from mynacard import open_card
from mynacard.cli import main as mynacard
from mynacard.conformance.learn.mapper import agrees
from mynacard.conformance.learn.session import plan, run
from mynacard.conformance.replay import replay
from mynacard.conformance.targets import EmulatorTarget
from mynacard.conformance.transcript import load
from mynacard.store import read_pin_status

HERE = Path(__file__).resolve().parent
PLANTED = HERE / "planted_cards.py"
MYNACARD = [sys.executable, "-m", "mynacard"]


def _learn(app: str, target: EmulatorTarget) -> object:
    chosen = plan(app, "default", {}, restore=False)
    try:
        return run(target, chosen)
    finally:
        target.close()


def _mynacard(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MYNACARD, *arguments], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize(
    "app",
    [
        "juki",
        "common",
        pytest.param("jpki", marks=pytest.mark.slow),
        pytest.param("text", marks=pytest.mark.slow),
        pytest.param("visual", marks=pytest.mark.slow),
    ],
)
def test_the_faithful_emulator_learns_as_the_model(app: str) -> None:
    outcome = _learn(app, EmulatorTarget("default"))
    assert outcome.comparison.equal, outcome.comparison.differences[:3]
    assert outcome.learned.states == outcome.expected.states > 2


@pytest.mark.slow
def test_a_free_area_application_learns_as_the_model() -> None:
    chosen = plan("free:library", "library-card", {}, restore=False)
    target = EmulatorTarget("library-card")
    try:
        outcome = run(target, chosen)
    finally:
        target.close()
    assert outcome.comparison.equal, outcome.comparison.differences[:3]


@pytest.mark.parametrize(
    "mutant",
    [
        "counter-not-decremented",
        pytest.param("6983-instead-of-6984", marks=pytest.mark.slow),
        pytest.param("counter-reset-by-power-cycle", marks=pytest.mark.slow),
    ],
)
def test_a_mutant_that_changes_the_machine_is_a_diff(mutant: str) -> None:
    outcome = _learn("juki", EmulatorTarget("default", opener=MUTANTS[mutant]))
    assert outcome.comparison.differences
    chosen = plan("juki", "default", {}, restore=False)
    from mynacard.conformance.learn.mapper import ModelSUL

    shortest = outcome.comparison.differences[0]
    transcript = ModelSUL(chosen.facts, chosen.letters).transcript(shortest.inputs)
    broken = EmulatorTarget("default", opener=MUTANTS[mutant])
    faithful = EmulatorTarget("default")
    try:
        assert not replay(transcript, broken).ok
        assert replay(transcript, faithful).ok
    finally:
        broken.close()
        faithful.close()


def test_learn_writes_both_machines_pictures_and_the_page(tmp_path: Path) -> None:
    done = _mynacard("learn", "--app", "common", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the same machine" in done.stdout
    assert "card exchanges" in done.stdout
    out = tmp_path / "out"
    for name in ("learned", "expected"):
        assert (out / f"{name}.dot").read_text().startswith('digraph "')
        assert "<svg" in (out / f"{name}.svg").read_text()  # drawn by Graphviz
    page = (out / "index.html").read_text()
    assert 'src="learned.svg"' in page and 'src="expected.svg"' in page
    assert (out / "learned.dot").read_text().replace("learned:", "expected:") == (
        out / "expected.dot"
    ).read_text()


def test_a_planted_fault_is_a_diff_replay_shows(tmp_path: Path) -> None:
    target = f"python:{PLANTED}:blocked_6983"
    done = _mynacard(
        "learn", "--target", target, "--profile", "default", "--app", "juki", "--out", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "answered 6983, expected 6984" in done.stdout
    assert "the machines differ" in done.stdout
    first = tmp_path / "out" / "difference-1.apdu"
    assert load(first)[-1].expected.text == "6984"
    assert "replay: mynacard replay out/difference-1.apdu --target python:" in done.stdout
    assert "color=red" in (tmp_path / "out" / "learned.dot").read_text()
    on_mutant = _mynacard(
        "replay", str(first), "--target", target, "--profile", "default", cwd=tmp_path
    )
    assert on_mutant.returncode == 1 and "expected 6984, got 6983" in on_mutant.stdout
    on_emulator = _mynacard("replay", str(first), "--profile", "default", cwd=tmp_path)
    assert on_emulator.returncode == 0, on_emulator.stdout


def test_a_card_that_is_not_disposable_needs_a_pin_budget(tmp_path: Path) -> None:
    target = f"python:{PLANTED}:not_disposable"
    options = ("learn", "--target", target, "--profile", "default", "--app", "juki")
    refused = _mynacard(*options, "--out", "a", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("the wrong-PIN budget (0) of this key is spent")
    assert refused.stderr.count("\n") == 1
    done = _mynacard(*options, "--out", "b", "--pin-budget", "1000", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrong PINs sent through the PIN guard: 20" in done.stdout
    pins = ("--pin", "auth=1234", "--pin", "sign=ABC123")  # no profile: the model from the spec
    jpki = _mynacard(
        "learn", "--target", target, *pins, "--app", "jpki", "--pin-budget", "1000",
        "--out", "c", cwd=tmp_path,
    )  # fmt: skip
    assert jpki.returncode == 0, jpki.stdout + jpki.stderr
    assert "the same machine" in jpki.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--app", "nope"), "--app nope: expected jpki"),
        (("--app", "free:nope"), "no free-area application 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    done = _mynacard("learn", *options, "--out", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.pcsc
def test_learning_through_pcscd_restores_every_counter(
    serve: Callable[..., AbstractContextManager[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A card behind pcscd is not disposable: the PIN guard, a budget, counters restored."""
    state = tmp_path / "state"
    with serve("default", state_dir=state) as reader:
        status = mynacard(
            ["learn", "--target", f"pcsc:{reader}", "--profile", "default", "--app", "juki",
             "--pin-budget", "1000", "--out", str(tmp_path / "out")]
        )  # fmt: skip
        out = capsys.readouterr().out
    assert status == 0, out
    assert "the same machine" in out and "wrong PINs sent through the PIN guard: " in out
    open_card("default", tmp_path / "fresh").close()
    fresh = {pin.name: pin.remaining for pin in read_pin_status(tmp_path / "fresh")}
    assert {pin.name: pin.remaining for pin in read_pin_status(state)} == fresh


@pytest.mark.parametrize(
    ("learned", "expected", "agree"),
    [
        ("63C2", "63C.", True),
        ("6A82", "6A82 | 9000", True),
        ("9000", "9000 +data?", True),
        ("9000 +data", "9000 +data?", True),
        ("6F00", "*", True),
        ("9000 ; 6982", "9000 ; 9000 +data", False),
        ("6983", "6984", False),
        ("9000", "9000 ; 9000", False),
    ],
)
def test_a_learned_output_agrees_with_any_reading_the_model_accepts(
    learned: str, expected: str, agree: bool
) -> None:
    assert agrees(learned, expected) is agree
