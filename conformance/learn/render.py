"""DOT files of both machines, Graphviz pictures of them, and the side-by-side HTML page."""

from __future__ import annotations

import html
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from .diff import Comparison, state_names
from .learning import Machine


class RenderError(RuntimeError):
    """Graphviz is missing or failed; the message says which."""


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'


def to_dot(
    machine: Machine,
    letters: list[str],
    title: str,
    marked: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
) -> str:
    """The machine in DOT: states named as `state_names` does, one edge per pair of states
    with a line per letter (``letter / output``); `marked` (state, letter) edges in red."""
    names = state_names(machine, letters)
    lines = [
        f"digraph {_quote(title)} {{",
        f"  label={_quote(title)}; labelloc=t; rankdir=LR;",
        '  node [shape=circle, fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=9];',
        '  __start [shape=point]; __start -> "s0";',
    ]
    for state, name in sorted(names.items(), key=lambda item: int(item[1][1:])):
        edges: dict[str, list[str]] = defaultdict(list)
        red: set[str] = set()
        for letter in letters:
            following = names[state.transitions[letter]]
            edges[following].append(f"{letter} / {state.output_fun[letter]}")
            if (name, letter) in marked:
                red.add(following)
        lines.append(f"  {_quote(name)};")
        for following, labels in edges.items():
            colour = ", color=red, fontcolor=red" if following in red else ""
            label = '"' + "".join(f"{_escape(text)}\\l" for text in labels) + '"'
            lines.append(f"  {_quote(name)} -> {_quote(following)} [label={label}{colour}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_file: Path, kind: str = "svg") -> Path:
    """Run Graphviz `dot` on `dot_file`; the picture's path."""
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError("Graphviz `dot` is not installed (Debian: apt-get install graphviz)")
    picture = dot_file.with_suffix(f".{kind}")
    done = subprocess.run(
        [dot, f"-T{kind}", "-o", str(picture), str(dot_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RenderError(f"dot failed on {dot_file}: {done.stderr.strip()}")
    return picture


def page(
    title: str,
    pictures: tuple[Path, Path],
    comparison: Comparison,
    transcripts: list[Path],
    figures: list[str],
) -> str:
    """The HTML page: both pictures side by side, then the differences."""
    learned, expected = pictures
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(' · '.join(d.inputs))}</td><td>{html.escape(d.expected_state)}</td>"
        f"<td>{html.escape(d.learned)}</td><td>{html.escape(d.expected)}</td>"
        f'<td><a href="{html.escape(t.name)}">{html.escape(t.name)}</a></td>'
        "</tr>"
        for d, t in zip(comparison.differences, transcripts, strict=True)
    )
    states = "".join(
        f"<li>{html.escape(f'{kind} {state}: ' + ', '.join(sorted(other)))}</li>"
        for kind, found in (("learned", comparison.split), ("expected", comparison.merged))
        for state, other in sorted(found.items())
    )
    verdict = "the same machine" if comparison.equal else "the machines differ"
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.pair {{ display: flex; gap: 1em; }}
.pair figure {{ flex: 1; margin: 0; overflow: auto; border: 1px solid #ccc; }}
.pair img {{ max-width: 100%; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{html.escape(title)}: {verdict}</h1>
<ul>{facts}</ul>
<div class="pair">
<figure><figcaption>learned ({html.escape(learned.name)})</figcaption>
<img src="{html.escape(learned.name)}" alt="learned machine"></figure>
<figure><figcaption>expected ({html.escape(expected.name)})</figcaption>
<img src="{html.escape(expected.name)}" alt="expected machine"></figure>
</div>
<h2>Differing transitions ({len(comparison.differences)})</h2>
<table><tr><th>inputs</th><th>expected state</th><th>learned output</th>
<th>expected output</th><th>transcript</th></tr>{rows}</table>
<h2>States that do not pair one to one</h2><ul>{states or "<li>none</li>"}</ul>
</body></html>
"""
