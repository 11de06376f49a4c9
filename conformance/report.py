"""Reports of a run: JUnit XML (one test case per spec section), HTML, failure transcripts,
each with the run's metadata and, for every failure, the one command that replays it."""

from __future__ import annotations

import html
import platform
import shlex
import socket
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

from .bench import Deviation
from .model import (
    SECTION_CARD,
    SECTION_PINS,
    SECTION_POWER,
    SECTION_READ,
    SECTION_SIGN,
    brief,
)
from .runner import Evidence, RunConfig, RunResult
from .spec import CATALOGUE
from .transcript import Pattern, format_transcript

PROG = "mynacard"
SECTIONS = (
    SECTION_CARD,
    SECTION_POWER,
    *(app.section for app in CATALOGUE),
    SECTION_PINS,
    SECTION_SIGN,
    SECTION_READ,
)
HIDDEN = "<hidden>"  # a --pin value in a printed command: unquoted, the shell refuses it


def sections_of(result: RunResult) -> list[str]:
    """The spec sections in report order: the fixed list, then any others that came up."""
    seen = [name for name in result.stats.sections if name not in SECTIONS]
    return [*SECTIONS, *seen]


def version() -> str:
    try:
        return metadata.version("mynacard")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- commands -------------------------------------------------------------------------------


def _command(words: list[str], pins: dict[str, str]) -> str:
    """`words` quoted for a POSIX shell, then the --pin options with their values hidden."""
    hidden = [f"--pin {shlex.quote(name)}={HIDDEN}" for name in pins]
    return " ".join([shlex.join(words), *hidden])


def _card_words(config: RunConfig, target: str) -> list[str]:
    words = ["--target", target]
    if config.profile:
        words += ["--profile", config.profile]
    if config.pin_budget:
        words += ["--pin-budget", str(config.pin_budget)]
    return words


def conformance_command(config: RunConfig) -> str:
    """The command that runs `config` again (the same seed, so the same examples)."""
    words = [PROG, "conformance", *_card_words(config, config.target)]
    words += ["--max-examples", str(config.max_examples), "--steps", str(config.steps)]
    if config.seed is not None:
        words += ["--seed", str(config.seed)]
    if config.differential:
        words += ["--differential", config.differential]
    return _command(words, config.pins)


def replay_command(result: RunResult, number: int, transcript: Path) -> str:
    """The command that replays failure `number` (0-based) from its transcript file: on the
    target that deviated (in differential mode, the second one)."""
    config = result.config
    evidence = result.evidence.get(number)
    target = config.target
    if config.differential and evidence is not None and evidence.reference is not None:
        target = config.differential
    words = [PROG, "replay", str(transcript), *_card_words(config, target)]
    return _command(words, config.pins)


def failure_file(directory: Path, number: int) -> Path:
    """Where `write_report` puts failure `number` (0-based)."""
    return directory / f"failure-{number + 1}.apdu"


# -- failures -------------------------------------------------------------------------------


def _first_difference(deviation: Deviation, evidence: Evidence) -> int | None:
    if evidence.reference is not None:  # differential: the two answers themselves
        first, second = evidence.reference, evidence.answer
        offset = next(
            (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), None
        )
        if offset is None and len(first) != len(second):
            offset = min(len(first), len(second))
        return offset
    expected: Pattern = deviation.transcript[-1].expected
    return expected.first_difference(evidence.answer)


def difference_lines(deviation: Deviation, evidence: Evidence | None) -> list[str]:
    """Comment lines that mark the first differing byte of the answer the transcript's last
    line notes: a caret under it where the note shows it, and its offset."""
    if evidence is None or not deviation.transcript:
        return []
    offset = _first_difference(deviation, evidence)
    if offset is None:
        return []
    answer = evidence.answer
    size = len(answer)
    if offset >= size:
        text = f"the answer ends at offset {size}: more was expected"
    else:
        text = f"first difference at offset {offset} (0x{offset:X}) of {size} bytes"
    line = deviation.transcript[-1].format()
    shown = brief(answer, 64)
    column = None
    if line.endswith(f"answered {shown}") and offset < size:
        start = len(line) - len(shown)
        if size <= 66 or offset < 64:
            column = start + 2 * offset
        elif offset >= size - 2:  # the status word, last in a shortened answer
            column = len(line) - 4 + 2 * (offset - (size - 2))
    if offset < size:
        text += f": {answer[offset]:02X}"
        wanted = _expected_byte(deviation, evidence, offset)
        text += f" where {wanted:02X} was expected" if wanted is not None else ""
    if column is not None:
        return [f"#{' ' * (column - 1)}^^ {text}"]
    return [f"# {text}"]


