"""The conformance suite as pytest tests (run by `pytest --card-target TARGET`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .flows import FLOWS, GOLDEN_DIR
from .profile import read_profile
from .replay import replay
from .report import SECTIONS, failure_text, run_metadata
from .runner import RunConfig, RunResult, run
from .targets import open_target
from .transcript import load


@pytest.fixture(scope="session")
def card_result(
    card_run_config: RunConfig, record_testsuite_property: Callable[[str, object], None]
) -> RunResult:
    """One property-based run, shared by the per-section tests; its metadata goes into
    pytest's JUnit report (--junitxml) as properties."""
    result = run(card_run_config)
    for name, value in run_metadata(result).items():
        record_testsuite_property(name, value)
    return result


@pytest.mark.parametrize("section", SECTIONS)
def test_spec_section(card_result: RunResult, section: str) -> None:
    stats = card_result.stats.section(section)
    if stats.failures:
        text = "\n".join(failure_text(card_result, d) for d in stats.failures)
        pytest.fail(f"{text}\nseed {card_result.seed} (--card-seed repeats the run)", pytrace=False)
    if not stats.steps:
        pytest.skip(f"not run: no step of {section} ran (application not on the card?)")


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_golden_client_flow(card_run_config: RunConfig, flow: str) -> None:
    """The §12 client flow replays (its PINs are the default profile's)."""
    pins = dict(card_run_config.pins)
    if card_run_config.profile:
        pins = {**read_profile(card_run_config.profile).pins, **pins}
    target = open_target(card_run_config.target, card_run_config.profile)
    try:
        result = replay(load(GOLDEN_DIR / f"{flow}.apdu"), target, pins=pins)
    finally:
        target.close()
    assert result.ok, f"{flow}.apdu exchange {result.line}: {result.problem}"
