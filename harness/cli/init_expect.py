"""`klp-harness init-expect PATH`: a commented starting expect.toml for a user's module,
written from what a run of it (`klp-harness run --module PATH`) saw on each kernel.

The file says what the default expectation already says (builds, converts, loads with no
splat and no new taint, unloads cleanly) and adds what the run showed: the kernel lines the
module printed at load and unload, as regexes with numbers generalised, the symbols converted
and each kernel's outcome. It is checked by the same loader as every expect.toml before it is
written, atomically, and an existing expect.toml is only replaced with --force.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.fileio import atomic_write_text, open_dir, printable, write_new
from harness.suite.results import PASS, KernelResult, ModuleResult
from harness.suite.samples import (
    EXPECT_FILE,
    KLP_FOR_MODULES,
    NO_KALLSYMS_ALL,
    Sample,
    default_samples,
    no_livepatch_expectation,
    sample_from_text,
)
from harness.suite.transcript import Transcript, load_transcript, transcript_file

MAX_LINES = 12  # kernel lines kept per step: a starting point, not a log
# Lines the kernel prints once per boot or for every unsigned module, not the module's own.
NOISE = re.compile(
    r"loading out-of-tree module taints kernel|module verification failed|tainting kernel"
)
_SPECIAL = re.compile(r"[.^$*+?()\[\]{}|\\]")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z0-9_])\d+(?![A-Za-z_])")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "init-expect",
        help="write a starting expect.toml for a module from what a run of it saw",
        description="Read the newest run of the module in --results (made by `klp-harness "
        "run --module PATH`) and write PATH/expect.toml: the default expectation plus the "
        "kernel lines the module printed, the symbols converted and each kernel's outcome, "
        "as comments and regexes to edit.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="the module directory")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        metavar="DIR|FILE",
        help="a results.json, or a directory searched for the newest run of the module "
        "(default: ./results)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing expect.toml")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Seen:
    """One kernel's result for the module and, when saved, its step's transcript."""

    kernel: KernelResult
    result: ModuleResult
    transcript: Transcript | None


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_dir():
        raise UsageError(f"{printable(path)}: not a directory")
    samples = default_samples(path)
    if len(samples) > 1:
        names = ", ".join(s.module for s in samples)
        raise UsageError(
            f"{printable(path)}: builds {len(samples)} modules ({names}); an {EXPECT_FILE} "
            "describes one: give each module its own directory"
        )
    sample = samples[0]
    target = path / EXPECT_FILE
    if (target.exists() or target.is_symlink()) and not args.force:
        raise UsageError(f"{printable(target)}: exists; --force replaces it")
    source, seen = find_run(args.results, sample)
    text = render(sample, source, seen)
    sample_from_text(path, text)  # what we write loads like any expect.toml
    write(target, text, force=args.force)
    print(f"wrote {printable(target)} from {printable(source)}")
    return 0


def find_run(results: Path, sample: Sample) -> tuple[Path, list[Seen]]:
    """The newest results file with a result for `sample`, and what each kernel saw."""
    from harness.report.model import load, results_files

    files = results_files(results)
    with contextlib.suppress(OSError):
        files.sort(key=lambda f: f.stat().st_mtime, reverse=True)
    unreadable = 0
    for file in files:
        seen = []
        try:
            kernels = load(file).kernels
        except HarnessError:
            unreadable += 1  # another tool's or a damaged file: look further
            continue
        for kernel in kernels:
            for result in kernel.modules:
                if (result.sample, result.module) == (sample.name, sample.module):
                    step = transcript_file(file.parent, kernel.name, sample.name)
                    seen.append(Seen(kernel, result, _transcript(step)))
        if seen:
            return file, seen
    skipped = f" ({unreadable} unreadable results file(s) skipped)" if unreadable else ""
    raise UsageError(
        f"{printable(results)}: no run of {sample.name} (module {sample.module}){skipped}; "
        f"run `klp-harness run --module {printable(sample.path)}` first"
    )


def _transcript(path: Path) -> Transcript | None:
    if not path.is_file():
        return None
    try:
        return load_transcript(path)
    except HarnessError:
        return None  # a damaged transcript: the results still tell the outcome


def line_regex(line: str) -> str:
    """A regex matching `line`, with numbers and hex addresses generalised."""
    escaped = _SPECIAL.sub(lambda m: "\\" + m.group(), line)
    return _NUMBER.sub(lambda m: "0x[0-9a-f]+" if m.group()[:2] in "0x0X" else r"\d+", escaped)


def toml_string(text: str) -> str:
    """A TOML string: literal (no escapes to read) when it can be, else a basic string."""
    if "'" not in text and all(c == "\t" or c.isprintable() for c in text):
        return f"'{text}'"
    return json.dumps(text)


def comment(text: str) -> str:
    """One comment line's text: printable, no newline, not too long."""
    flat = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return flat if len(flat) <= 160 else flat[:157] + "..."