def _expected_byte(deviation: Deviation, evidence: Evidence, offset: int) -> int | None:
    """The byte the other target or an exact pattern has at `offset`, if there is one."""
    expected = evidence.reference
    if expected is None:
        try:
            expected = bytes.fromhex(deviation.transcript[-1].expected.text)
        except ValueError:  # wildcards or alternatives
            return None
    return expected[offset] if offset < len(expected) else None


def transcript_text(deviation: Deviation, evidence: Evidence | None = None) -> str:
    """A failure as a replayable transcript, the first differing byte marked."""
    comments = [f"target: {deviation.target}", f"{deviation.section}: {deviation.message}"]
    text = format_transcript(deviation.transcript, comments)
    return text + "".join(f"{line}\n" for line in difference_lines(deviation, evidence))


def failure_text(result: RunResult, deviation: Deviation) -> str:
    """`transcript_text` of one of the result's deviations, with its evidence."""
    number = next((i for i, d in enumerate(result.deviations) if d is deviation), -1)
    return transcript_text(deviation, result.evidence.get(number))


def reproduce_command(result: RunResult, number: int, report: Path | None) -> str:
    """The one command that shows failure `number` again: a replay of its transcript when
    the report wrote one, else the run itself with its seed."""
    if report is not None:
        return replay_command(result, number, failure_file(report, number))
    return conformance_command(result.config)


# -- run metadata ---------------------------------------------------------------------------


def speed_lines(result: RunResult) -> list[str]:
    stats = result.stats
    return [
        f"examples: {stats.examples}",
        f"stateful steps (actions): {stats.rule_steps}, APDUs: {stats.apdus}",
        f"time: {stats.elapsed:.2f} s, {stats.steps_per_second:.0f} steps/s, "
        f"{stats.apdus / stats.elapsed if stats.elapsed else 0:.0f} APDUs/s",
        f"commands refused by the PIN guard: {stats.refusals}",
    ]


def quirk_lines(result: RunResult) -> list[str]:
    quirks = result.quirks
    query_sw = quirks.verified_query_sw
    return [
        f"blocked_sw = {quirks.blocked_sw:04X}",
        f"reselect_clears_state = {quirks.reselect_clears_state}",
        f"verified_query_sw = {'(63Cx)' if query_sw is None else f'{query_sw:04X}'}",
        f"filler = {quirks.filler:02X}",
        f"extended_length = {quirks.extended_length}",
        f"t0_chaining = {quirks.t0_chaining}",
    ]


def _named(spec: str, name: str) -> str:
    return name if name.startswith(spec) else f"{spec} ({name})"


def run_metadata(result: RunResult) -> dict[str, str]:
    """What a reader of a report needs to know and to run it again."""
    import hypothesis

    config = result.config
    targets = ", ".join(result.targets)
    return {
        "mynacard version": version(),
        "seed": str(result.seed),
        "profile": config.profile or "(none: card data learnt from the card)",
        "target": _named(config.target, result.targets[0] if result.targets else config.target),
        **({"differential": f"{config.differential} ({targets})"} if config.differential else {}),
        "command line": conformance_command(config),
        "started": result.started.astimezone().isoformat(timespec="seconds"),
        "budget": f"{config.max_examples} examples of up to {config.steps} rules; "
        f"PIN budget {config.pin_budget}",
        "python": platform.python_version(),
        "hypothesis": hypothesis.__version__,
        **result.capabilities,
        "quirks": ", ".join(quirk_lines(result)),
    }


def _ran(result: RunResult, section: str) -> bool:
    stats = result.stats.section(section)
    return bool(stats.steps or stats.failures)


