"""pytest plugin: `pytest --card-target TARGET` runs the conformance suite against a card,
and the `mynacard_card` fixture serves a card to users' own tests.

Registered as a pytest11 entry point; without --card-target it only adds its options, the
`mynacard` marker and the fixture, and imports nothing else (the bench and the card load when
a run asks for them). The suite (mynacard/conformance/suite.py) has one test per spec section
(as in the JUnit report) and one per golden client-flow transcript.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .fixture import FixtureCard
    from .runner import RunConfig

SUITE = Path(__file__).resolve().with_name("suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mynacard", "My Number Card conformance bench")
    group.addoption(
        "--card-target",
        metavar="TARGET",
        help="run the conformance suite against emulator, pcsc, pcsc:READER, transcript:FILE "
        "or python:MODULE:FACTORY",
    )
    group.addoption("--card-profile", metavar="P", help="profile whose exact data to expect")
    group.addoption(
        "--card-pin", action="append", default=[], metavar="NAME=VALUE", help="a correct PIN"
    )
    group.addoption("--card-pin-budget", type=int, default=0, metavar="N")
    group.addoption("--card-max-examples", type=int, default=None, metavar="N")
    group.addoption("--card-steps", type=int, default=None, metavar="N")
    group.addoption("--card-seed", type=int, default=None, metavar="S")
    group.addoption("--card-differential", metavar="TARGET")
    group.addoption(
        "--mynacard-backend",
        choices=("inproc", "pcsc"),
        default="inproc",
        help="where the `mynacard_card` fixture serves its card: in this process (default) or "
        "through pcscd + vpcd",
    )
    group.addoption(
        "--mynacard-reader",
        type=int,
        default=0,
        metavar="N",
        help="the vpcd reader the pcsc backend serves on (default 0: 'Virtual PCD 00 00')",
    )
    group.addoption(
        "--card-database",
        metavar="URL",
        help="example database shared by a fleet: redis://HOST:PORT[/DB] or a folder",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mynacard(profile='default', quirks={}, faults=[] or FILE, seed=0, atr=None, "
        "interface=None): the card the `mynacard_card` fixture serves",
    )
    if not config.getoption("card_target"):
        return
    if config.getoption("card_seed") is None:  # every run can be repeated: say its seed
        from .runner import choose_seed

        config.option.card_seed = choose_seed()
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # pytest-xdist: worker gwN runs seed + N, so N workers make N runs
        config.option.card_seed += int(str(worker["workerid"]).removeprefix("gw"))
    suite = str(SUITE)
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        if suite not in config.args:
            config.args.append(suite)
    else:
        config.args[:] = [suite]


def pytest_report_header(config: pytest.Config) -> str | None:
    target = config.getoption("card_target")
    if not target:
        return None
    seed = config.getoption("card_seed")
    return f"mynacard conformance: target {target}, seed {seed} (--card-seed {seed} repeats it)"


class _Suite(pytest.Module):
    """The suite file, imported by its package name (not by path, which would load a second
    copy of the bench under another name)."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module("mynacard.conformance.suite")


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if module_path == SUITE:
        return _Suite.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def card_run_config(request: pytest.FixtureRequest) -> RunConfig:
    """The run `--card-*` asked for (the suite is skipped without --card-target)."""
    from .runner import DEFAULT_MAX_EXAMPLES, DEFAULT_STEPS, RunConfig

    option = request.config.getoption
    target = option("card_target")
    if not target:
        pytest.skip("no --card-target given")
    pins = {}
    for item in option("card_pin"):
        name, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--card-pin expects NAME=VALUE, got {item!r}")
        pins[name] = value
    return RunConfig(
        target=target,
        profile=option("card_profile"),
        pins=pins,
        max_examples=option("card_max_examples") or DEFAULT_MAX_EXAMPLES,
        steps=option("card_steps") or DEFAULT_STEPS,
        seed=option("card_seed"),
        pin_budget=option("card_pin_budget"),
        differential=option("card_differential"),
        database=option("card_database"),
    )


@pytest.fixture
def mynacard_card(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FixtureCard]:
    """A card served for this test (docs/testing-your-middleware.md): in process or through
    pcscd (`--mynacard-backend`), as the `mynacard` marker or an indirect parameter asks;
    state in tmp_path, stopped when the test ends."""
    from .fixture import CardSetupError, open_fixture_card

    marker = request.node.get_closest_marker("mynacard")
    values = dict(marker.kwargs) if marker is not None else {}
    values.update(getattr(request, "param", None) or {})
    option = request.config.getoption
    problem = ""
    try:
        card = open_fixture_card(
            values, option("mynacard_backend"), tmp_path, option("mynacard_reader")
        )
    except CardSetupError as error:
        problem = str(error)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield card
    finally:
        card.close()
