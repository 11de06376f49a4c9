"""`mynacard learn`: the learned and the expected machine of one application, compared."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..guard import GuardRefusal
from ..profile import ProfileProblem
from ..targets import RecordingTarget, Target, TargetError, open_target
from ..transcript import Recorder, save
from .alphabet import AlphabetError


def register(sub: Any, card_options: Any) -> None:
    """Add `learn` to mynacard's subparsers (`card_options` adds --target, --profile, ...)."""
    parser = sub.add_parser(
        "learn", help="learn an application's state machine and compare it with the model"
    )
    card_options(parser)
    parser.add_argument(
        "--app",
        required=True,
        metavar="APP",
        help="jpki, text, visual, juki, common or free:NAME (a profile's free-area application)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the results")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the equivalence oracle's walks"
    )
    parser.set_defaults(func=cmd_learn)


def _fail(message: str) -> int:
    print(f"mynacard: {message}", file=sys.stderr)
    return 2


def _replay_command(args: argparse.Namespace, transcript: Path) -> str:
    """The `mynacard replay` of a difference's transcript on the same card; PINs hidden."""
    from ..report import HIDDEN

    words = ["mynacard", "replay", str(transcript), "--target", args.target]
    words += ["--profile", args.profile] if args.profile else []
    words += ["--pin-budget", str(args.pin_budget)] if args.pin_budget else []
    hidden = [f"--pin {shlex.quote(name)}={HIDDEN}" for name, _ in args.pin]
    return " ".join([shlex.join(words), *hidden])


def cmd_learn(args: argparse.Namespace) -> int:
    try:
        from .mapper import LearnError
        from .render import RenderError
        from .session import card_port, figures, plan, run, write
    except ImportError as error:
        return _fail(f"learning needs AALpy: install mynacard[learn] ({error})")

    pins = dict(args.pin)
    profile = args.profile or ("default" if args.target == "emulator" else None)
    try:
        target: Target = open_target(args.target, profile)
    except (TargetError, ProfileProblem) as error:
        return _fail(str(error))
    recorder = Recorder() if args.record else None
    if recorder is not None:
        target = RecordingTarget(target, recorder)
    try:
        chosen = plan(args.app, profile, pins, restore=not target.disposable)
        port = card_port(target, chosen, args.pin_budget)
        outcome = run(port, chosen, seed=args.seed)
        title = f"{chosen.app.name} on {target.name}"
        lines = [
            figures(f"learned ({target.name})", outcome.learned, outcome.exchanges),
            figures("expected (reference model)", outcome.expected),
        ]
        if outcome.wrong_tries is not None:
            lines.append(f"wrong PINs sent through the PIN guard: {outcome.wrong_tries}")
        written = write(Path(args.out), chosen, outcome, title, lines)
    except (AlphabetError, ProfileProblem, LearnError, RenderError) as error:
        return _fail(str(error))
    except (GuardRefusal, TargetError) as error:
        return _fail(f"the target failed: {error}")
    finally:
        target.close()
    if recorder is not None:
        save(Path(args.record), recorder.exchanges, [f"learning {args.app} on {args.target}"])
    for line in lines:
        print(line)
    comparison = outcome.comparison
    transcripts = [path for path in written if path.suffix == ".apdu"]
    for number, (difference, path) in enumerate(
        zip(comparison.differences, transcripts, strict=True), 1
    ):
        print(
            f"difference {number}: after {' · '.join(difference.inputs[:-1]) or 'power-on'}, "
            f"{difference.letter!r} answered {difference.learned}, "
            f"expected {difference.expected}"
        )
        print(f"  replay: {_replay_command(args, path)}")
    for kind, found in (("learned", comparison.split), ("expected", comparison.merged)):
        for state, other in sorted(found.items()):
            print(f"{kind} state {state} stands for {', '.join(sorted(other))}")
    for path in written:
        print(f"wrote {path}")
    print("the same machine" if comparison.equal else "the machines differ")
    return 0 if comparison.equal else 1
