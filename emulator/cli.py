"""The ``mynacard`` command: serve a card to pcscd, inspect profiles, manage card state, and
(from the bench) check a card's conformance.

Exit codes: 0 success or conformant; 1 not conformant (or a replay that does not match);
2 a usage or environment error, printed as one line; 3 an internal error (a bug in mynacard,
printed with its traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .control import control_dir
from .served import CardSpec, ServedCard
from .vpcd import VPCD_HOST, configured_readers, reader_port

PROG = "mynacard"
EXIT_OK, EXIT_NOT_CONFORMANT, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UserError(Exception):
    """A mistake the user can fix; printed as one line, without a traceback."""


def default_state_dir(profile_name: str) -> Path:
    """``$XDG_STATE_HOME/mynacard/<profile>``, by default ``~/.local/state/mynacard/<profile>``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / PROG / profile_name


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6)."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--vpcd expects HOST:PORT (e.g. 127.0.0.1:35963), got {text!r}")
    return host, int(port_text)


# -- serve ----------------------------------------------------------------------------------


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _counter(text: str) -> tuple[str, int]:
    name, value = _assignment(text)
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=N with N a number, got {text!r}")
    return name, int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


CARD_KEYS = ("reader", "profile", "state", "quirk", "atr", "fault", "trace")


def parse_card(text: str) -> dict[str, list[str]]:
    """``--card reader=0,profile=default,state=DIR,quirk=NAME=VALUE,atr=NAME,fault=FILE,trace=FILE``
    as key -> values (`quirk` may repeat)."""
    card: dict[str, list[str]] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in CARD_KEYS or not value:
            raise UserError(
                f"--card {text!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(CARD_KEYS)}"
            )
        if key in card and key != "quirk":
            raise UserError(f"--card {text!r}: {key} given twice")
        card.setdefault(key, []).append(value)
    if "reader" not in card or not card["reader"][0].isdigit():
        raise UserError(f"--card {text!r}: needs reader=N (a vpcd reader number)")
    return card


def _card_specs(args: argparse.Namespace) -> list[CardSpec]:
    """One CardSpec per --card, or the one card of the single-card options."""
    common = {
        "trace_format": args.trace_format,
        "trace_secrets": args.trace_secrets,
        "verbose": args.verbose,
        "frame_timeout": args.frame_timeout,
    }
    readers = configured_readers()
    if not args.card:
        if args.vpcd is None and args.reader not in readers:
            raise UserError(
                f"--reader {args.reader}: vpcd has the readers {', '.join(map(str, readers))} "
                "here (/etc/reader.conf.d; --vpcd HOST:PORT names any other port)"
            )
        host, port = parse_hostport(args.vpcd) if args.vpcd else (VPCD_HOST, None)
        return [
            _spec(args.profile or "default", args.state, args.reader, args.quirk, args.fault,
                  args.trace, host=host, port=port, atr=args.atr, **common)
        ]  # fmt: skip
    single = ("profile", "state", "vpcd", "fault", "trace", "quirk", "atr")
    if any(getattr(args, name) for name in single) or args.reader != 0:
        raise UserError(
            "--card describes each card: put profile=, state=, quirk=, atr=, fault=, trace= in "
            "it instead of --profile, --state, --quirk, --atr, --fault, --trace, --reader, --vpcd"
        )
    specs: list[CardSpec] = []
    for text in args.card:
        card = parse_card(text)
        reader = int(card["reader"][0])
        if reader not in readers:
            raise UserError(
                f"--card {text!r}: vpcd has the readers {', '.join(map(str, readers))} here "
                "(more: docs/control.md, installing the reader.conf snippet)"
            )
        if any(spec.reader == reader for spec in specs):
            raise UserError(f"--card {text!r}: reader {reader} has a card already")
        quirks = [_assignment(q) for q in card.get("quirk", [])]
        specs.append(
            _spec(card.get("profile", ["default"])[0], card.get("state", [None])[0], reader,
                  quirks, card.get("fault", [None])[0], card.get("trace", [None])[0],
                  atr=card.get("atr", [None])[0], **common)
        )  # fmt: skip
    return specs


