"""`mynacard conformance`, `mynacard replay` and `mynacard learn` (registered by
emulator/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .fleet import DatabaseError, example_database
from .profile import PROFILES_DIR, ProfileProblem, read_profile
from .spec import PIN_NAMES
from .targets import TargetError, open_target
from .transcript import TranscriptError, save

PROG = "mynacard"


def _pin(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number 0 or more, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number 1 or more, got {text!r}")
    return value


def _card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default="emulator",
        help="emulator (in process), pcsc, pcsc:READER, transcript:FILE or python:MODULE:FACTORY "
        "(default emulator)",
    )
    parser.add_argument(
        "--profile",
        help="profile name or file: the model expects its exact data and knows its PINs",
    )
    parser.add_argument(
        "--pin",
        type=_pin,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a correct PIN ({', '.join(PIN_NAMES)}); repeatable",
    )
    parser.add_argument(
        "--pin-budget",
        type=_count,
        default=0,
        metavar="N",
        help="wrong tries allowed per PIN on a target that is not disposable (default 0)",
    )
    parser.add_argument("--record", metavar="FILE", help="write the raw traffic as a transcript")


def register(sub: Any) -> None:
    """Add the `conformance` and `replay` subcommands to mynacard's subparsers."""
    conformance = sub.add_parser(
        "conformance", help="property-based conformance run against a card (exit 0: conformant)"
    )
    _card_options(conformance)
    conformance.add_argument("--max-examples", type=_positive, default=None, metavar="N")
    conformance.add_argument(
        "--steps", type=_positive, default=None, metavar="N", help="steps (actions) per example"
    )
    conformance.add_argument(
        "--seed", type=int, metavar="S", help="hypothesis seed (default: a new one, printed)"
    )
    conformance.add_argument("--report", metavar="DIR", help="write junit.xml and report.html")
    conformance.add_argument(
        "--differential", metavar="TARGET", help="also drive TARGET and report the first difference"
    )
    conformance.add_argument(
        "--database",
        metavar="URL",
        help="example database shared by a fleet: redis://HOST:PORT[/DB] or a folder",
    )
    conformance.set_defaults(func=cmd_conformance)

    replay = sub.add_parser(
        "replay",
        help="re-run a transcript or a trace against a target, or send a scriptor script",
    )
    replay.add_argument(
        "file", metavar="FILE", help="a transcript, a `serve --trace` file or a scriptor script"
    )
    _card_options(replay)
    replay.add_argument(
        "--reader", metavar="NAME", help="the reader whose exchanges to take from a trace"
    )
    replay.add_argument(
        "--convert",
        action="store_true",
        help="print FILE as a transcript (to edit, e.g. into wildcards) instead of running it",
    )
    replay.set_defaults(func=cmd_replay)

    from .learn.cli import register as register_learn  # `mynacard learn` (docs/learning.md)

    register_learn(sub, _card_options)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _internal(error: BaseException, command: str) -> int:
    """Exit 3 for an error of the bench itself (hypothesis reporting a broken machine): one
    line, and what to send with a report, not a traceback."""
    from importlib.metadata import version  # the bench never imports the card's package

    what = (str(error).strip().splitlines() or [""])[0]
    print(f"{PROG}: internal error in the bench ({type(error).__name__}: {what})", file=sys.stderr)
    print(
        f"{PROG}: a bug in mynacard {version('mynacard')}, not in the card; please report it with "
        f"the command that shows it: {command}",
        file=sys.stderr,
    )
    return 3


def _check_pins(pins: list[tuple[str, str]]) -> None:
    for name, _ in pins:
        if name not in PIN_NAMES:
            raise ProfileProblem(
                f"--pin: no PIN named {name!r} (PIN names: {', '.join(PIN_NAMES)})"
            )


def _check_profile(name_or_path: str | None) -> None:
    """An unknown shipped name is an error listing the shipped ones (as `serve` says)."""
    if name_or_path is None or "/" in name_or_path or name_or_path.endswith(".toml"):
        return
    if not (PROFILES_DIR / f"{name_or_path}.toml").is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ProfileProblem(f"no shipped profile named {name_or_path!r} (shipped: {shipped})")


def _report_dir(text: str | None) -> Path | None:
    """The --report directory, made now: an unusable one is an error before the run."""
    if text is None:
        return None
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mynacard-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ProfileProblem(
            f"--report {text}: not a directory that can be written ({error.strerror or error})"
        ) from None
    return path


