"""The conformance bench in process: its model, transcripts, replay, differential mode, CLI
and pytest plugin, run against the emulator through the same interfaces a user has."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mynacard.cli import main as mynacard
from mynacard.conformance.apdu import Apdu, MalformedApdu, select_aid, select_ef, verify
from mynacard.conformance.bench import Bench, Deviation, Divergence
from mynacard.conformance.cli import PROG
from mynacard.conformance.flows import FLOWS, GOLDEN_DIR, write_golden
from mynacard.conformance.model import CardFacts, CardModel
from mynacard.conformance.profile import read_profile
from mynacard.conformance.replay import replay
from mynacard.conformance.report import write_report
from mynacard.conformance.runner import RunConfig, make_link, run, run_bench
from mynacard.conformance.spec import CATALOGUE, COMMON, JPKI
from mynacard.conformance.targets import (
    EmulatorTarget,
    RecordingTarget,
    Target,
    TargetError,
    TargetLayer,
    TranscriptTarget,
)
from mynacard.conformance.transcript import (
    Pattern,
    Recorder,
    TranscriptError,
    load,
    parse,
    parse_line,
)

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "conformance"


# -- the model is written from the spec, not from the emulator -------------------------------


def imported_modules(path: Path, package: str = "mynacard.conformance") -> set[str]:
    """The absolute names of the modules `path` imports, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            prefix = ".".join(base) if node.level else ""
            module = ".".join(part for part in (prefix, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def is_card_module(name: str) -> bool:
    return name.startswith("mynacard") and not name.startswith("mynacard.conformance")


def test_only_the_target_module_imports_the_card() -> None:
    """The bench reaches the card through its targets; the user fixture serves one."""
    importers = {
        path.name
        for path in CONFORMANCE.glob("*.py")
        if any(is_card_module(name) for name in imported_modules(path))
    }
    assert importers == {"targets.py", "fixture.py"}


@pytest.mark.parametrize(
    "source",
    ["from mynacard.card import Card", "from mynacard import open_card", "from .. import card"],
)
def test_import_check_sees_a_card_import(tmp_path: Path, source: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f"def f():\n    {source}\n")
    assert any(is_card_module(name) for name in imported_modules(probe))


def test_the_card_never_imports_the_bench() -> None:
    """Only the command line, above both, offers the bench."""
    card_dir = CONFORMANCE.parent / "emulator"
    importers = {
        str(path.relative_to(card_dir))
        for path in card_dir.rglob("*.py")
        for package in ["mynacard." + ".".join(path.relative_to(card_dir).parent.parts)]
        if any(
            name.startswith("mynacard.conformance")
            for name in imported_modules(path, package.rstrip("."))
        )
    }
    assert importers == {"cli.py"}


# -- transcripts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "response", "matches"),
    [
        ("9000", "9000", True),
        ("63C.", "63C2", True),
        ("63C.", "6984", False),
        ("3082 [2] 9000", "308206329000", True),
        ("3082 [2] 9000", "30820632009000", False),
        ("[1-3] 9000 | 6B00", "6B00", True),
        ("[1-3] 9000 | 6B00", "AABBCCDD9000", False),
        ("[*] 9000", "9000", True),
        ("6...", "6A82", True),
        ("6...", "9000", False),
        # plain hex alternatives are compared as bytes, without a regular expression
        ("9000 | 6A82", "6A82", True),
        ("9000 | 6A82", "6A83", False),
        ("30 82 9000", "30829000", True),
        ("3082 9000", "3082", False),
        ("6a82", "6A82", True),
        ("9000 | 63C.", "63C1", True),
    ],
)
def test_response_patterns(pattern: str, response: str, matches: bool) -> None:
    assert Pattern(pattern).matches(bytes.fromhex(response)) is matches


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("00A4040C", "expected 'COMMAND -> RESPONSE'"),
        ("00A4 -> 9000", "at least 4 bytes"),
        ("XYZ -> 9000", "command is not hex"),
        ("00A4040C -> 90 0", "odd hex digits"),
        ("00A4040C -> 90Q0", "bad response pattern"),
    ],
)
def test_bad_transcript_lines_get_precise_errors(line: str, problem: str) -> None:
    with pytest.raises(TranscriptError, match=problem):
        parse_line(line, 7)


def test_transcript_round_trips_through_text() -> None:
    text = "# c\nRESET -> 3B [*]\n00A4040C0AD392F000260100000001 -> 9000  # select\n"
    exchanges = parse(text)
    assert [e.format() for e in exchanges] == [
        "RESET -> 3B [*]",
        "00A4040C0AD392F000260100000001 -> 9000  # select",
    ]


