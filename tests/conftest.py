"""Shared fixtures: the `card` of a test on every backend, a pcscd with the vpcd driver, and
`mynacard serve` on a vpcd reader.

A test that takes `card` runs twice: ``[inproc]`` on ``mynacard.open_card`` and ``[pcsc]``
(marked `pcsc`) through pcscd + vpcd + ``mynacard serve`` (tests/cardtest.py). ``--backend
inproc|pcsc|both`` picks; the markers `card_profile`, `fresh_card` and `backends` say which card.

PC/SC tests are skipped locally when pcscd/vpcd is unavailable, but fail when CI=true.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NoReturn

import pytest
from cardtest import BACKENDS, CardProfile, InProcessCard, PcscCards, TestedCard
from hypothesis import HealthCheck, settings
from pcsc import owned_pcscd_pid, pcscd_pid, serve_card, start_pcscd, stop_pcscd, vpcd_listening

from mynacard import Profile, load_profile

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")

ServeCard = Callable[..., AbstractContextManager[str]]

# Hypothesis: "ci" (the default) keeps the suite fast and free of timing flakes on 2 cores;
# "soak" (HYPOTHESIS_PROFILE=soak, tox -e soak) is for long fuzz runs with -m slow.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "soak", deadline=None, max_examples=5000, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pcsc_unavailable(reason: str) -> NoReturn:
    """Skip the test locally; fail it in CI, where the PC/SC tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PC/SC stack unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"PC/SC stack unavailable: {reason}")


def restartable_pcscd() -> int:
    """The pid of the pcscd this repository started, which a test may stop and start again;
    never someone else's (skipped locally, failed in CI)."""
    pid = owned_pcscd_pid()
    if pid is None:
        pcsc_unavailable("pcscd was not started by this repository; not restarting someone else's")
    return pid


@pytest.fixture(scope="session")
def pcscd() -> Iterator[int]:
    """The pid of a running pcscd with vpcd; started (and stopped at the end) if needed."""
    try:
        import smartcard.scard  # noqa: F401
    except ImportError as err:
        pcsc_unavailable(f"pyscard is not installed ({err})")
    started = None
    pid = pcscd_pid()
    if pid is None:
        if shutil.which("pcscd") is None or not VPCD_DRIVER.exists():
            pcsc_unavailable("pcscd or vsmartcard-vpcd is missing (./setup.sh test installs them)")
        try:
            pid = started = start_pcscd()
        except (OSError, RuntimeError) as err:
            pid = pcscd_pid()  # someone else may have started one meanwhile
            if pid is None or not vpcd_listening():
                pcsc_unavailable(f"cannot start pcscd: {err}")
    elif not vpcd_listening():
        pcsc_unavailable(f"pcscd (pid {pid}) runs without the vpcd reader; restart it")
    yield pid
    if started is not None:
        current = owned_pcscd_pid()  # a test may have restarted it
        if current is not None:
            stop_pcscd(current)


@pytest.fixture
def serve(pcscd: int, tmp_path: Path) -> ServeCard:
    """Factory: ``with serve("default", reader=0) as reader_name:`` runs `mynacard serve`."""

    def start(
        profile: str | Path = "default",
        state_dir: Path | None = None,
        reader: int = 0,
        extra_args: tuple[str, ...] = (),
    ) -> AbstractContextManager[str]:
        state = state_dir or tmp_path / "state"
        return serve_card(profile, state, reader, extra_args=extra_args)

    return start


# -- the card of a test, on every backend ----------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=(*BACKENDS, "both"),
        default="both",
        help="run the tests that take the `card` fixture in process, through pcscd, or both",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "card_profile(name='default', edits=None, append=''): the profile of the `card` "
        "fixture: a shipped name or a path, with text edits {old: new} and TOML appended "
        "(or a cardtest.CardProfile)",
        "fresh_card: the `card` fixture gives a card with a new state (through pcscd: served "
        "for this test alone); without it, tests through pcscd share a reset card",
        "backends(*names): the backends ('inproc', 'pcsc') the `card` fixture runs the test on",
    ):
        config.addinivalue_line("markers", line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take `card` (through `backend`) run once per backend; [pcsc] is marked pcsc."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker else BACKENDS
    wanted = metafunc.config.getoption("backend")
    metafunc.parametrize(
        "backend",
        [
            pytest.param(name, id=name, marks=[pytest.mark.pcsc] if name == "pcsc" else [])
            for name in names
            if wanted in ("both", name)
        ],
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A `backends` mark on one parameter (pytest.param(..., marks=...)) drops that case on
    the other backends; so does --backend for a test marked for the other backend only (its
    empty parameter set would otherwise show as a skip)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        marker = item.get_closest_marker("backends")
        (dropped if backend and marker and backend not in marker.args else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True  # a shared card that saw a failure is not shared further
    return report


@pytest.fixture(scope="session")
def profile_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where edited profiles (`card_profile` with edits or append) are written."""
    return tmp_path_factory.mktemp("profiles")


@pytest.fixture
def card_profile(request: pytest.FixtureRequest) -> CardProfile:
    """The profile of `card`: an indirect parameter, else the card_profile marker, else default."""
    param = getattr(request, "param", None)
    if param is not None:
        return param if isinstance(param, CardProfile) else CardProfile.of(param)
    marker = request.node.get_closest_marker("card_profile")
    if marker is None:
        return CardProfile()
    if marker.args and isinstance(marker.args[0], CardProfile):
        return marker.args[0]
    return CardProfile.of(*marker.args, **marker.kwargs)


@pytest.fixture(scope="module")
def pcsc_cards(pcscd: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscCards]:
    """The cards served for one test module (readers 0 and 1), stopped at its end."""
    cards = PcscCards(tmp_path_factory.mktemp("served"))
    yield cards
    cards.release()


@pytest.fixture
def card(
    backend: str,
    card_profile: CardProfile,
    profile_files: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[TestedCard]:
    """The card of the test: open_card in process, or served through pcscd (see cardtest.py).

    In process every test has a new card (state in tmp_path/"state"). Through pcscd, tests of
    a module share one served card per profile, warm reset before each test, unless marked
    `fresh_card` (then it is served for the test alone, state in tmp_path/"state").
    """
    source = card_profile.source(profile_files)
    profile: Profile = load_profile(source)
    fresh = request.node.get_closest_marker("fresh_card") is not None
    if backend == "inproc":
        tested = InProcessCard(source, profile, tmp_path / "state")
        tested.open()
        try:
            yield tested
        finally:
            tested.close()
        return
    cards: PcscCards = request.getfixturevalue("pcsc_cards")
    if fresh:
        yield cards.fresh(source, profile, tmp_path / "state")
        cards.release_fresh(wait_gone=False)  # the next fresh card waits, the others need not
    else:
        yield cards.shared(source, profile)
        if request.node.stash.get(FAILED, False):
            cards.release_shared()
