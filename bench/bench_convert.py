#!/usr/bin/env python3
"""Benchmark `klp-harness convert` on the largest .ko of a Debian kernel image package.

A few hundred of the module's undefined symbols are treated as unexported (a
Module.symvers without them, a symbol table with them); the conversion is timed
in-process and as the CLI, against `objcopy IN OUT` on the same file in the same run.
Prints relocations per second, peak RSS and the ratio to objcopy.

    python bench/bench_convert.py                  # downloads the image package into the cache
    python bench/bench_convert.py --ko FILE.ko     # or any module
    python bench/bench_convert.py --deb FILE.deb
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.cache import cache_dir

DEFAULT_PACKAGE = "linux-image-6.1.0-56-amd64-unsigned"
TARGET_RATIO = 3.0
TARGET_RSS_MB = 200


def fetch(package: str, deb: Path | None) -> Path:
    """The extracted package root in the cache (downloaded with `apt-get download`)."""
    work = cache_dir("bench", package)
    root = work / "root"
    if (root / "lib").is_dir():
        return root
    if deb is None:
        subprocess.run(["apt-get", "download", package], cwd=work, check=True)
        deb = next(work.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def largest_module(root: Path) -> Path:
    mods = [p for p in root.glob("lib/modules/*/kernel/**/*.ko*") if p.is_file()]
    if not mods:
        sys.exit(f"no modules under {root}/lib/modules/*/kernel")
    best = max(mods, key=lambda p: p.stat().st_size)
    if best.suffix != ".ko":
        sys.exit(f"{best}: compressed module; give an uncompressed one with --ko")
    return best


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def child_run(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ko", type=Path, help="module to convert (skips the download)")
    parser.add_argument("--deb", type=Path, help="an image package already downloaded")
    parser.add_argument("--package", default=DEFAULT_PACKAGE)
    parser.add_argument("--count", type=int, default=300, help="symbols treated as unexported")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from harness.klp.convert import convert_module, undefined_symbols
    from harness.klp.symbols import SymbolTable

    ko = args.ko or largest_module(fetch(args.package, args.deb))
    work = cache_dir("bench", "work")
    undefined = sorted(undefined_symbols(ko))
    chosen = undefined[: args.count]
    symvers = work / "Module.symvers"
    symvers.write_text(
        "".join(f"0x00000000\t{n}\tvmlinux\tEXPORT_SYMBOL\t\n" for n in undefined[args.count :])
    )
    system_map = work / "System.map"
    system_map.write_text(
        "".join(f"{0xFFFFFFFF81000000 + 16 * i:016x} T {n}\n" for i, n in enumerate(chosen))
    )
    out, copy = work / "out.ko", work / "objcopy.ko"
    table = SymbolTable.load(system_map)
    exports = set(undefined[args.count :])

    t_objcopy = best_of(
        args.runs, lambda: subprocess.run(["objcopy", str(ko), str(copy)], check=True)
    )
    report = convert_module(ko, out, symtab=table, exports=exports)
    t_lib = best_of(args.runs, lambda: convert_module(ko, out, symtab=table, exports=exports))
    cli = [
        sys.executable,
        "-m",
        "harness.cli.main",
        "convert",
        str(ko),
        "-o",
        str(out),
        "--system-map",
        str(system_map),
        "--symvers",
        str(symvers),
    ]
    cli_runs = [child_run(cli) for _ in range(args.runs)]
    t_cli = min(t for t, _ in cli_runs)
    rss = max(r for _, r in cli_runs)
    _, rss_oc = child_run(["objcopy", str(ko), str(copy)])
    # the fixed cost of any Python CLI run: interpreter, numpy/pyelftools, the argparse tree
    startup = [
        sys.executable,
        "-c",
        "import numpy, elftools.elf.elffile, harness.cli.main; harness.cli.main.build_parser()",
    ]
    t_start = min(child_run(startup)[0] for _ in range(args.runs))

    relocs = report.relocations
    print(f"module:        {ko} ({ko.stat().st_size / 1e6:.1f} MB, {len(undefined)} undefined)")
    print(f"converted:     {len(report.converted)} symbols, {relocs} relocations")
    print(f"objcopy:       {t_objcopy * 1000:.0f} ms (peak RSS {rss_oc:.0f} MB)")
    print(
        f"library:       {t_lib * 1000:.0f} ms, {relocs / t_lib:,.0f} relocations/s, "
        f"ratio to objcopy {t_lib / t_objcopy:.2f}x"
    )
    print(
        f"CLI (process): {t_cli * 1000:.0f} ms, {relocs / t_cli:,.0f} relocations/s, "
        f"ratio to objcopy {t_cli / t_objcopy:.2f}x, peak RSS {rss:.0f} MB"
    )
    print(
        f"CLI startup:   {t_start * 1000:.0f} ms of it (interpreter + imports); "
        f"CLI minus startup: {(t_cli - t_start) / t_objcopy:.2f}x objcopy"
    )
    ok = t_cli / t_objcopy <= TARGET_RATIO and rss < TARGET_RSS_MB
    print(
        f"target (CLI <= {TARGET_RATIO}x objcopy, RSS < {TARGET_RSS_MB} MB): "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