def _not_run(result: RunResult, section: str) -> str:
    absent = result.capabilities.get("applications not on the card", "")
    app = next((a for a in CATALOGUE if a.section == section), None)
    if app is not None and app.name in [name.strip() for name in absent.split(",")]:
        return "not run: the application is not on the card"
    return "not run: no step of this section ran"


# -- JUnit and HTML -------------------------------------------------------------------------


def write_junit(result: RunResult, path: Path, report: Path | None = None) -> None:
    sections = sections_of(result)
    failures = sum(len(result.stats.section(name).failures) for name in sections)
    suite = ET.Element(
        "testsuite",
        name="mynacard conformance",
        tests=str(len(sections)),
        failures=str(failures),
        errors="0",
        skipped=str(sum(not _ran(result, name) for name in sections)),
        time=f"{result.stats.elapsed:.3f}",
        timestamp=result.started.astimezone().isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
    )
    properties = ET.SubElement(suite, "properties")
    everything = run_metadata(result)
    del everything["quirks"]  # one property each
    for name, value in {
        **everything,
        **dict(line.split(" = ", 1) for line in quirk_lines(result)),
    }.items():
        ET.SubElement(properties, "property", name=name, value=value)
    for name in sections:
        stats = result.stats.section(name)
        case = ET.SubElement(
            suite,
            "testcase",
            classname="conformance",
            name=name,
            time=f"{result.section_times.get(name, 0.0):.3f}",
        )
        if stats.failures:
            for deviation in stats.failures:
                number = result.deviations.index(deviation)
                failure = ET.SubElement(case, "failure", message=deviation.message)
                failure.text = (
                    failure_text(result, deviation)
                    + f"# replay: {reproduce_command(result, number, report)}\n"
                )
        elif not _ran(result, name):
            ET.SubElement(case, "skipped", type="not run", message=_not_run(result, name))
        ET.SubElement(case, "system-out").text = f"{stats.steps} steps"
    ET.SubElement(suite, "system-out").text = "\n".join(speed_lines(result))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _items(pairs: dict[str, str]) -> str:
    return "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs.items()
    )


def write_html(result: RunResult, path: Path, report: Path | None = None) -> None:
    verdict = "conformant" if result.conformant else "NOT conformant"
    rows = []
    for name in sections_of(result):
        stats = result.stats.section(name)
        state = "fail" if stats.failures else "pass" if stats.steps else "not run"
        rows.append(
            f"<tr class='{state.replace(' ', '-')}'><td>{html.escape(name)}</td>"
            f"<td>{state}</td><td>{stats.steps}</td><td>{len(stats.failures)}</td>"
            f"<td>{result.section_times.get(name, 0.0):.3f} s</td></tr>"
        )
    failures = "".join(
        f"<h3>{html.escape(d.section)}: {html.escape(d.message)}</h3>"
        f"<p>Replay: <code>{html.escape(reproduce_command(result, number, report))}</code></p>"
        f"<pre>{html.escape(failure_text(result, d))}</pre>"
        for number, d in enumerate(result.deviations)
    )
    speed = "".join(f"<li>{html.escape(s)}</li>" for s in speed_lines(result))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mynacard conformance: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.2em .8em;text-align:left}}
tr.fail{{background:#fdd}} tr.pass{{background:#dfd}} tr.not-run{{color:#888}}
pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style></head><body>
<h1>mynacard conformance: {verdict}</h1>
<p>Targets: {html.escape(", ".join(result.targets))}</p>
<h2>Spec sections</h2>
<table><tr><th>section</th><th>result</th><th>steps</th><th>failures</th><th>time</th></tr>
{"".join(rows)}
</table>
<h2>Failures</h2>{failures or "<p>none</p>"}
<h2>Run</h2><table>{_items(run_metadata(result))}</table>
<h2>Speed</h2><ul>{speed}</ul>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_report(result: RunResult, directory: Path) -> list[Path]:
    """junit.xml, report.html and one replayable transcript per failure in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "junit.xml", directory / "report.html"]
    write_junit(result, written[0], directory)
    write_html(result, written[1], directory)
    for number, deviation in enumerate(result.deviations):
        path = failure_file(directory, number)
        path.write_text(failure_text(result, deviation), encoding="utf-8")
        written.append(path)
    return written