def test_apdu_parser_is_independent_and_strict() -> None:
    assert Apdu.parse(bytes.fromhex("00B0000000")).le == 256
    extended = Apdu.parse(bytes.fromhex("00B08A00000000"))
    assert (extended.p1, extended.le, extended.extended) == (0x8A, 65536, True)
    with pytest.raises(MalformedApdu):
        Apdu.parse(bytes.fromhex("00A4040C05D392"))


# -- the model on its own -------------------------------------------------------------------


def test_model_predicts_the_spec_answers_of_a_fresh_card() -> None:
    facts = CardFacts.from_profile(read_profile("default"))
    model = CardModel(facts, fresh=True)

    def answer(command: bytes, response: bytes) -> str:
        expectation = model.expect(command)
        if expectation.effect is not None:
            expectation.effect(response)
        return str(expectation.pattern)

    assert answer(select_ef(0x000A), b"") == "6A82"  # no application selected
    assert answer(select_aid(JPKI.aid[:9], 0x00), b"\x90\x00").startswith(
        "6F0C840AD392F000260100000001"
    )
    assert answer(select_ef(0x0001), b"\x90\x00") == "9000"
    assert answer(bytes.fromhex("00B0000004"), b"") == "6982"  # sign cert needs 001B
    assert answer(verify(b"", 0x9B), b"\x63\xc5") == "63C5"
    assert answer(verify(b"WRONG1", 0x9B), b"\x63\xc4") == "63C4"
    assert answer(verify(b"", 0x9B), b"") == "63C4"
    assert answer(bytes.fromhex("0020008000"), b"") == "6986"  # current EF is no PIN
    assert answer(select_ef(0x001B), b"\x90\x00") == "9000"
    assert answer(bytes.fromhex("0020008000"), b"") == "6700"  # docs/decisions.md #6
    assert answer(bytes.fromhex("00B0000001"), b"") == "6981"  # a PIN is not readable
    assert answer(select_ef(0x000A), b"\x90\x00") == "9000"
    assert answer(bytes.fromhex("00B00EE001"), b"") == "6B00"  # offset = size
    assert answer(bytes.fromhex("802A06800100"), b"") == "6A86"  # P1 > 05
    assert answer(bytes.fromhex("00840000000100"), b"") == "6985"  # extended GET CHALLENGE
    assert answer(bytes.fromhex("00E20000"), b"") == "6..."  # nothing writable


@pytest.mark.parametrize(
    ("cla", "answers"),
    [
        (0x01, "6881"), (0x44, "6881"), (0x7F, "6881"),  # logical channels
        (0x0C, "6882"), (0x10, "6884"), (0x14, "6882"),  # SM (SELECT), chaining, both
        (0x20, "6E00"), (0x21, "6E00"), (0x2C, "6E00"), (0x3F, "6E00"),  # reserved (RFU)
        (0x81, "6E00 | 6881"), (0x90, "6E00 | 6884"), (0xA0, "6E00"), (0xFF, "6E00"),
    ],
)  # fmt: skip
def test_model_answers_each_class_as_iso_7816_4_reads_it(cla: int, answers: str) -> None:
    """docs/decisions.md #19-#20 and ISO 7816-4 §5.4.1: 20-3F is no class (6E00)."""
    model = CardModel(CardFacts.from_profile(read_profile("default")), fresh=True)
    assert str(model.expect(bytes((cla, 0xA4, 0x04, 0x0C)) + b"\x01\xd3").pattern) == answers


