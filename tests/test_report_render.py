"""The report's renderers: Markdown, HTML, JUnit XML, JSON; hostile text stays text."""

from __future__ import annotations

import html.parser
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.report.model import Report, build
from harness.report.render import html_cell, junit, markdown, render

DATA = Path(__file__).parent / "data" / "results"
EXAMPLE = Path(__file__).parent.parent / "docs" / "matrix-example"
BOOKWORM, REGRESSED, MULTI = DATA / "bookworm", DATA / "bookworm-regressed", DATA / "multi"
HOSTILE = "a | b <script>alert(1)</script> `x` *y* [z](http://evil) & \x07bell\x1b[0m"


def regressed() -> Report:
    return build([REGRESSED, MULTI], [BOOKWORM])


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """bookworm-regressed with a reason and evidence full of markup and control characters."""
    data = json.loads((REGRESSED / "results.json").read_text())
    module = next(m for m in data["kernels"][0]["modules"] if m["sample"] == "kernel_clone")
    module["reason"] = HOSTILE + "\nsecond line ``` fence"
    module["evidence"] = [HOSTILE, "```", "</pre></details></td>"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(data))
    return run


def test_markdown_table() -> None:
    text = markdown(regressed())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| kernel |"))
    samples = regressed().grid.samples
    assert header == "| kernel | " + " | ".join(samples) + " |"  # intraword _ left alone
    rows = [line for line in lines if line.startswith("| **")]
    assert len(rows) == 4  # 5.10, 6.1, 6.12, 7.3
    assert all(row.count(" | ") == len(samples) for row in rows)
    assert "❌ fail 🔺 **new failure**" in text
    assert "⛔ **never passed**" in text
    assert "### Failures" in text and "### Kernels" in text


def test_markdown_escapes(hostile: Path) -> None:
    text = markdown(build([hostile], [BOOKWORM]))
    line = next(line for line in text.splitlines() if "kernel_clone**" in line)
    fence = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```") and (not fence or stripped == fence):
            fence = "" if fence else stripped.removesuffix("text")
        elif not fence:
            assert "<script>" not in raw and "\x07" not in raw  # raw markup only in fences
    assert "&lt;script&gt;" in line and "a \\| b" in line and "\\`x\\`" in line
    fences = [line.strip() for line in text.splitlines() if line.strip().startswith("````")]
    assert fences  # evidence holding ``` gets a longer fence
    for row in (line for line in text.splitlines() if line.startswith("| **")):
        assert row.count(" | ") == len(build([hostile]).grid.samples)


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


