"""The bench through the real stack: pyscard, pcscd, vpcd and `mynacard serve`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mynacard import open_card
from mynacard.cli import main as mynacard
from mynacard.conformance.flows import FLOWS, GOLDEN_DIR
from mynacard.conformance.profile import read_profile
from mynacard.conformance.replay import replay
from mynacard.conformance.targets import PcscTarget, TranscriptTarget
from mynacard.conformance.transcript import load
from mynacard.store import read_pin_status

pytestmark = pytest.mark.pcsc

ServeCard = Callable[..., AbstractContextManager[str]]


def counters(state: Path) -> dict[str, int]:
    return {pin.name: pin.remaining for pin in read_pin_status(state)}


def fresh_counters(state: Path) -> dict[str, int]:
    open_card("default", state).close()
    return counters(state)


def test_cli_conformance_through_pcscd_spends_the_budget_and_restores_every_counter(
    serve: ServeCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CI's PC/SC run: 2,000+ steps through pcscd with a budget of one wrong try per PIN;
    every counter is full again afterwards (read from the served card's state)."""
    state = tmp_path / "state"
    report = tmp_path / "report"
    with serve("default", state_dir=state) as reader:
        status = mynacard(
            ["conformance", "--target", f"pcsc:{reader}", "--profile", "default",
             "--pin-budget", "1", "--max-examples", "70", "--seed", "7", "--report", str(report)]
        )  # fmt: skip
        out = capsys.readouterr().out
        assert status == 0, out
    steps = int(out.split("stateful steps (actions): ")[1].split(",")[0])
    assert steps >= 2000, out
    print(f"\n{out}")
    assert counters(state) == fresh_counters(tmp_path / "fresh")
    assert f"extended length (pcsc:{reader}): yes" in out
    suite = ElementTree.parse(report / "junit.xml").getroot()
    assert suite.get("failures") == "0"


def test_without_pins_or_budget_no_verify_with_data_reaches_the_card(
    serve: ServeCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    record = tmp_path / "traffic.apdu"
    with serve("default", state_dir=state) as reader:
        status = mynacard(
            ["conformance", "--target", f"pcsc:{reader}", "--max-examples", "15", "--seed", "2",
             "--record", str(record)]
        )  # fmt: skip
        assert status == 0, capsys.readouterr().out
    traffic = load(record)
    verifies = [e.command for e in traffic if e.command[:2] == b"\x00\x20"]
    assert verifies and all(len(command) == 4 for command in verifies)  # retry queries only
    assert replay(traffic, TranscriptTarget(traffic)).ok


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_golden_transcript_replays_through_pcscd(
    serve: ServeCard, tmp_path: Path, flow: str
) -> None:
    with serve("default", state_dir=tmp_path / "state") as reader:
        target = PcscTarget(reader)
        try:
            result = replay(
                load(GOLDEN_DIR / f"{flow}.apdu"), target, pins=read_profile("default").pins
            )
        finally:
            target.close()
    assert result.ok, result.problem


def test_differential_emulator_in_process_versus_behind_pcscd(
    serve: ServeCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve("default", state_dir=tmp_path / "state") as reader:
        status = mynacard(
            ["conformance", "--target", "emulator", "--differential", f"pcsc:{reader}",
             "--profile", "default", "--pin-budget", "1", "--max-examples", "25", "--seed", "9"]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"targets: emulator (default), pcsc:{reader}" in out