def _pins(args: argparse.Namespace) -> dict[str, str]:
    pins = dict(args.pin)
    if args.profile:
        pins = {**read_profile(args.profile).pins, **pins}
    return pins


def cmd_conformance(args: argparse.Namespace) -> int:
    from hypothesis.errors import HypothesisException

    from .report import (
        conformance_command,
        failure_text,
        quirk_lines,
        reproduce_command,
        speed_lines,
        write_report,
    )
    from .runner import (
        DEFAULT_MAX_EXAMPLES,
        DEFAULT_STEPS,
        TRANSPORT,
        RunConfig,
        choose_seed,
        run,
    )

    try:
        _check_pins(args.pin)
        _check_profile(args.profile)
        report = _report_dir(args.report)
        example_database(args.database)  # reachable now, not after the survey
    except (ProfileProblem, DatabaseError) as error:
        return _fail(str(error))
    config = RunConfig(
        target=args.target,
        profile=args.profile,
        pins=dict(args.pin),
        max_examples=args.max_examples or DEFAULT_MAX_EXAMPLES,
        steps=args.steps or DEFAULT_STEPS,
        seed=args.seed if args.seed is not None else choose_seed(),
        pin_budget=args.pin_budget,
        differential=args.differential,
        record=Path(args.record) if args.record else None,
        progress=True,
        database=args.database,
    )
    chosen = "" if args.seed is not None else " (chosen for this run; --seed repeats it)"
    print(f"seed: {config.seed}{chosen}", flush=True)
    try:
        result = run(config)
    except (TargetError, ProfileProblem, TranscriptError, ValueError) as error:
        return _fail(str(error))
    except HypothesisException as error:
        return _internal(error, conformance_command(config))
    except KeyboardInterrupt:
        print(f"interrupted; to run it again: {conformance_command(config)}", file=sys.stderr)
        raise
    print(f"targets: {', '.join(result.targets)}")
    for name, value in result.capabilities.items():
        print(f"{name}: {value}")
    print("quirks: " + ", ".join(quirk_lines(result)))
    for line in speed_lines(result):
        print(line)
    if result.recorded is not None and config.record is not None:
        save(config.record, result.recorded.exchanges, [f"recorded from {result.targets[0]}"])
    written = write_report(result, report) if report is not None else []
    for number, deviation in enumerate(result.deviations):
        print()
        print(failure_text(result, deviation), end="")
        print(f"replay: {reproduce_command(result, number, report)}")
    if written:
        print()
    for path in written:
        print(f"wrote {path}")
    if result.target_failed:
        failed = next(d for d in result.deviations if d.section == TRANSPORT)
        return _fail(f"the target failed: {failed.message}")
    print(
        "conformant"
        if result.conformant
        else f"NOT conformant: {len(result.deviations)} deviation(s)"
    )
    return 0 if result.conformant else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay
    from .traces import read_replay_input
    from .transcript import Recorder, format_transcript

    try:
        replayed = read_replay_input(Path(args.file), args.reader)
        if args.convert:
            print(format_transcript(replayed.exchanges, [f"{replayed.kind} {args.file}"]), end="")
            return 0
        _check_pins(args.pin)
        _check_profile(args.profile)
        pins = _pins(args)
        target = open_target(args.target, args.profile)
    except (TargetError, ProfileProblem, TranscriptError) as error:
        return _fail(str(error))
    script = replayed.kind == "script"
    recorder = Recorder() if args.record or script else None
    exchanges = replayed.exchanges
    try:
        result = replay(exchanges, target, pins=pins, budget=args.pin_budget, recorder=recorder)
    except TargetError as error:
        return _fail(str(error))
    finally:
        target.close()
    if args.record and recorder is not None:
        save(Path(args.record), recorder.exchanges, [f"replay of {args.file} on {args.target}"])
    if script and recorder is not None:
        for sent, answered in zip(exchanges, recorder.exchanges, strict=False):
            print(f"> {sent.command.hex(' ').upper() if sent.command else 'reset'}")
            print(f"< {_spaced(answered.expected.text)}")
        if not result.ok:
            return _fail(f"{args.file}: command {result.line}: {result.problem}")
        return 0
    if result.ok:
        print(f"{args.file}: all {result.total} exchanges matched on {target.name}")
        return 0
    print(f"{args.file}: exchange {result.line} of {result.total}: {result.problem}")
    return 1


def _spaced(exact: str) -> str:
    """An exact response pattern ("9000", "[0]" for nothing) as spaced hex bytes."""
    return bytes.fromhex(exact.removeprefix("[0]")).hex(" ").upper()
