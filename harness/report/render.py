"""The report as Markdown ($GITHUB_STEP_SUMMARY), one self-contained HTML file, JUnit XML or
JSON. Every string from a results file is escaped for the format it goes into, and no control
character reaches the output (any format may be printed on a terminal; JSON escapes them)."""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal, get_args

from harness.report.model import (
    CHANGE_LABELS,
    FIXED,
    NEVER_PASSED,
    NEW,
    REGRESSION,
    STILL_FAILING,
    UNCHANGED,
    Cell,
    KernelRow,
    Report,
    first_line,
)
from harness.suite.results import FAIL, NA, NOT_RUN, PASS, XFAIL, XPASS

Format = Literal["md", "html", "junit", "json"]
FORMATS: tuple[Format, ...] = get_args(Format)
# What a JUnit testcase element holds besides its output: its tag, and the counter it adds to.
JUnitKind = Literal["failure", "error", "skipped"]
JUNIT_COUNTERS: dict[JUnitKind, str] = {
    "failure": "failures",
    "error": "errors",
    "skipped": "skipped",
}
LABELS = {
    PASS: "pass",
    FAIL: "fail",
    XFAIL: "expected failure",
    XPASS: "unexpected pass",
    NA: "not applicable",
    NOT_RUN: "not run",
}
ICONS = {PASS: "✅", FAIL: "❌", XFAIL: "☑️", XPASS: "⚠️", NA: "⚪", NOT_RUN: "⏸️"}
CHANGE_ICONS = {REGRESSION: "🔺", FIXED: "🔧", STILL_FAILING: "🔁", NEVER_PASSED: "⛔", NEW: "🆕"}
# Control characters (a console can print anything): XML 1.0 has no place for most of them,
# and on a terminal ESC, CR, DEL and the C1 controls (CSI is 0x9b) would move the cursor or
# rewrite lines. Tab and newline stay.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")


def _clean(text: str) -> str:
    """`text` with CRLF line ends as LF and every other control character as U+FFFD."""
    return _CONTROL.sub("\ufffd", text.replace("\r\n", "\n"))


def render(report: Report, fmt: Format, out: Path | None = None) -> str:
    """`out` (the file it will be written to) makes HTML links to logs relative to it."""
    if fmt == "md":
        return markdown(report)
    if fmt == "html":
        return html_page(report, out.parent if out else None)
    if fmt == "junit":
        return junit(report)
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def headline(report: Report) -> str:
    grid = report.grid
    parts = [f"{LABELS[o]} {n}" for o, n in report.outcome_counts().items()]
    text = f"{len(grid.kernels)} kernel(s) x {len(grid.samples)} module(s): " + ", ".join(parts)
    if report.baseline is not None:
        changes = [f"{CHANGE_LABELS[c]} {n}" for c, n in report.change_counts().items()]
        text += "; against the baseline: " + (", ".join(changes) or "nothing to compare")
    return text


def _kernel_bits(k: KernelRow) -> list[str]:
    bits = [k.spec]
    if k.arch:
        bits.append(k.arch)
    if k.package_version:
        bits.append(k.package_version)
    if k.accel:
        bits.append(f"{k.accel}, boot {k.boot_seconds:.1f} s")
    return bits


# -- Markdown -----------------------------------------------------------------------------------


def md_text(text: str) -> str:
    """Plain text for a Markdown paragraph or table cell: one line, nothing interpreted."""
    text = html.escape(" ".join(_clean(text).split()), quote=False)
    text = re.sub(r"([\\`*\[\]|~])", r"\\\1", text)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\_", text)  # intraword _ is not emphasis


def _fence(lines: list[str]) -> str:
    body = _clean("\n".join(lines))
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{body}\n{ticks}"


def md_cell(cell: Cell) -> str:
    text = f"{ICONS[cell.outcome]} {LABELS[cell.outcome]}"
    if cell.change and cell.change in CHANGE_ICONS:
        text += f" {CHANGE_ICONS[cell.change]} **{CHANGE_LABELS[cell.change]}**"
    return text