def test_html_self_contained_and_coloured(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    page = render(regressed(), "html", out)
    parsed = parse(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert "http://" not in page and "https://" not in page
    cells = [a for t, a in parsed.tags if t == "td" and "cell" in (a.get("class") or "")]
    assert len(cells) == 4 * 11
    classes = " ".join(a["class"] for a in cells)
    for outcome in ("pass", "fail", "expected-failure", "unexpected-pass", "not-run"):
        assert outcome in classes
    assert "regression" in classes and "never-passed" in classes
    kernels = [a for t, a in parsed.tags if t == "th" and a.get("class") == "kernel"]
    assert len(kernels) == 4


def test_html_links_console_logs_relative_to_the_report(tmp_path: Path) -> None:
    out = tmp_path / "site" / "report.html"
    out.parent.mkdir()
    page = render(build([BOOKWORM]), "html", out)
    hrefs = [a["href"] for t, a in parse(page).tags if t == "a"]
    assert hrefs
    for href in hrefs:
        assert (out.parent / href).resolve() == (
            BOOKWORM / "console-debian-6.1.0-56-amd64.log"
        ).resolve()
    page = render(build([BOOKWORM]), "html")  # stdout: absolute file: URLs
    assert all(a["href"].startswith("file:///") for t, a in parse(page).tags if t == "a")


def test_html_escapes(hostile: Path) -> None:
    page = render(build([hostile], [BOOKWORM]), "html")
    parsed = parse(page)
    assert "script" not in [t for t, _ in parsed.tags]
    assert not any(a.get("href", "").startswith("http") for _, a in parsed.tags)
    assert any("<script>alert(1)</script>" in t for t in parsed.text)  # shown as text
    assert "</pre></details></td>" in "".join(parsed.text)


def test_junit() -> None:
    root = ET.fromstring(junit(regressed()))
    suites = root.findall("testsuite")
    assert len(suites) == 4
    cases = root.findall("testsuite/testcase")
    assert len(cases) == 4 * 11
    assert len({(c.get("classname"), c.get("name")) for c in cases}) == len(cases)
    failures = root.findall("testsuite/testcase/failure")
    assert int(root.get("failures", "-1")) == len(failures) == 3
    messages = sorted(f.get("message", "") for f in failures)
    assert messages[0].startswith("[never passed] fail: expected dmesg line")
    assert sum(m.startswith("[new failure]") for m in messages) == 2
    assert int(root.get("skipped", "-1")) == len(root.findall("testsuite/testcase/skipped"))
    props = {p.get("name"): p.get("value") for p in suites[1].findall("properties/property")}
    assert props["spec"] == "debian:bookworm" and props["package_version"] == "6.1.192-2"


def test_junit_strips_control_characters(hostile: Path) -> None:
    text = junit(build([hostile]))
    root = ET.fromstring(text)  # would raise on \x07 or \x1b
    case = next(c for c in root.iter("testcase") if c.get("name") == "kernel_clone")
    failure = case.find("failure")
    assert failure is not None and "<script>alert(1)</script>" in (failure.text or "")
    assert "\x07" not in text and "\x1b" not in text


def test_json() -> None:
    data = json.loads(render(regressed(), "json"))
    assert data["schema"] == "klp-harness/report/1"
    assert data["summary"]["regressions"] == 2
    assert data["summary"]["changes"]["regression"] == 2
    bookworm = next(k for k in data["kernels"] if k["spec"] == "debian:bookworm")
    clone = next(c for c in bookworm["cells"] if c["sample"] == "kernel_clone")
    assert (
        clone["change"] == "regression" and clone["failed"] and clone["baseline_outcome"] == "pass"
    )


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_the_committed_example_report_is_regenerated_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """docs/matrix-example/report.{md,html} is what `klp-harness report` makes of the
    results.json beside it, byte for byte, run as documented: from the repository's top
    with the same relative paths (a copy of the tree, so the docs are never touched)."""
    shutil.copytree(
        EXAMPLE, tmp_path / "docs" / "matrix-example", ignore=shutil.ignore_patterns("report.*")
    )
    monkeypatch.chdir(tmp_path)
    out = Path("docs/matrix-example") / f"x.{fmt}"
    assert main(["report", "docs/matrix-example/results.json", "-o", str(out)]) == 0
    assert out.read_bytes() == (EXAMPLE / f"report.{fmt}").read_bytes()


def test_a_build_failure_links_its_build_log_not_a_console(tmp_path: Path) -> None:
    """Marked by the `build_failed` field; in files written before it, by the reason."""
    data = json.loads((BOOKWORM / "results.json").read_text())
    new, old = data["kernels"][0]["modules"][:2]
    for module, reason in ((new, "conversion failed: no such symbol"), (old, "build: make: 2")):
        module.update(outcome="fail", reason=reason, console_log="", evidence=[])
        module["build_log"] = str(tmp_path / f"{module['sample']}.build.log")
    new["build_failed"] = True
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(data))
    grid = build([run]).grid
    for module in (new, old):
        cell = grid.cell("debian:bookworm", module["sample"])
        assert cell.build_failed and cell.console_log == ""  # no guest ran it
        links = [a["href"] for t, a in parse(html_cell(cell, tmp_path)).tags if t == "a"]
        assert links == [f"{module['sample']}.build.log"]
