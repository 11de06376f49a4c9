"""Several cards from one `mynacard serve` (`--card`), each in its own vpcd reader, told apart
by a PC/SC client; and the shipped reader.conf snippet that adds readers 2 and 3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pcsc import REPO_ROOT, card_present, wait_for_card
from test_ctl import READY, SELECT_AUTH_CERT, Server, ctl_ok
from test_vpcd import SELECT_JPKI, connect, transmit

from mynacard import load_profile, open_card
from mynacard.cli import main
from mynacard.personalize.profile import with_quirks

READ_256 = bytes.fromhex("00B0000000")
IDENTIFY = (SELECT_JPKI, SELECT_AUTH_CERT, READ_256)  # the first 256 bytes of the auth cert


def in_process(profile: str, quirks: list[tuple[str, str]], state: Path) -> list[bytes]:
    """What the card of `profile` with `quirks` answers to IDENTIFY, in process."""
    with open_card(with_quirks(load_profile(profile), quirks), state) as card:
        return [card.transmit(command) for command in IDENTIFY]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--card", "reader=0,colour=red"], "'colour=red' is not KEY=VALUE with KEY one of"),
        (["--card", "profile=default"], "needs reader=N"),
        (["--card", "reader=0", "--card", "reader=0,profile=x"], "reader 0 has a card already"),
        (["--card", "reader=0", "--profile", "default"], "--card describes each card"),
        (["--card", "reader=7"], "vpcd has the readers"),
        (["--card", "reader=0,state=a,state=b"], "state given twice"),
    ],
)
def test_bad_card_options_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.pcsc
def test_two_cards_told_apart(
    pcscd: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Readers 0 and 1 each answer with their own card's data; `ctl --reader 1` acts on
    reader 1 alone."""
    control = tmp_path / "control"
    cards = {0: ("default", []), 1: ("heisei-born", [("filler", "0x00")])}
    server = Server(
        control,
        *("--card", f"reader=0,profile=default,state={tmp_path / 's0'}"),
        *("--card", f"reader=1,profile=heisei-born,state={tmp_path / 's1'},quirk=filler=0x00"),
    )
    try:
        names = {}
        for _ in cards:
            match = READY.match(server.line("READY"))
            assert match is not None
            names[int(match.group(1))] = match.group(2)
        assert names == {0: "Virtual PCD 00 00", 1: "Virtual PCD 00 01"}
        expected = {n: in_process(*card, tmp_path / f"expected-{n}") for n, card in cards.items()}
        assert expected[0] != expected[1]
        for reader, name in names.items():
            connection = connect(name)
            try:
                got = [transmit(connection, command) for command in IDENTIFY]
                assert got == expected[reader]
            finally:
                connection.disconnect()
        ctl_ok(control, "--reader", "1", "remove", capsys=capsys)
        assert wait_for_card(names[1], present=False, timeout=2)
        assert card_present(names[0])  # the other card stays in
        status = json.loads(ctl_ok(control, "--reader", "1", "status", "--json", capsys=capsys))
        assert (status["profile"], status["inserted"]) == ("heisei-born", False)
        ctl_ok(control, "--reader", "1", "insert", capsys=capsys)
        ctl_ok(control, "--reader", "1", "wait-ready", "--timeout", "5", capsys=capsys)
    finally:
        server.stop()


SNIPPET_RUN = r"""
set -e
mount -t tmpfs tmpfs /run/pcscd
mount --bind "$CONF" /etc/reader.conf.d
ip link set lo up
pcscd --foreground >"$CONF/../pcscd.log" 2>&1 &
trap 'kill $!' EXIT
"$PYTHON" - <<'EOF'
import json, os, subprocess, sys
from smartcard.System import readers
from mynacard.vpcd import reader_names
sys.path.insert(0, os.environ["TESTS"])
from test_ctl import READY, SELECT_SIGN_CERT, Server
from test_vpcd import SELECT_JPKI, connect, transmit
from pathlib import Path
tmp = Path(os.environ["CONF"]).parent
server = Server(tmp / "control", "--card", f"reader=2,state={tmp / 's2'}",
                "--card", f"reader=3,profile=no-sign-cert,state={tmp / 's3'}")
ready = sorted(READY.match(server.line("READY")).group(2) for _ in range(2))
seen = {}
for name in ready:
    connection = connect(name)
    seen[name] = [transmit(connection, c).hex() for c in (SELECT_JPKI, SELECT_SIGN_CERT)]
    connection.disconnect()
server.stop()
print(json.dumps({"names": reader_names(), "readers": [str(r) for r in readers()],
                  "ready": ready, "seen": seen}))
EOF
"""


@pytest.mark.pcsc
@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("unshare") or not shutil.which("pcscd"),
    reason="needs root, unshare and pcscd",
)
def test_shipped_snippet_adds_readers_2_and_3(tmp_path: Path) -> None:
    """`mynacard reader-conf` installed next to Debian's vpcd file (in a private mount and
    network namespace with its own pcscd): readers 2 and 3 appear under the names mynacard
    expects, and a card served on each answers with its own data."""
    conf = tmp_path / "reader.conf.d"
    conf.mkdir()
    shutil.copy("/etc/reader.conf.d/vpcd", conf / "vpcd")
    snippet = subprocess.run(
        [sys.executable, "-m", "mynacard", "reader-conf"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    ).stdout  # fmt: skip
    (conf / "mynacard-vpcd").write_text(snippet)
    env = {**os.environ, "CONF": str(conf), "PYTHON": sys.executable}
    env["TESTS"] = str(REPO_ROOT / "tests")
    result = subprocess.run(
        ["unshare", "-m", "-n", "--propagation", "private", "bash", "-c", SNIPPET_RUN],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + (tmp_path / "pcscd.log").read_text()
    found = json.loads(result.stdout.splitlines()[-1])
    names = {"2": "Virtual PCD B 00 00", "3": "Virtual PCD B 00 01"}
    assert {k: v for k, v in found["names"].items() if k in names} == names
    assert found["readers"] == ["Virtual PCD 00 00", "Virtual PCD 00 01", *names.values()]
    assert found["ready"] == list(names.values())
    assert found["seen"] == {names["2"]: ["9000", "9000"], names["3"]: ["9000", "6a82"]}
