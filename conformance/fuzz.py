"""The bench's state machine as a test that pytest and HypoFuzz collect (docs/fleet.md).

    hypothesis fuzz -n 4 -- --pyargs mynacard.conformance.fuzz      # HypoFuzz, dashboard on :9999
    pytest --pyargs mynacard.conformance.fuzz                        # one ordinary run

The card and the database come from the environment: ``MYNACARD_FUZZ_TARGET`` (default
``emulator``), ``MYNACARD_FUZZ_PROFILE`` (default ``default``) and ``MYNACARD_DATABASE``
(``redis://HOST:PORT[/DB]`` or a folder): HypoFuzz keeps its corpus, and every worker its
failures, in hypothesis's default database, which this module makes that one.  The target
must be disposable (the emulator, a disposable ``python:`` target): a campaign runs for
days and the PIN guard's budget is per run.
"""

from __future__ import annotations

import atexit
import os

from hypothesis import HealthCheck, settings

from .bench import Bench
from .fleet import example_database
from .machine import build_machine
from .profile import read_profile
from .runner import make_link
from .targets import TargetError, open_target

PROFILE = os.environ.get("MYNACARD_FUZZ_PROFILE", "default")
TARGET = os.environ.get("MYNACARD_FUZZ_TARGET", "emulator")
DATABASE = example_database(os.environ.get("MYNACARD_DATABASE"))

if DATABASE is not None:
    settings.register_profile("mynacard-fleet", database=DATABASE)
    settings.load_profile("mynacard-fleet")


def _bench() -> Bench:
    """A bench on the target, its survey done (the examples start from what it learned)."""
    target = open_target(TARGET, PROFILE)
    if not target.disposable:
        target.close()
        raise TargetError(f"{TARGET}: a fuzzing campaign needs a disposable target")
    atexit.register(target.close)  # its scratch state goes with the process
    bench = Bench(make_link(target, read_profile(PROFILE), {}, 0))
    bench.survey()
    return bench


TestCardConformance = build_machine(_bench()).TestCase
TestCardConformance.settings = settings(
    deadline=None, stateful_step_count=40, suppress_health_check=list(HealthCheck)
)
