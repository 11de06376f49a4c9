"""Reports of a run: JUnit XML (one test case per spec section), HTML, failure transcripts."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path

from .bench import Deviation
from .model import SECTION_CARD, SECTION_PINS, SECTION_POWER, SECTION_READ, SECTION_SIGN
from .runner import RunResult
from .spec import CATALOGUE
from .transcript import format_transcript

SECTIONS = (
    SECTION_CARD,
    SECTION_POWER,
    *(app.section for app in CATALOGUE),
    SECTION_PINS,
    SECTION_SIGN,
    SECTION_READ,
)


def sections_of(result: RunResult) -> list[str]:
    """The spec sections in report order: the fixed list, then any others that came up."""
    seen = [name for name in result.stats.sections if name not in SECTIONS]
    return [*SECTIONS, *seen]


def transcript_text(deviation: Deviation) -> str:
    comments = [f"target: {deviation.target}", f"{deviation.section}: {deviation.message}"]
    return format_transcript(deviation.transcript, comments)


def speed_lines(result: RunResult) -> list[str]:
    stats = result.stats
    return [
        f"examples: {stats.examples}",
        f"stateful steps (rules): {stats.rule_steps}, APDUs: {stats.apdus}",
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


def write_junit(result: RunResult, path: Path) -> None:
    failures = sum(len(result.stats.section(name).failures) for name in sections_of(result))
    suite = ET.Element(
        "testsuite",
        name="mynacard conformance",
        tests=str(len(sections_of(result))),
        failures=str(failures),
        time=f"{result.stats.elapsed:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in {
        "targets": ", ".join(result.targets),
        **result.capabilities,
        **dict(line.split(" = ", 1) for line in quirk_lines(result)),
    }.items():
        ET.SubElement(properties, "property", name=name, value=value)
    for name in sections_of(result):
        stats = result.stats.section(name)
        case = ET.SubElement(suite, "testcase", classname="conformance", name=name)
        if stats.failures:
            for deviation in stats.failures:
                failure = ET.SubElement(case, "failure", message=deviation.message)
                failure.text = transcript_text(deviation)
        elif not stats.steps:
            ET.SubElement(case, "skipped", message="no step of this section ran")
        ET.SubElement(case, "system-out").text = f"{stats.steps} steps"
    ET.SubElement(suite, "system-out").text = "\n".join(speed_lines(result))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def write_html(result: RunResult, path: Path) -> None:
    verdict = "conformant" if result.conformant else "NOT conformant"
    rows = []
    for name in sections_of(result):
        stats = result.stats.section(name)
        state = "fail" if stats.failures else "pass" if stats.steps else "not run"
        rows.append(
            f"<tr class='{state.replace(' ', '-')}'><td>{html.escape(name)}</td>"
            f"<td>{state}</td><td>{stats.steps}</td><td>{len(stats.failures)}</td></tr>"
        )
    failures = "".join(
        f"<h3>{html.escape(d.section)}: {html.escape(d.message)}</h3>"
        f"<pre>{html.escape(transcript_text(d))}</pre>"
        for d in result.deviations
    )
    quirks = "".join(f"<li>{html.escape(q)}</li>" for q in quirk_lines(result))
    speed = "".join(f"<li>{html.escape(s)}</li>" for s in speed_lines(result))
    listing = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in result.capabilities.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mynacard conformance: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.2em .8em;text-align:left}}
tr.fail{{background:#fdd}} tr.pass{{background:#dfd}} tr.not-run{{color:#888}}
pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style></head><body>
<h1>mynacard conformance: {verdict}</h1>
<p>Targets: {html.escape(", ".join(result.targets))}</p>
<h2>Spec sections</h2>
<table><tr><th>section</th><th>result</th><th>steps</th><th>failures</th></tr>{"".join(rows)}
</table>
<h2>Reader and card</h2><ul>{listing}</ul>
<h2>Quirks in force</h2><ul>{quirks}</ul>
<h2>Speed</h2><ul>{speed}</ul>
<h2>Failures</h2>{failures or "<p>none</p>"}
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_report(result: RunResult, directory: Path) -> list[Path]:
    """junit.xml, report.html and one replayable transcript per failure in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "junit.xml", directory / "report.html"]
    write_junit(result, written[0])
    write_html(result, written[1])
    for number, deviation in enumerate(result.deviations, 1):
        path = directory / f"failure-{number}.apdu"
        path.write_text(transcript_text(deviation), encoding="utf-8")
        written.append(path)
    return written