def kernel_lines(transcript: Transcript | None, role: str) -> list[str]:
    if transcript is None:
        return []
    lines = [line for c in transcript.commands if c.role == role for line in c.kernel]
    mine = [line for line in lines if line.strip() and not NOISE.search(line)]
    return list(dict.fromkeys(mine))[:MAX_LINES]


def _regex_array(key: str, lines: Sequence[str]) -> list[str]:
    if not lines:
        return [f"{key} = []"]
    return [f"{key} = [", *(f"    {toml_string(line_regex(line))}," for line in lines), "]"]


def render(sample: Sample, source: Path, seen: Sequence[Seen]) -> str:
    default = sample.cases[-1][1]  # the default expectation of a module without expect.toml
    livepatch = "K" in default.taint
    passed = next((s for s in seen if s.result.outcome == PASS), None)
    converted = sorted({c for s in seen for c in s.result.converted})
    out = [
        f"# expect.toml for {sample.module}, started by `klp-harness init-expect` from",
        f"# {comment(str(source))}.",
        "# Format: modules/README.md of klp-harness. The first [[expect]] whose `when` matches",
        "# a kernel applies. Without this file the harness expects what the last entry says:",
        "# builds, converts, loads with no splat and no new taint, unloads cleanly.",
        "#",
        "# What that run saw:",
    ]
    for s in seen:
        what = s.result.outcome + (f": {s.result.reason}" if s.result.reason else "")
        out.append(f"#   {comment(s.kernel.spec)} ({comment(s.kernel.release)}): {comment(what)}")
        out += [f"#     {comment(e)}" for e in s.result.evidence if "verified in memory" in e]
    out += ["", f"description = {toml_string(sample.module)}", f'module = "{sample.module}"']
    if not livepatch:
        since = ".".join(map(str, KLP_FOR_MODULES))
        out.append(f'min_kernel = "{since}"  # the loader applies klp relocations since {since}')
    refusal = no_livepatch_expectation(sample.module, livepatch)
    out += [
        "",
        "[convert]",
        "# Empty: every symbol the kernel does not export. That run converted:",
        f"#   {comment(' '.join(converted) or 'nothing')}",
        "# List names to convert only those; `sympos = { name = 2 }` picks one of several.",
        "symbols = []",
        "",
        "[[expect]]",
        'when = { config = { KALLSYMS_ALL = "n", LIVEPATCH = "n" } }',
        'outcome = "not-applicable"',
        f"reason = {toml_string(NO_KALLSYMS_ALL)}",
        "",
        "[[expect]]",
        "# Without CONFIG_LIVEPATCH the load is refused (klp relocations would stay 0).",
        'when = { config = { LIVEPATCH = "n" } }',
        'outcome = "refused"',
        f"reason = {toml_string(refusal.reason)}",
        f"dmesg = [{toml_string(refusal.dmesg[0])}]",
        "",
        "[[expect]]",
        'outcome = "pass"',
    ]
    if livepatch:
        out.append('taint = "K"  # a livepatch module taints the kernel with K')
    if passed is None:
        out += [
            "# No kernel passed in that run: fix the module, or say it must be refused with",
            '# outcome = "refused" and the dmesg lines of the refusal.',
        ]
    else:
        where = f"{comment(passed.kernel.spec)}"
        out += [
            f"# Kernel lines of the load on {where}, numbers generalised: each regex must",
            "# match a line the insmod step printed. Delete what your module need not print.",
            *_regex_array("dmesg", kernel_lines(passed.transcript, "insmod")),
            "# The same for rmmod.",
            *_regex_array("rmmod_dmesg", kernel_lines(passed.transcript, "rmmod")),
        ]
    for check in default.checks:  # a livepatch's disable before rmmod
        out += ["", "[[expect.check]]", f"cmd = '''\n{check.cmd}'''"]
        out.append(f"output = [{', '.join(toml_string(o) for o in check.output)}]")
    out += [
        "",
        "# [[expect.check]]    # a shell command run in the guest while the module is loaded",
        f'# cmd = "cat /sys/module/{sample.module.replace("-", "_")}/refcnt"',
        "# output = ['^0$']    # regexes its output must match; also dmesg = [...], status = 0",
    ]
    return "\n".join(out) + "\n"


def write(target: Path, text: str, *, force: bool) -> None:
    """Atomically: a temporary file, then a rename (--force) or a link that fails when
    `target` appeared meanwhile, so an existing file is never half-replaced or clobbered."""
    if force:
        atomic_write_text(target, text)
        return
    temp = f".{target.name}.{os.getpid()}.tmp"
    directory = open_dir(target.parent)
    try:
        write_new(temp, text.encode(), dir_fd=directory)
        try:
            os.link(temp, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except FileExistsError:
            raise UsageError(f"{printable(target)}: exists; --force replaces it") from None
        finally:
            os.unlink(temp, dir_fd=directory)
    finally:
        os.close(directory)