def test_model_and_emulator_agree_on_every_class() -> None:
    model = CardModel(CardFacts.from_profile(read_profile("default")), fresh=True)
    card = EmulatorTarget("default")
    try:
        for cla in range(0x100):
            for ins in (0xA4, 0xB0, 0x20, 0x2A):
                command = bytes((cla, ins, 0x00, 0x00))
                assert model.expect(command).problem(card.transmit(command)) is None, command
    finally:
        card.close()


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("00DC0114", "6700"),  # UPDATE RECORD of the counter, no data: lengths before access
        ("00DC011C0400000001", "6982"),  # the record EF (EF 0003 current): access
        ("00DC010C0400000001", "6981"),  # by SFI 1, a transparent EF: made current anyway
        ("00DC011C0400000001 00DC010C0400000001 00B0000004", "01053031 9000"),  # ... so READ
        # BINARY of the current EF reads EF 0001, not EF 0003
        ("003005140101", "6982"),  # DECREASE record 5 without the key: access before 6A83
        ("00B2091400", "6A83"),  # READ RECORD 9 of the counter EF
        ("00E2001C0101", "6A86"),  # APPEND RECORD with P2 mode 04
    ],
)
def test_record_commands_check_in_the_card_s_order(command: str, answer: str) -> None:
    """The model's one record preamble (EF, made current; structure; lengths; access; record
    number) gives the emulator's status word where several checks fail at once."""
    model = CardModel(CardFacts.from_profile(read_profile("taxi-tickets")), fresh=True)
    card = EmulatorTarget("taxi-tickets")
    try:
        for step in ["00A4040C07F0544158490001", *command.split()]:
            sent = bytes.fromhex(step)
            expectation, response = model.expect(sent), card.transmit(sent)
            assert expectation.problem(response) is None, step
            if expectation.effect is not None:
                expectation.effect(response)
        assert str(expectation.pattern) == answer
    finally:
        card.close()


def test_every_national_application_is_in_the_model() -> None:
    names = {app.aid.hex().upper() for app in CATALOGUE}
    assert names == {
        "D392F000260100000001",
        "D3921000310001010408",
        "D3921000310001010402",
        "D3921000310001010401",
        "D3921000310001010100",
    }


# -- runs against the emulator --------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "no-sign-cert", "sign-blocked", None])
def test_emulator_conforms_within_the_default_budget(profile: str | None) -> None:
    """The default run (200 examples, up to 40 rules each), with a profile's exact data or
    (None) learning the card's data from the card; the four make the CI's 20,000+ steps."""
    result = run(RunConfig(target="emulator", profile=profile, seed=11))
    assert result.conformant, [str(d) for d in result.deviations]
    stats = result.stats
    assert stats.examples >= 200 and stats.rule_steps >= 5000
    for app in CATALOGUE:
        assert stats.section(app.section).steps > 0, app.name
    print(f"\n{profile}: {stats.rule_steps} steps, {stats.steps_per_second:.0f} steps/s")


@pytest.mark.parametrize("profile", ["library-card", "taxi-tickets", "building-entry"])
def test_free_area_applications_are_surveyed_and_checked(profile: str) -> None:
    """Profiles with free-area applications: the model reads them from the profile (AIDs,
    files, read rules, PINs) and checks reads, VERIFY, CHANGE and INTERNAL AUTHENTICATE."""
    result = run(RunConfig(target="emulator", profile=profile, max_examples=100, seed=5))
    assert result.conformant, [str(d) for d in result.deviations]
    assert "free area: " in result.capabilities["applications"]
    assert result.stats.section("§10 free area").steps > 10


QUIRKS = [
    "blocked_sw = 0x6983",
    "reselect_clears_state = true",
    "verified_query_sw = 0x9000",
    "filler = 0x00",
    "extended_length = false",
    "t0_chaining = true",
]


def quirk_profile(directory: Path, quirk: str) -> Path:
    """The default profile with one [quirks] switch turned (docs/decisions.md)."""
    name = quirk.split(" = ")[0]
    text = (REPO / "profiles" / "default.toml").read_text(encoding="utf-8")
    text = re.sub(rf"(?m)^#? ?{name} = .*$", quirk, text)
    path = directory / f"{name}.toml"
    path.write_text(text.replace('name = "default"', f'name = "quirk-{name}"'), encoding="utf-8")
    return path


@pytest.mark.parametrize("quirk", QUIRKS)
def test_model_honours_each_quirk(tmp_path: Path, quirk: str) -> None:
    profile = str(quirk_profile(tmp_path, quirk))
    result = run(RunConfig(target="emulator", profile=profile, max_examples=60, seed=8))
    assert result.conformant, [str(d) for d in result.deviations]


def test_a_quirk_the_card_does_not_have_is_a_deviation(tmp_path: Path) -> None:
    """The model takes blocked_sw from the profile: told 6983, a 6984 card fails."""
    told = read_profile(str(quirk_profile(tmp_path, "blocked_sw = 0x6983")))
    target = EmulatorTarget("default")
    try:
        result = run_bench(Bench(make_link(target, told, {}, 0)), RunConfig(seed=1))
    finally:
        target.close()
    # The first blocked PIN the bench meets answers it (VERIFY: 6983; CHANGE: 6983 | 6982).
    [deviation] = result.deviations
    assert deviation.message.startswith("expected 6983") and deviation.message.endswith("got 6984")