def _spec(
    profile: str,
    state: str | None,
    reader: int,
    quirks: list[tuple[str, str]],
    fault: str | None,
    trace: str | None,
    **options: Any,
) -> CardSpec:
    from .personalize.profile import load_profile

    state_dir = Path(state) if state else default_state_dir(load_profile(profile).name)
    return CardSpec(
        profile=profile,
        state=state_dir,
        reader=reader,
        quirks=tuple(quirks),
        fault=Path(fault) if fault else None,
        trace=_open_trace(trace) if trace else None,
        **options,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .control import ControlError, ControlServer, private_dir, socket_path

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    project = logging.getLogger(PROG)  # -v sets only mynacard's own loggers
    project.addHandler(handler)
    project.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # Until the cards are served, a signal just ends the process (nothing to close yet).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    specs = _card_specs(args)
    wanted = Path(args.control_dir) if args.control_dir else control_dir()
    control: Path | None = wanted
    try:
        private_dir(wanted)
    except ControlError as error:  # open to others: refuse
        raise UserError(f"--control-dir: {error}") from None
    except OSError as error:  # cannot be made: serve without `ctl`
        project.warning("no control sockets for mynacard ctl: %s", describe_os_error(error))
        control = None
    printing = threading.Lock()

    def ready(card: ServedCard) -> None:
        reader = "-" if card.reader is None else card.reader
        with printing:
            print(f'READY reader={reader} name="{card.name or "-"}" vpcd={card.spec.host}:'
                  f"{card.port}", flush=True)  # fmt: skip

    cards: list[ServedCard] = []
    servers: list[ControlServer] = []
    stop = threading.Event()
    try:
        for spec in specs:
            cards.append(ServedCard(spec, on_ready=ready))
        for card in cards:
            try:
                if control is not None:
                    servers.append(ControlServer(card, socket_path(control, card.port)).start())
            except (ControlError, OSError) as error:
                project.warning("no control socket for this card: %s", error)
            where = f"reader {card.name!r} via vpcd" if card.name else "vpcd"
            with printing:
                print(
                    f"serving profile {card.profile_name!r} (state {card.state}) on {where} "
                    f"{card.spec.host}:{card.port}",
                    flush=True,
                )
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: stop.set())
        for card in cards:
            card.start()
        while not stop.wait(0.5):
            pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # let the state be written and released
        for server in servers:
            server.close()
        for card in cards:
            card.close()
        for spec in specs:
            if spec.trace is not None:
                spec.trace.close()
    return 0


# -- ctl ------------------------------------------------------------------------------------


def cmd_ctl(args: argparse.Namespace) -> int:
    from .control import ControlError, request, socket_path

    control = Path(args.control_dir) if args.control_dir else control_dir()
    port = parse_hostport(args.vpcd)[1] if args.vpcd else reader_port(args.reader)
    path = socket_path(control, port)
    message: dict[str, Any] = {"op": args.action}
    wait = 0.0
    if args.action == "profile":
        is_path = "/" in args.profile or args.profile.endswith(".toml")  # as load_profile
        profile = _absolute(args.profile) if is_path else args.profile
        message.update(profile=profile, state=_absolute(args.state))
    elif args.action == "fault":
        from .faults import read_plan

        read_plan(Path(args.plan))  # a bad plan is said here, naming the field
        message["plan"] = _absolute(args.plan)
    elif args.action == "wait-ready":
        wait = args.timeout
    started = time.monotonic()
    try:
        if args.action == "wait-ready":
            answer = request(path, {"op": "status"}, wait=wait)
            message["timeout"] = max(0.0, wait - (time.monotonic() - started))
        answer = request(path, message)
    except ControlError as error:
        if args.action == "wait-ready":
            raise UserError(f"wait-ready: no card after {args.timeout:g} s: {error}") from None
        raise UserError(str(error)) from None
    if not answer.get("ok"):
        raise UserError(f"{path.name}: {answer.get('error', 'refused')}")
    status = answer.get("status", {})
    if args.action == "wait-ready" and not answer.get("ready"):
        raise UserError(
            f"wait-ready: pcscd does not see the card in {status.get('name') or path.name} "
            f"after {args.timeout:g} s"
        )
    if args.action == "status" and args.json:
        print(json.dumps(status, ensure_ascii=False, indent=2))
    elif args.action == "status":
        counters = status.pop("counters", {})
        for key, value in [*status.items(), *counters.items()]:
            print(f"{key}={_plain(value)}")
    else:
        print(f"{path.name}: {args.action} done; ready={_plain(status.get('ready'))}")
    return 0


VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_CONF_SNIPPET = Path("/etc/reader.conf.d/mynacard-vpcd")


def cmd_reader_conf(args: argparse.Namespace) -> int:
    from importlib.resources import files

    snippet = files("mynacard").joinpath("reader.conf.d/mynacard-vpcd").read_text("utf-8")
    if not args.install:
        print(snippet, end="")
        return 0
    if not VPCD_DRIVER.exists():
        raise UserError(
            f"{VPCD_DRIVER} is missing: install vsmartcard-vpcd first (apt-get install "
            "vsmartcard-vpcd)"
        )
    library = next(line.split()[1] for line in snippet.splitlines() if line.startswith("LIBPATH"))
    shutil.copyfile(VPCD_DRIVER, library)  # a copy, not a link: its own driver globals
    os.chmod(library, 0o644)
    READER_CONF_SNIPPET.write_text(snippet, encoding="utf-8")
    print(
        f"installed {READER_CONF_SNIPPET} and {library}; restart pcscd to get vpcd readers 2 and 3"
    )
    return 0


def _absolute(path: str | None) -> str | None:
    return str(Path(path).absolute()) if path else None


def _plain(value: object) -> str:
    """A status value for `key=value` lines: JSON's spelling (true, null), strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def _open_trace(path: str) -> TextIO:
    """The trace file, created readable by its owner only (it may hold APDUs with secrets)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise UserError(f"--trace {path}: {error.strerror or error}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


# -- profile --------------------------------------------------------------------------------


_SEX = {"1": "male", "2": "female", "3": "unknown"}


def cmd_profile_show(args: argparse.Namespace) -> int:
    from .personalize.profile import load_profile, profile_as_json

    profile = load_profile(args.profile)
    if args.json:
        print(json.dumps(profile_as_json(profile), ensure_ascii=False, indent=2))
        return 0
    holder = profile.holder
    rows = [
        ("profile", f"{profile.name} ({profile.path})"),
        ("description", profile.description),
        ("ATR", profile.atr.hex(" ").upper()),
        *([("form", f"{profile.form} (the JPKI-AP alone)")] if profile.form != "card" else []),
        ("holder", holder.name),
        ("address", holder.address),
        ("birth date", holder.birth_date.isoformat()),
        ("sex", f"{holder.sex} ({_SEX.get(holder.sex, '?')})"),
        ("my number", profile.my_number),
        ("card expiry", profile.card_expiry.isoformat()),
        ("JPKI keys", "yes" if profile.jpki else "no"),
    ]
    rows += [(f"PIN {name}", value) for name, value in profile.pins.items()]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


def cmd_profile_list(args: argparse.Namespace) -> int:
    from .personalize.profile import shipped_profile_names

    for name in shipped_profile_names():
        print(name)
    return 0


def cmd_profile_new(args: argparse.Namespace) -> int:
    from .personalize.generate import new_profile

    path = new_profile(
        Path(args.path),
        seed=args.seed,
        sign_cert=not args.no_sign_cert,
        variant=args.variant,
        description=args.description,
        holder_age=args.age,
        pins=dict(args.pin),
        counters=dict(args.counter),
        atr=args.atr,
        overwrite=args.force,
        free_area=args.free_area,
        holder_name=args.name,
        unified_pin=args.unified_pin,
        form=args.form,
    )
    print(path)
    return 0


# -- state ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from .apps.free_area import check_stored
    from .store import read_pin_status

    pins = read_pin_status(Path(args.state), check_stored)  # StateError (exit 2) if damaged
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "name": p.name,
                "remaining": p.remaining,
                "max_tries": p.max_tries,
                "blocked": p.blocked,
            }
            for p in pins
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max([8, *(len(p.name) for p in pins)])  # free-area PINs: "<app>:<FID>"
    print(f"{'PIN':<{width}}  {'tries':>5}  blocked")
    for p in pins:
        tries = f"{p.remaining}/{p.max_tries}"
        print(f"{p.name:<{width}}  {tries:>5}  {'yes' if p.blocked else 'no'}")
    return 0


