"""What a user gets from the wheel: built from this checkout, installed with [pcsc] in a
fresh venv outside it, and used from another directory (the card through pcscd included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pcsc import REPO_ROOT, serve_card

pytestmark = pytest.mark.pcsc

USER_TEST = """
from mynacard import open_card


def test_the_card_answers(tmp_path):
    with open_card("default", tmp_path / "state") as card:
        assert card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001")) == b"\\x90\\x00"
"""


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the venv, a directory outside the checkout) with the wheel installed as a user would."""
    root = tmp_path_factory.mktemp("wheel")
    dist, venv, elsewhere = root / "dist", root / "venv", root / "elsewhere"
    elsewhere.mkdir()
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, REPO_ROOT, cwd=root)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("mynacard-*.whl")
    base = getattr(sys, "_base_executable", sys.executable)
    assert run(base, "-m", "venv", venv, cwd=root).returncode == 0
    pip = run(venv / "bin" / "pip", "install", "-q", f"{wheel}[pcsc]", "pytest", cwd=elsewhere)
    assert pip.returncode == 0, pip.stderr
    yield venv, elsewhere
    shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_installs_only_mynacard() -> None:
    dist = REPO_ROOT / "build" / "wheel-test"
    shutil.rmtree(dist, ignore_errors=True)
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, REPO_ROOT, cwd=REPO_ROOT
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("mynacard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shutil.rmtree(dist, ignore_errors=True)
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"mynacard"}
    for data in ("mynacard/profiles/default.toml", "mynacard/conformance/golden/jsa.apdu"):
        assert data in names
    assert "mynacard/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_commands_from_another_directory(installed: tuple[Path, Path]) -> None:
    venv, elsewhere = installed
    mynacard = venv / "bin" / "mynacard"
    version = run(mynacard, "--version", cwd=elsewhere)
    assert version.returncode == 0 and version.stdout.startswith("mynacard 0."), version
    listing = run(mynacard, "profile", "list", cwd=elsewhere)
    assert "default" in listing.stdout.split(), listing
    module = run(
        venv / "bin" / "python", "-m", "mynacard", "profile", "show", "default", cwd=elsewhere
    )
    assert module.returncode == 0 and "ABC123" in module.stdout, module
    bench = run(mynacard, "conformance", "--target", "emulator", cwd=elsewhere)
    assert bench.returncode == 0 and bench.stdout.rstrip().endswith("conformant"), bench
    assert not (elsewhere / ".hypothesis").exists()


def test_a_user_project_runs_under_pytest(installed: tuple[Path, Path]) -> None:
    venv, elsewhere = installed
    project = elsewhere / "project"
    project.mkdir()
    (project / "test_card.py").write_text(USER_TEST)
    result = run(venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def test_the_installed_card_through_pcscd(pcscd: int, installed: tuple[Path, Path]) -> None:
    venv, elsewhere = installed
    if shutil.which("opensc-tool") is None:
        pytest.fail("opensc-tool is missing (./setup.sh test installs opensc)")
    python = venv / "bin" / "python"
    with serve_card("default", elsewhere / "state", 1, python=python, cwd=elsewhere) as reader:
        named = run("opensc-tool", "--reader", reader, "--name", cwd=elsewhere)
    assert named.stdout.strip() == "jpki", named


def test_ctl_from_the_installed_wheel(
    pcscd: int, installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`mynacard serve` prints READY, `mynacard ctl` drives it, `reader-conf` prints the
    shipped snippet: all from the wheel, outside the checkout."""
    venv, elsewhere = installed
    mynacard = venv / "bin" / "mynacard"
    conf = run(mynacard, "reader-conf", cwd=elsewhere)
    assert conf.returncode == 0 and 'FRIENDLYNAME "Virtual PCD B"' in conf.stdout, conf
    control = tmp_path / "control"
    ctl = (mynacard, "ctl", "--reader", "1", "--control-dir", control)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    server = subprocess.Popen(
        [str(part) for part in (mynacard, "serve", "--reader", "1", "--state",
                                elsewhere / "ctl-state", "--control-dir", control)],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = run(*ctl, "wait-ready", "--timeout", "30", cwd=elsewhere)
        assert ready.returncode == 0, ready.stderr
        removed = run(*ctl, "remove", cwd=elsewhere)
        assert removed.returncode == 0 and "ready=false" in removed.stdout, removed
        status = run(*ctl, "status", "--json", cwd=elsewhere)
        assert json.loads(status.stdout)["inserted"] is False, status
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert server.returncode == 0 and "Traceback" not in err, err
    assert 'READY reader=1 name="Virtual PCD 00 01"' in out
