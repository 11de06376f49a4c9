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
from mynacard.personalize.profile import with_atr, with_quirks

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
    """Readers 0 and 1 each answer with their own card's data and ATR (quirks and ATR per
    card); `ctl --reader 1` acts on reader 1 alone."""
    control = tmp_path / "control"
    cards = {0: ("default", []), 1: ("heisei-born", [("filler", "0x00")])}
    server = Server(
        control,
        *("--card", f"reader=0,profile=default,state={tmp_path / 's0'}"),
        *(
            "--card",
            f"reader=1,profile=heisei-born,state={tmp_path / 's1'},quirk=filler=0x00,"
            "atr=contactless",
        ),
    )
    atrs = {0: load_profile("default").atr, 1: with_atr(load_profile("default"), "contactless").atr}
    assert atrs[0] != atrs[1]
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
                assert bytes(connection.getATR()) == atrs[reader]
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
mount --bind "$ROOT/reader.conf.d" /etc/reader.conf.d
mount --bind "$ROOT/drivers" /usr/lib/pcsc/drivers/serial
ip link set lo up
"$PYTHON" -m mynacard reader-conf --install
pcscd --foreground >"$ROOT/pcscd.log" 2>&1 &
trap 'kill $!' EXIT
"$PYTHON" - <<'EOF'
import json, os, sys
from pathlib import Path
from smartcard.System import readers
from mynacard.vpcd import reader_names
sys.path.insert(0, os.environ["TESTS"])
from test_ctl import READY, Server
from test_multicard import CARDS, IDENTIFY
from test_vpcd import connect, transmit
root = Path(os.environ["ROOT"])
cards = [f"reader={n},profile={p},state={root / str(n)}" for n, p in CARDS.items()]
server = Server(root / "control", *(a for card in cards for a in ("--card", card)))
ready = sorted(READY.match(server.line("READY")).group(2) for _ in CARDS)
seen = {}
for name in ready:
    connection = connect(name)
    seen[name] = [transmit(connection, command).hex() for command in IDENTIFY]
    connection.disconnect()
server.stop()
print(json.dumps({"names": reader_names(), "readers": [str(r) for r in readers()],
                  "ready": ready, "seen": seen}))
EOF
"""
CARDS = {0: "default", 1: "heisei-born", 2: "no-sign-cert", 3: "reiwa-born"}


@pytest.mark.pcsc
@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("unshare") or not shutil.which("pcscd"),
    reason="needs root, unshare and pcscd",
)
def test_shipped_snippet_adds_readers_2_and_3(tmp_path: Path) -> None:
    """`mynacard reader-conf --install` next to Debian's vpcd file (in a private mount and
    network namespace with its own pcscd): readers 2 and 3 appear under the names mynacard
    expects, and four cards served from one `serve` each answer with their own data (the
    copied driver keeps reader 0 from answering with reader 2's card)."""
    (tmp_path / "reader.conf.d").mkdir()
    shutil.copy("/etc/reader.conf.d/vpcd", tmp_path / "reader.conf.d" / "vpcd")
    shutil.copytree("/usr/lib/pcsc/drivers/serial", tmp_path / "drivers", symlinks=True)
    env = {**os.environ, "ROOT": str(tmp_path), "PYTHON": sys.executable}
    env["TESTS"] = str(REPO_ROOT / "tests")
    result = subprocess.run(
        ["unshare", "-m", "-n", "--propagation", "private", "bash", "-c", SNIPPET_RUN],
        capture_output=True, text=True, timeout=60, env=env, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    log = tmp_path / "pcscd.log"
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    assert result.stdout.startswith("installed /etc/reader.conf.d/mynacard-vpcd and ")
    assert (tmp_path / "drivers" / "libifdvpcd-mynacard.so").stat().st_size > 0
    found = json.loads(result.stdout.splitlines()[-1])
    names = dict(enumerate(found["readers"]))
    assert names == {0: "Virtual PCD 00 00", 1: "Virtual PCD 00 01",
                     2: "Virtual PCD B 00 00", 3: "Virtual PCD B 00 01"}  # fmt: skip
    assert found["names"] == {str(n): name for n, name in names.items()}
    assert found["ready"] == sorted(names.values())
    expected = {
        names[n]: [r.hex() for r in in_process(p, [], tmp_path / f"expected-{n}")]
        for n, p in CARDS.items()
    }
    assert found["seen"] == expected