def cmd_state_reset(args: argparse.Namespace) -> int:
    """Re-personalise: the only way a state directory gets a fresh card (docs/state.md)."""
    from . import open_card
    from .personalize.profile import load_profile
    from .store import recorded_profile, wipe

    state_dir = Path(args.state)
    source = args.profile or recorded_profile(state_dir)
    if source is None:
        raise UserError(f"{state_dir} does not record its profile; give --profile NAME|PATH")
    profile = load_profile(source)  # before anything is removed
    wipe(state_dir)
    open_card(profile, state_dir).close()
    print(f"state {state_dir}: a new card from profile {profile.name!r}, every PIN as issued")
    return 0


def cmd_reset_pin(args: argparse.Namespace) -> int:
    from .store import reset_pin

    reset_pin(Path(args.state), args.name, args.value)
    print(f"PIN {args.name} reset" + (" with a new value" if args.value is not None else ""))
    return 0


# -- free area ------------------------------------------------------------------------------


def cmd_freearea_list(args: argparse.Namespace) -> int:
    from .apps.free_area import stored_spec
    from .store import read_free_area

    status = read_free_area(Path(args.state))
    specs = [stored_spec(app) for app in status.apps]
    if args.json:
        listing = {
            "capacity": status.capacity,
            "used": status.used,
            "apps": [
                {
                    "name": spec.name,
                    "aid": spec.aid.hex().upper(),
                    "size": spec.size,
                    "description": spec.description,
                    "files": [f"{file.fid:04X}" for file in spec.files],
                    "pins": [f"{pin.fid:04X}" for pin in spec.pins],
                    "keys": [key.number for key in spec.keys],
                }
                for spec in specs
            ],
        }
        print(json.dumps(listing, ensure_ascii=False, indent=2))
        return 0
    print(f"free area: {status.used} of {status.capacity} bytes used")
    for spec in specs:
        print(f"{spec.name}  {spec.aid.hex().upper()}  {spec.size} bytes  {spec.description}")
    return 0


def cmd_freearea_install(args: argparse.Namespace) -> int:
    from .apps.free_area import install

    spec, status = install(Path(args.state), Path(args.file))
    print(
        f"installed {spec.name!r} (AID {spec.aid.hex().upper()}, {spec.size} bytes); "
        f"free area: {status.used} of {status.capacity} bytes used"
    )
    return 0


def cmd_freearea_remove(args: argparse.Namespace) -> int:
    from .store import remove_free_app

    app = remove_free_app(Path(args.state), args.app)
    print(f"removed {app.name!r} (AID {app.aid.hex().upper()}, {app.size} bytes)")
    return 0


