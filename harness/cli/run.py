"""`klp-harness run`: kernels x modules, a table on stdout, results as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.console import Printer
from harness.errors import UsageError
from harness.suite.results import format_table
from harness.suite.samples import all_samples, find_samples


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="build, convert and load sample modules on real kernels",
        description="Fetch each kernel, build and convert each module against it, boot the "
        "kernel once under QEMU (virtme-ng) and load every module, checking dmesg and "
        "/proc/kallsyms. Exit 0 only when every outcome is as expected.",
    )
    parser.add_argument(
        "--kernel",
        action="append",
        default=[],
        metavar="SPEC",
        help="kernel spec, repeatable (default: the default kernel in kernels/)",
    )
    parser.add_argument(
        "--matrix",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="run every kernel a kernels/*.toml file (or directory) declares, e.g. "
        "kernels/debian.toml; repeatable, adds to --kernel",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="kernels run at once (default: one per CPU core, as a TCG guest keeps one busy)",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="a sample in modules/ or your module directory (a Kbuild or Makefile with "
        "obj-m; expect.toml optional: without it, every module obj-m names must build, "
        "convert, load cleanly and unload); repeatable (default: every sample)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        metavar="DIR",
        help="where results JSON, console logs and step transcripts go (default: ./results)",
    )
    parser.add_argument(
        "--prebuilt",
        type=Path,
        metavar="KO",
        help="load this module (.ko, .ko.xz, ...) as built elsewhere (DKMS, klp-harness make) "
        "instead of building --module's sources; one --module and one kernel",
    )
    parser.add_argument(
        "--allow-no-livepatch",
        action="store_true",
        help="on kernels without CONFIG_LIVEPATCH, build anyway and expect the livepatch "
        "guard to refuse each load (without it: not applicable there)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.kernels.spec import check_spec, default_spec, load_matrix
    from harness.suite.runner import default_jobs
    from harness.suite.runner import run as run_all

    samples = [s for m in args.module for s in find_samples(m)] if args.module else all_samples()
    samples = list({(s.path, s.module): s for s in samples}.values())  # each once
    names = [s.name for s in samples]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # results and transcripts are keyed by sample name
        raise UsageError(f"--module: two modules named {', '.join(twice)}; rename a directory")
    if not samples:
        raise UsageError("no modules to run: modules/ is empty and no --module was given")
    specs = list(args.kernel)
    for matrix in args.matrix:
        specs += [d.spec for d in load_matrix(matrix)]
    specs = list(dict.fromkeys(specs)) or [default_spec()]
    for spec in specs:
        check_spec(spec)  # a bad spec is refused (exit 20) before any result is written
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs takes a number >= 1")
    jobs = min(len(specs), args.jobs or default_jobs())
    backend = None
    if args.prebuilt is not None:
        if len(samples) != 1 or len(specs) != 1:
            raise UsageError(
                "--prebuilt takes one --module and one kernel (the one it was built for)"
            )
        from harness.build.prebuilt import Prebuilt
        from harness.suite.runner import Backend

        backend = Backend(build=Prebuilt(args.prebuilt))
    results = run_all(
        specs,
        samples,
        args.results,
        printer=Printer(quiet=args.quiet),
        jobs=jobs,
        backend=backend,
        allow_no_livepatch=args.allow_no_livepatch,
    )
    print(format_table(results))
    print(f"\nresults: {results.path}")
    return 0 if results.ok else 1
