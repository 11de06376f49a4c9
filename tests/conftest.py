"""Shared fixtures: a pcscd with the vpcd driver, and `mynacard serve` on a vpcd reader.

PC/SC tests are skipped locally when pcscd/vpcd is unavailable, but fail when CI=true.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import HealthCheck, settings
from pcsc import owned_pcscd_pid, pcscd_pid, serve_card, start_pcscd, stop_pcscd, vpcd_listening

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