def test_snapshot_state_is_where_every_example_starts(tmp_path: Path) -> None:
    """EmulatorTarget(initial_state=...) starts each example from a copied state directory."""
    from mynacard import open_card

    snapshot = tmp_path / "snapshot"
    with open_card("default", snapshot) as card:
        card.transmit(select_aid(JPKI.aid))
        card.transmit(select_ef(0x0018))
        assert card.transmit(verify(b"0000")) == b"\x63\xc2"
    target = EmulatorTarget("default", initial_state=snapshot)
    try:
        for _ in range(2):
            target.fresh()
            target.transmit(select_aid(JPKI.aid))
            target.transmit(select_ef(0x0018))
            assert target.transmit(verify(b"")) == b"\x63\xc2"
            target.transmit(verify(b"0000"))
    finally:
        target.close()


# -- transcripts: golden flows, record and replay ----------------------------------------------


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_golden_transcript_replays_on_the_emulator(flow: str) -> None:
    target = EmulatorTarget("default")
    try:
        result = replay(load(GOLDEN_DIR / f"{flow}.apdu"), target)
    finally:
        target.close()
    assert result.ok, result.problem
    assert result.total > 5


def test_golden_transcripts_are_what_the_flows_record_now(tmp_path: Path) -> None:
    target = EmulatorTarget("default")
    try:
        written = write_golden(tmp_path, target)
    finally:
        target.close()
    for path in written:
        assert path.read_text() == (GOLDEN_DIR / path.name).read_text(), path.name


def test_golden_transcript_fails_on_another_card_where_it_must() -> None:
    """The masks keep what every conformant card answers: a card blocked in the sign PIN
    fails the OpenSC flow at its sign-password VERIFY."""
    target = EmulatorTarget("sign-blocked")
    try:
        result = replay(load(GOLDEN_DIR / "opensc.apdu"), target)
    finally:
        target.close()
    assert not result.ok
    assert "expected 63C5" in result.problem or "expected 9000" in result.problem


def test_recorded_traffic_replays_through_a_transcript_target() -> None:
    recorder = Recorder()
    recording = RecordingTarget(EmulatorTarget("default"), recorder)
    try:
        flow = replay(load(GOLDEN_DIR / "myna.apdu"), recording)
    finally:
        recording.close()
    assert flow.ok
    assert all("[" not in e.expected.text for e in recorder)  # exact responses
    assert replay(recorder.exchanges, TranscriptTarget(recorder.exchanges)).ok
    other = TranscriptTarget(recorder.exchanges)
    with pytest.raises(TargetError, match="recorded"):
        other.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))


# -- differential mode ------------------------------------------------------------------------


class AnswersSixNineEightThree(TargetLayer):
    """A card that answers 6983 where the emulator says 6984 (blocked key)."""

    def __init__(self, inner: Target) -> None:
        super().__init__(inner)
        self.name = "6983 card"

    def transmit(self, command: bytes) -> bytes:
        answer = self.inner.transmit(command)
        return answer[:-2] + b"\x69\x83" if answer[-2:] == b"\x69\x84" else answer


def test_differential_mode_reports_the_first_difference() -> None:
    profile = read_profile("default")
    first, second = EmulatorTarget("default"), AnswersSixNineEightThree(EmulatorTarget("default"))
    bench = Bench(make_link(first, profile, {}, 0), make_link(second, profile, {}, 0))
    try:
        result = run_bench(bench, RunConfig(seed=3))
    finally:
        first.close()
        second.close()
    assert result.deviations
    divergence = result.deviations[0]
    assert isinstance(divergence, Divergence)
    assert "6984 vs 6983" in divergence.message
    last = divergence.transcript[-1]
    assert "6983" in last.note and last.expected.matches(b"\x69\x84")


def test_differential_mode_between_two_emulators_finds_nothing() -> None:
    result = run(RunConfig(profile="default", differential="emulator", max_examples=40, seed=5))
    assert result.conformant and len(result.targets) == 2


class InternalAuthenticateKeySignsPkcs1(TargetLayer):
    """Signs 80 2A P1 04 with the 共通 AP's card key as PKCS#1 v1.5 (P1 03's scheme)."""

    def transmit(self, command: bytes) -> bytes:
        if command[:4] == bytes.fromhex("802A0499"):
            command = bytes.fromhex("802A0399") + command[4:]
        return self.inner.transmit(command)