def markdown(report: Report) -> str:
    grid = report.grid
    regressions = report.regressions
    title = "## klp-harness report"
    if regressions:
        title += f": {len(regressions)} regression(s)"
    elif report.failures:
        title += f": {len(report.failures)} failure(s)"
    out = [title, "", md_text(headline(report)), ""]
    out.append("| kernel | " + " | ".join(md_text(s) for s in grid.samples) + " |")
    out.append("|---" * (len(grid.samples) + 1) + "|")
    for k in grid.kernels:
        head = f"**{md_text(k.label)}**<br>{md_text(k.spec)}"
        out.append(f"| {head} | " + " | ".join(md_cell(c) for c in grid.row(k)) + " |")
    listed = [c for c in grid.all_cells() if c.failed or c.change == FIXED]
    if listed:
        out += ["", "### Failures" if report.failures else "### Changes", ""]
    for cell in listed:
        kernel = next(k for k in grid.kernels if k.spec == cell.kernel)
        state = LABELS[cell.outcome]
        if cell.change:
            state += f" ({CHANGE_LABELS[cell.change]}"
            state += f", was {LABELS[cell.baseline_outcome]})" if cell.baseline_outcome else ")"
        where = f"{md_text(kernel.label)} / {md_text(cell.sample)}"
        out.append(f"- **{where}**: {md_text(state)}: {md_text(first_line(cell.reason))}")
        detail = [line for line in cell.reason.strip().splitlines()[1:]] + cell.evidence
        if detail:
            out += ["", "  <details><summary>evidence</summary>", ""]
            out += ["  " + line for line in _fence(detail).splitlines()]
            out += ["", "  </details>", ""]
    out += [
        "",
        "### Kernels",
        "",
        "| kernel | spec | arch | package | accel | boot | toolchain | config hash |",
    ]
    out.append("|---|---|---|---|---|---|---|---|")
    for k in grid.kernels:
        cells = [k.label, k.spec, k.arch or "-", k.package_version, k.accel or "-"]
        cells.append(f"{k.boot_seconds:.1f} s")
        cells += [k.toolchain or k.config.get("CC_VERSION_TEXT", ""), k.config_hash[:19] or "-"]
        out.append("| " + " | ".join(md_text(c) for c in cells) + " |")
    errors = [
        f"- **{md_text(k.label)}**: {md_text(first_line(k.error))}" for k in grid.kernels if k.error
    ]
    if errors:
        out += ["", "### Kernel errors", "", *errors]
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d2430}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.6em 0 .5em}
.headline{color:#444;margin:0 0 1em} .reg{color:#b00020;font-weight:600}
table{border-collapse:collapse}
th,td{border:1px solid #c9ced6;padding:.35em .5em;vertical-align:top;text-align:left}
table.grid th{background:#eef1f5;position:sticky;top:0;z-index:1}
th.kernel{min-width:11em;background:#f7f8fa;position:sticky;left:0;z-index:1}
th.kernel small{display:block;font-weight:400;color:#555}
td.cell{min-width:7em;max-width:18em}
.scroll{overflow-x:auto;max-width:100%}
td.cell:has(details[open]){max-width:none} td.cell details[open] pre{min-width:30em}
.clamp{display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.o{font-weight:600} .why{font-size:12px;color:#333;margin-top:.2em;overflow-wrap:anywhere}
.meta{font-size:12px;color:#555} .meta a{color:#0645ad}
details summary{cursor:pointer;font-size:12px;color:#333}
pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
  overflow-wrap:anywhere;background:rgba(255,255,255,.65);padding:.3em;margin:.3em 0 0;
  max-height:22em;overflow:auto}
.pass{background:#d9f2df} .fail{background:#f9d2d2} .expected-failure{background:#e4f1ea}
.unexpected-pass{background:#ffe2b8} .not-applicable{background:#eceef1;color:#555}
.not-run{background:repeating-linear-gradient(135deg,#f4f4f4 0 8px,#e9e9e9 8px 16px);color:#555}
.not-run.failed{background:repeating-linear-gradient(135deg,#f9d2d2 0 8px,#f1bcbc 8px 16px);
  color:#1d2430}
.regression{box-shadow:inset 0 0 0 3px #b00020} .fixed{box-shadow:inset 0 0 0 3px #1565c0}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:0 .45em;border-radius:.7em;
  margin-left:.3em;color:#fff;background:#666;vertical-align:1px;box-shadow:none}
.badge.regression{background:#b00020} .badge.fixed{background:#1565c0}
.badge.never-passed,.badge.still-failing{background:#8d4b00} .badge.new{background:#2e7d32}
.badge.unchanged{display:none}
.legend span{display:inline-block;padding:.15em .6em;margin:0 .3em .3em 0;border:1px solid #c9ced6}
.error{color:#b00020;font-size:12px;font-weight:400}
"""


def _e(text: object) -> str:
    return html.escape(_clean(str(text)), quote=True)


def _href(path: str, base: Path | None) -> str:
    """A link to a log: relative to the report's directory when known, else a file: URL."""
    if base is not None:
        rel = os.path.relpath(Path(path).absolute(), base.absolute())
        return urllib.parse.quote(Path(rel).as_posix())
    return Path(path).absolute().as_uri()


def _links(cell: Cell, base: Path | None) -> str:
    links = []
    if cell.console_log:
        links.append(f'<a href="{_e(_href(cell.console_log, base))}">console log</a>')
    if cell.build_log and cell.build_failed:
        links.append(f'<a href="{_e(_href(cell.build_log, base))}">build log</a>')
    return " · ".join(links)


def html_cell(cell: Cell, base: Path | None) -> str:
    label = LABELS[cell.outcome]
    badge = ""
    if cell.change:
        badge = f'<span class="badge {_e(cell.change)}">{_e(CHANGE_LABELS[cell.change])}</span>'
    was = ""
    if cell.baseline_outcome and cell.change != UNCHANGED:
        was = f"baseline: {LABELS[cell.baseline_outcome]}"
    parts = [f'<span class="o">{_e(label)}</span>{badge}']
    if cell.reason and (cell.failed or cell.outcome in (XFAIL, NA)):
        clamp = "" if cell.failed else " clamp"
        why = first_line(cell.reason)
        parts.append(f'<div class="why{clamp}" title="{_e(why)}">{_e(why)}</div>')
    meta = [m for m in (f"{cell.seconds:.1f} s" if cell.seconds else "", was) if m]
    links = _links(cell, base)
    if meta or links:
        parts.append(
            f'<div class="meta">{_e(" · ".join(meta))}{" · " if meta and links else ""}'
            f"{links}</div>"
        )
    lines = cell.reason.strip().splitlines()[1:] + cell.evidence
    if lines:
        parts.append(
            f"<details><summary>evidence ({len(lines)} line{'s' if len(lines) != 1 else ''})"
            f"</summary><pre>{_e(chr(10).join(lines))}</pre></details>"
        )
    title = f"{cell.sample} on {cell.kernel}: {label}"
    if cell.outcome == NOT_RUN and not cell.failed:
        parts = parts[:1]
    classes = f"cell {cell.outcome} {cell.change} {'failed' if cell.failed else ''}".strip()
    return f'<td class="{_e(classes)}" title="{_e(title)}">{"".join(parts)}</td>'


def _kernel_head(k: KernelRow, base: Path | None) -> str:
    small = "".join(f"<small>{_e(b)}</small>" for b in _kernel_bits(k))
    error = ""
    if k.error:
        error = (
            f'<details class="error"><summary>{_e(first_line(k.error))}</summary>'
            f"<pre>{_e(k.error)}</pre></details>"
        )
    return f'<th class="kernel">{_e(k.label)}{small}{error}</th>'


def html_page(report: Report, base: Path | None = None) -> str:
    grid = report.grid
    regs = len(report.regressions)
    status = f'<p class="reg">{regs} regression(s) against the baseline</p>' if regs else ""
    head = "".join(f"<th>{_e(s).replace('_', '_<wbr>')}</th>" for s in grid.samples)
    rows = "".join(
        f"<tr>{_kernel_head(k, base)}{''.join(html_cell(c, base) for c in grid.row(k))}</tr>"
        for k in grid.kernels
    )
    legend = "".join(f'<span class="{o}">{_e(label)}</span>' for o, label in LABELS.items())
    details = "".join(
        "<tr>"
        + "".join(
            f"<td>{_e(v)}</td>"
            for v in (
                k.label,
                k.spec,
                k.name,
                k.arch or "-",
                k.package_version,
                k.accel or "-",
                f"{k.boot_seconds:.1f}\u00a0s",
                k.toolchain or k.config.get("CC_VERSION_TEXT", ""),
                k.config_hash[:19] or "-",  # sha256: and 12 hex digits; JSON has it all
                ", ".join(f"{o}={v}" for o, v in k.config.items() if o != "CC_VERSION_TEXT"),
                k.results_file,
            )
        )
        + "</tr>"
        for k in grid.kernels
    )
    sources = "".join(f"<li>{_e(f)}</li>" for f in grid.files)
    if report.baseline is not None:
        sources += "".join(f"<li>baseline: {_e(f)}</li>" for f in report.baseline.files)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>klp-harness report</title><style>{_CSS}</style></head><body>
<h1>klp-harness report</h1>{status}
<p class="headline">{_e(headline(report))}</p>
<div class="legend">{legend}</div>
<div class="scroll"><table class="grid"><thead><tr><th>kernel</th>{head}</tr></thead>
<tbody>{rows}</tbody></table></div>
<h2>Kernels</h2>
<div class="scroll"><table><thead><tr><th>kernel</th><th>spec</th><th>name</th>
<th>arch</th><th>package</th><th>accel</th><th>boot</th><th>toolchain</th><th>config hash</th>
<th>config</th>
<th>results file</th></tr></thead><tbody>{details}</tbody></table></div>
<h2>Results files</h2><ul>{sources}</ul>
</body></html>
"""


# -- JUnit XML ----------------------------------------------------------------------------------


def _x(text: str) -> str:
    return _clean(text)


def junit(report: Report) -> str:
    """One testsuite per kernel, one testcase per kernel x module."""
    grid = report.grid
    root = ET.Element("testsuites", name="klp-harness")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for k in grid.kernels:
        suite = ET.SubElement(root, "testsuite", name=_x(f"{k.label} ({k.spec})"))
        props = ET.SubElement(suite, "properties")
        for key in (
            "spec",
            "name",
            "release",
            "arch",
            "package_version",
            "accel",
            "toolchain",
            "config_hash",
            "console_log",
            "error",
        ):
            value = str(getattr(k, key))
            if value:
                ET.SubElement(props, "property", name=key, value=_x(value))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        seconds = 0.0
        for cell in grid.row(k):
            case = ET.SubElement(
                suite,
                "testcase",
                name=_x(cell.sample),
                classname=_x(f"klp-harness.{k.name or k.spec}"),
                time=f"{cell.seconds:.2f}",
            )
            seconds += cell.seconds
            counts["tests"] += 1
            kind = _junit_kind(cell)
            if kind is not None:
                counts[JUNIT_COUNTERS[kind]] += 1
                change = f"[{CHANGE_LABELS[cell.change]}] " if cell.change else ""
                message = f"{change}{LABELS[cell.outcome]}: {first_line(cell.reason)}"
                el = ET.SubElement(case, kind, message=_x(message))
                if kind != "skipped":
                    el.set("type", cell.outcome.value)
                    el.text = _x(cell.reason)
            out = cell.evidence + ([f"console log: {cell.console_log}"] if cell.console_log else [])
            if out:
                ET.SubElement(case, "system-out").text = _x("\n".join(out))
        for key, n in counts.items():
            suite.set(key, str(n))
            totals[key] += n
        suite.set("time", f"{seconds:.2f}")
    for key, n in totals.items():
        root.set(key, str(n))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _junit_kind(cell: Cell) -> JUnitKind | None:
    if cell.outcome in (FAIL, XPASS):
        return "failure"
    if cell.outcome == NOT_RUN:
        return "error" if cell.kernel_failed else "skipped"
    if cell.outcome == NA:
        return "skipped"
    return None