# -- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="A software My Number Card for PC/SC (via vsmartcard vpcd)."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve cards to pcscd through vpcd (foreground)")
    serve.add_argument("--profile", help="shipped profile name or profile path (default: default)")
    serve.add_argument("--state", metavar="DIR", help="state directory (default: per profile)")
    target = serve.add_mutually_exclusive_group()
    target.add_argument(
        "--reader", type=int, default=0, metavar="N", help="vpcd reader number (default 0)"
    )
    target.add_argument("--vpcd", metavar="HOST:PORT", help="vpcd address instead of --reader")
    serve.add_argument(
        "--card",
        action="append",
        default=[],
        metavar="reader=N,profile=P,state=DIR,...",
        help="serve one card of several (repeatable; keys reader, profile, state, quirk, "
        "fault, trace): see docs/control.md",
    )
    serve.add_argument(
        "--control-dir",
        metavar="DIR",
        help="where the control sockets go (default $XDG_RUNTIME_DIR/mynacard)",
    )
    serve.add_argument(
        "--frame-timeout",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="drop a vpcd connection stalled this long in the middle of a message (default 1)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every APDU in hex")
    serve.add_argument(
        "--quirk",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a quirk switch of the profile, e.g. blocked_sw=0x6983 (repeatable)",
    )
    personality = serve.add_mutually_exclusive_group()
    personality.add_argument(
        "--interface",
        dest="atr",
        choices=("contact", "contactless"),
        help="present the ATR the card has on that interface (docs/card.md)",
    )
    personality.add_argument(
        "--atr", metavar="NAME|HEX", help="present another ATR: a name of card-spec §1, or hex"
    )
    serve.add_argument("--fault", metavar="FILE", help="a fault plan (TOML): see docs/faults.md")
    serve.add_argument("--trace", metavar="FILE", help="write every exchange to FILE")
    serve.add_argument(
        "--trace-format",
        choices=("json", "scriptor"),
        default="json",
        help="JSON lines (default) or a scriptor / opensc-tool -s script",
    )
    serve.add_argument(
        "--trace-secrets",
        action="store_true",
        help="write PINs, passwords and cryptograms in the trace (masked otherwise)",
    )
    serve.set_defaults(func=cmd_serve)
    _add_ctl_parser(sub)

    profile = sub.add_parser("profile", help="list, show or create card profiles")
    psub = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    show = psub.add_parser("show", help="print a profile")
    show.add_argument("profile", metavar="NAME|PATH")
    show.add_argument("--json", action="store_true", help="print the profile as JSON")
    show.set_defaults(func=cmd_profile_show)
    listing = psub.add_parser("list", help="list the shipped profiles")
    listing.set_defaults(func=cmd_profile_list)
    new = psub.add_parser("new", help="create a profile with fresh test keys")
    new.add_argument("path", metavar="PATH")
    new.add_argument("--seed", type=int, help="same seed, same file (persona, keys, certificates)")
    new.add_argument("--no-sign-cert", action="store_true", help="omit the signature certificate")
    new.add_argument("--variant", default="standard", help="free-text card variant label")
    new.add_argument("--description", help="one-line description of the persona")
    new.add_argument("--age", type=int, help="holder's age at issue (default: random adult)")
    new.add_argument(
        "--pin",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a PIN: auth, sign, text, juki or common (repeatable)",
    )
    new.add_argument(
        "--counter",
        type=_counter,
        action="append",
        default=[],
        metavar="NAME=N",
        help="initial remaining tries of a PIN, 0 = blocked (repeatable)",
    )
    new.add_argument("--atr", default="3BE000FF8131FE4514", help="ATR hex or a known ATR name")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument(
        "--free-area",
        action="append",
        default=[],
        metavar="NAME",
        help="install an example free-area application: library, taxi or entry (repeatable)",
    )
    new.add_argument("--name", help="holder's name: family name, U+3000 (　), given name")
    new.add_argument(
        "--unified-pin",
        action="store_true",
        help="one value for the auth, text, juki and common PINs (else they differ)",
    )
    new.add_argument(
        "--form",
        choices=("card", "smartphone-android", "smartphone-ios"),  # profile.FORMS
        default="card",
        help="the plastic card, or スマホ用電子証明書 on a phone (only the JPKI-AP)",
    )
    new.set_defaults(func=cmd_profile_new)

    status = sub.add_parser(
        "status", help="show the PIN counters of a card state (exit 2 if it is damaged)"
    )
    status.add_argument("--state", metavar="DIR", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    state = sub.add_parser("state", help="manage a card's state directory")
    ssub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    state_reset = ssub.add_parser(
        "reset", help="re-personalise: a new card from the profile (all state lost)"
    )
    state_reset.add_argument("--state", metavar="DIR", required=True)
    state_reset.add_argument(
        "--profile", metavar="NAME|PATH", help="default: the profile the state records"
    )
    state_reset.set_defaults(func=cmd_state_reset)

    reset = sub.add_parser("reset-pin", help="reset a PIN's counter (the municipal office's job)")
    reset.add_argument("--state", metavar="DIR", required=True)
    reset.add_argument("name", metavar="NAME", help="PIN name, e.g. auth or sign")
    reset.add_argument("--value", metavar="NEW", help="also set a new PIN value")
    reset.set_defaults(func=cmd_reset_pin)

    free = sub.add_parser(
        "freearea", help="list, install or remove free-area applications (the issuer's job)"
    )
    fsub = free.add_subparsers(dest="freearea_command", required=True, metavar="ACTION")
    free_list = fsub.add_parser("list", help="capacity and installed applications")
    free_list.add_argument("--state", metavar="DIR", required=True)
    free_list.add_argument("--json", action="store_true")
    free_list.set_defaults(func=cmd_freearea_list)
    free_install = fsub.add_parser(
        "install", help="install the application declared in a TOML file (card not live)"
    )
    free_install.add_argument("--state", metavar="DIR", required=True)
    free_install.add_argument("file", metavar="FILE", help="application declaration (.toml)")
    free_install.set_defaults(func=cmd_freearea_install)
    free_remove = fsub.add_parser("remove", help="delete an application and its data")
    free_remove.add_argument("--state", metavar="DIR", required=True)
    free_remove.add_argument("app", metavar="NAME|AID")
    free_remove.set_defaults(func=cmd_freearea_remove)

    from .conformance.cli import register as register_conformance

    register_conformance(sub)  # `mynacard conformance` and `mynacard replay`
    return parser


def _add_ctl_parser(sub: Any) -> None:
    ctl = sub.add_parser("ctl", help="insert, remove, reset, fault… a card `serve` is serving")
    target = ctl.add_mutually_exclusive_group()
    target.add_argument("--reader", type=int, default=0, metavar="N", help="default 0")
    target.add_argument("--vpcd", metavar="HOST:PORT", help="the card served with --vpcd")
    ctl.add_argument("--control-dir", metavar="DIR", help="as given to serve")
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("insert", "put the card back in the reader"),
        ("remove", "take the card out (pcscd reports the reader empty)"),
        ("reset", "warm reset from the card's side: selection and verified PINs are gone"),
        ("power-off", "power cut: pcscd sees the card leave and come back"),
        ("clear", "remove the fault plan"),
    ):
        actions.add_parser(name, help=text)
    profile = actions.add_parser("profile", help="swap in the card of another profile")
    profile.add_argument("profile", metavar="NAME|PATH")
    profile.add_argument("--state", metavar="DIR", help="its state (default: next to the old)")
    fault = actions.add_parser("fault", help="apply a fault plan (TOML, docs/faults.md)")
    fault.add_argument("plan", metavar="FILE")
    status = actions.add_parser("status", help="the card and its counters, key=value lines")
    status.add_argument("--json", action="store_true", help="as JSON")
    wait = actions.add_parser("wait-ready", help="wait until pcscd sees the card (exit 2: not)")
    wait.add_argument("--timeout", type=float, default=10.0, metavar="S", help="default 10")
    ctl.set_defaults(func=cmd_ctl)
    conf = sub.add_parser(
        "reader-conf", help="print (or install) the reader.conf snippet adding vpcd readers 2, 3"
    )
    conf.add_argument(
        "--install",
        action="store_true",
        help=f"write {READER_CONF_SNIPPET} and the vpcd driver copy it loads (root)",
    )
    conf.set_defaults(func=cmd_reader_conf)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mynacard`` command; returns the exit status (see the module docstring)."""
    from .personalize.profile import ProfileError
    from .store import StateError

    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except BrokenPipeError:  # e.g. `mynacard profile show default | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except (UserError, ProfileError, StateError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"{PROG}: {describe_os_error(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(f"{PROG}: internal error (a bug in mynacard {_version()})", file=sys.stderr)
        return EXIT_INTERNAL
    return status


def _version() -> str:
    from . import __version__

    return __version__


def describe_os_error(err: OSError) -> str:
    """An OSError as one line naming the file: "PATH: No such file or directory"."""
    what = err.strerror or str(err)
    return f"{err.filename}: {what}" if err.filename else what