SIGN_WITH_THE_COMMON_CARD_KEY = [
    Apdu(0x80, 0x2A, p1, 0x80 | 0x19, data, le=256).encode()
    for p1, data in ((0x04, bytes(32)), (0x05, b"message"), (0x03, b"message"), (0x00, b"\x01"))
]


def test_internal_authenticate_key_signing_is_checked_not_compared() -> None:
    """80 2A with a key made for INTERNAL AUTHENTICATE (the 共通 AP's card key): whether a
    card signs is open, so two cards need not agree byte for byte (PSS is randomised: two
    emulators differ), but a signature must be exactly P1's scheme."""
    profile = read_profile("default")
    first, second = EmulatorTarget("default"), EmulatorTarget("default")
    wrong = InternalAuthenticateKeySignsPkcs1(EmulatorTarget("default"))
    try:
        bench = Bench(make_link(first, profile, {}, 0), make_link(second, profile, {}, 0))
        bench.begin_example()
        bench.exchange(select_aid(COMMON.aid))
        for command in SIGN_WITH_THE_COMMON_CARD_KEY:
            assert bench.exchange(command)[-2:] == b"\x90\x00"
        bench = Bench(make_link(wrong, profile, {}, 0))
        bench.begin_example()
        bench.exchange(select_aid(COMMON.aid))
        with pytest.raises(Deviation, match="P1 04: not an RSASSA-PSS signature"):
            bench.exchange(SIGN_WITH_THE_COMMON_CARD_KEY[0])
    finally:
        for target in (first, second, wrong):
            target.close()


# -- CLI and reports -----------------------------------------------------------------------


def test_cli_conformance_writes_junit_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = mynacard(
        ["conformance", "--profile", "default", "--max-examples", "20", "--seed", "1",
         "--report", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0 and "conformant" in out and "steps/s" in out
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "0"
    names = [case.get("name") for case in suite.iter("testcase")]
    assert "§7 PINs" in names and "§3 JPKI-AP" in names
    assert "extended length" in (tmp_path / "report.html").read_text()


def test_cli_replay_of_a_golden_transcript(capsys: pytest.CaptureFixture[str]) -> None:
    status = mynacard(["replay", str(GOLDEN_DIR / "jsa.apdu"), "--profile", "default"])
    assert status == 0 and "all 8 exchanges matched" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["conformance", "--target", "floppy"], "unknown target 'floppy'"),
        (["conformance", "--profile", "nonexistent-profile"], "shipped: building-entry, default"),
        (["conformance", "--profile", "smartphone-ios"], "models the plastic card only"),
        (["replay", "/nonexistent.apdu"], "/nonexistent.apdu: cannot read: No such file"),
    ],
)
def test_cli_user_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mynacard(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{PROG}: ") and message in err


def test_cli_rejects_a_malformed_pin_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        mynacard(["conformance", "--pin", "auth"])
    assert exit_info.value.code == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_report_lists_failures_with_replayable_transcripts(tmp_path: Path) -> None:
    profile = read_profile("default")
    target = AnswersSixNineEightThree(EmulatorTarget("default"))
    try:
        result = run_bench(Bench(make_link(target, profile, {}, 0)), RunConfig(seed=2))
    finally:
        target.close()
    assert not result.conformant
    written = write_report(result, tmp_path)
    failure = load(written[2])
    assert failure and failure[-1].expected.matches(b"\x69\x84")
    assert "NOT conformant" in written[1].read_text()
    status = mynacard(["replay", str(written[2]), "--profile", "default"])
    assert status == 0  # the minimal transcript passes on the real emulator


# -- the pytest plugin ---------------------------------------------------------------------


def test_pytest_plugin_runs_the_suite_with_card_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--card-target", "emulator", "--card-profile", "default", "--card-max-examples", "15",
         "--card-seed", "4", "--junitxml", str(tmp_path / "j.xml")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [
        c.get("name", "") for c in ElementTree.parse(tmp_path / "j.xml").getroot().iter("testcase")
    ]
    assert "test_golden_client_flow[opensc]" in cases
    assert any(name.startswith("test_spec_section[") for name in cases)


@pytest.mark.slow
def test_soak_in_process() -> None:
    """A long run (opt in with -m slow, or tox -e soak): thousands of examples."""
    result = run(RunConfig(profile="default", max_examples=3000, steps=60))
    assert result.conformant, [str(d) for d in result.deviations]
    print(f"\nsoak: {result.stats.rule_steps} steps, {result.stats.steps_per_second:.0f} steps/s")
