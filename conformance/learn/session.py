"""One learning run: the alphabet and the model's facts for an application, the learned and
the expected machine, their comparison, and the files written for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..apdu import select_aid, verify
from ..guard import PinGuard
from ..model import CardFacts, CardModel
from ..profile import read_profile
from ..spec import AppSpec
from ..targets import Target
from ..transcript import save
from .alphabet import Letter, alphabet, find_app
from .diff import Comparison, compare
from .learning import Learned, learn
from .mapper import CardSUL, LearnError, ModelSUL
from .render import page, render, to_dot


@dataclass
class Plan:
    """What to learn: the application, its letters, and the model's facts."""

    app: AppSpec
    letters: list[Letter]
    facts: Callable[[], CardFacts]
    pins: dict[int, bytes]  # known PIN values by FID

    @property
    def names(self) -> list[str]:
        return [letter.name for letter in self.letters]


def _without_profile(pins: dict[str, str]) -> CardFacts:
    """Facts from the spec and `pins`: counters taken to be full (`card_port` makes them so
    on the card), and an optional object present exactly when every PIN it is or needs has
    a value (the JPKI-AP's sign PIN, key and certificate come with `--pin sign=`)."""
    made = CardFacts.learning(pins)
    for app in made.catalogue:
        known = {pin.fid for pin in app.pins if (app.aid, pin.fid) in made.pin_values}
        for pin in app.pins:
            made.initial_counters.setdefault((app.aid, pin.fid), pin.max_tries)
        for fid in app.optional_fids:
            ef, key = app.ef(fid), app.key(fid)
            needs = ef.read if ef is not None else key.use if key is not None else frozenset({fid})
            made.objects[(app.aid, fid)] = needs <= known
    return made


def plan(app_name: str, profile: str | None, pins: dict[str, str], *, restore: bool) -> Plan:
    """The plan for `app_name`; the facts come from `profile` (exact) or from the spec and
    `pins` (`_without_profile`)."""
    loaded = read_profile(profile) if profile else None

    def facts() -> CardFacts:
        if loaded is not None:
            return CardFacts.from_profile(loaded, pins)
        return _without_profile(pins)

    sample = facts()
    app = find_app(app_name, sample.catalogue)
    model = CardModel(sample, fresh=True)
    values = {pin.fid: value for pin in app.pins if (value := model.value(app, pin)) is not None}
    return Plan(app, alphabet(app, values, restore=restore), facts, values)


def card_port(target: Target, chosen: Plan, budget: int) -> Target | PinGuard:
    """`target` itself when it is disposable; otherwise behind the PIN guard with `budget`
    wrong tries per PIN, each PIN of the application confirmed (and its counter made full)
    with its right value first."""
    if target.disposable:
        return target
    named = {pin.name: chosen.pins[pin.fid] for pin in chosen.app.pins if pin.fid in chosen.pins}
    pins = {name: value.decode("latin-1") for name, value in named.items() if name}
    guard = PinGuard(target, pins=pins, budget=budget)
    guard.reset()
    guard.transmit(select_aid(chosen.app.aid))
    for fid, value in chosen.pins.items():
        guard.transmit(verify(b"", 0x80 | fid))
        guard.transmit(verify(value, 0x80 | fid))
    guard.reset()
    return guard


@dataclass
class Outcome:
    learned: Learned
    expected: Learned
    comparison: Comparison
    exchanges: int  # commands and resets that reached the card
    guarded: bool  # learned behind the PIN guard
    wrong_tries: int | None  # wrong PINs the guard let through (None: not guarded)


def run(port: Target | PinGuard, chosen: Plan, *, seed: int = 0) -> Outcome:
    """Learn the card through `port`, then the model, and compare them."""
    card = CardSUL(port, chosen.letters)
    learned = learn(card, chosen.names, seed=seed)
    guarded = isinstance(port, PinGuard)
    model = ModelSUL(chosen.facts, chosen.letters, guarded=guarded)
    expected = learn(model, chosen.names, seed=seed)
    comparison = compare(learned.machine, expected.machine, chosen.names)
    wrong = sum(port.wrong_tries.values()) if isinstance(port, PinGuard) else None
    return Outcome(learned, expected, comparison, card.exchanges, guarded, wrong)


def figures(name: str, result: Learned, exchanges: int | None = None) -> str:
    """One line of what learning `name` found and cost."""
    sent = f", {exchanges} card exchanges" if exchanges is not None else ""
    return (
        f"{name}: {result.states} states, {result.transitions} transitions, "
        f"{result.membership_queries} membership queries, {result.equivalence_queries} "
        f"equivalence queries ({result.cached} answered by the cache){sent}, "
        f"{result.seconds:.1f} s"
    )


def write(out: Path, chosen: Plan, outcome: Outcome, title: str, lines: list[str]) -> list[Path]:
    """DOT files, SVG pictures, one transcript per difference and index.html in `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LearnError(f"--out {out}: cannot make it ({error.strerror or error})") from None
    marked = {(d.expected_state, d.letter) for d in outcome.comparison.differences}
    learned_marked = {(d.learned_state, d.letter) for d in outcome.comparison.differences}
    written = []
    pictures = []
    for name, result, edges in (
        ("learned", outcome.learned, learned_marked),
        ("expected", outcome.expected, marked),
    ):
        dot = out / f"{name}.dot"
        dot.write_text(to_dot(result.machine, chosen.names, f"{name}: {title}", edges), "utf-8")
        pictures.append(render(dot))
        written += [dot, pictures[-1]]
    model = ModelSUL(chosen.facts, chosen.letters, guarded=outcome.guarded)
    transcripts = []
    for number, difference in enumerate(outcome.comparison.differences, 1):
        path = out / f"difference-{number}.apdu"
        save(
            path,
            model.transcript(difference.inputs),
            [
                f"{title}: after {' · '.join(difference.inputs[:-1]) or 'power-on'}, "
                f"{difference.letter!r} answered {difference.learned}, "
                f"expected {difference.expected}"
            ],
        )
        transcripts.append(path)
    index = out / "index.html"
    index.write_text(
        page(title, (pictures[0], pictures[1]), outcome.comparison, transcripts, lines), "utf-8"
    )
    return [*written, *transcripts, index]
