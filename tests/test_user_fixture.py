"""The `mynacard_card` fixture as users' own tests use it: in process (pytester), and the
worked example of examples/pcsc-client run by pytest in a project of its own, through pcscd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pcsc import REPO_ROOT

pytest_plugins = ("pytester",)

EXAMPLE = REPO_ROOT / "examples" / "pcsc-client"

USER_TESTS = """
import pytest
from mynacard import open_card
from mynacard.faults import CardRemoved

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
READ = bytes.fromhex("00B0000004")


def test_default_card(mynacard_card, tmp_path):
    assert mynacard_card.backend == "inproc" and mynacard_card.reader is None
    assert mynacard_card.atr == bytes.fromhex("3BE000FF8131FE4514")
    assert mynacard_card.transmit(SELECT_JPKI) == b"\\x90\\x00"
    assert mynacard_card.state_dir == tmp_path / "mynacard-state"
    assert mynacard_card.profile.name == "default"


@pytest.mark.mynacard(profile="sign-blocked", interface="contactless",
                      quirks={"blocked_sw": 0x6983, "t0_chaining": True})
def test_marker_settings(mynacard_card):
    assert mynacard_card.power_cycle() == bytes.fromhex("3B888001000005E0B381A1007F")
    assert mynacard_card.transmit(SELECT_JPKI) == b"\\x90\\x00"
    assert mynacard_card.transmit(bytes.fromhex("00A4020C02001B")) == b"\\x90\\x00"
    assert mynacard_card.transmit(bytes.fromhex("0020008006313233343536")) == b"\\x69\\x83"
    assert mynacard_card.transmit(bytes.fromhex("00A4020C02000A")) == b"\\x90\\x00"
    assert mynacard_card.transmit(bytes.fromhex("00B0000000062E")) == b"\\x61\\x00"


@pytest.mark.mynacard(faults=[{"kind": "remove", "ins": ["B0"], "after": 1}], seed=3)
def test_fault_plan(mynacard_card):
    assert mynacard_card.transmit(SELECT_JPKI) == b"\\x90\\x00"
    with pytest.raises(CardRemoved):
        mynacard_card.transmit(READ)


@pytest.mark.parametrize(
    "mynacard_card", [{"profile": "default"}, {"atr": "jpki-03"}], indirect=True
)
def test_fixture_arguments(mynacard_card):
    assert mynacard_card.reset()[:3] in (bytes.fromhex("3BE000"), bytes.fromhex("3BC5FF"))


@pytest.mark.mynacard(quirks={"t0_chaining": "maybe"})
def test_bad_quirk(mynacard_card):
    pass


@pytest.mark.mynacard(colour="red")
def test_unknown_setting(mynacard_card):
    pass


def test_state_is_released(tmp_path, request):
    # the card of test_default_card closed: its state opens again
    first = tmp_path.parent / "test_default_card0" / "mynacard-state"
    with open_card("default", first) as card:
        assert card.transmit(SELECT_JPKI) == b"\\x90\\x00"
"""


def test_fixture_in_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_bad_quirk*",
            "mynacard: --quirk: t0_chaining: expected true or false, got 'maybe'",
            "*ERROR at setup of test_unknown_setting*",
            "mynacard: no setting colour (settings: profile, quirks, faults, seed, atr, interface)",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def _run_example(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=project, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.pcsc
def test_worked_example_through_pcscd(pcscd: int, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    result = _run_example(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


@pytest.mark.pcsc
def test_worked_example_catches_a_client_without_get_response(pcscd: int, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    client = project / "jpki_reader.py"
    loop = "    while sw1 == 0x61:\n"
    assert loop in client.read_text()
    client.write_text(client.read_text().replace(loop, "    while False:\n"))
    result = _run_example(project, "-k", "61xx")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 3 deselected" in result.stdout
    assert "FAILED test_jpki_reader.py::test_collects_an_answer_in_61xx_pieces" in result.stdout
