#!/usr/bin/env python3
"""Benchmark `klp-harness convert` on the largest .ko of a Debian kernel image package.

A few hundred of the module's undefined symbols are treated as unexported (a
Module.symvers without them, a symbol table with them); the conversion is timed
in-process and as the `klp-harness convert` process, against the `objcopy IN OUT`
process on the same file, interleaved in the same run. Prints relocations per second,
peak RSS, the start-up parts (interpreter, the CLI's and the converter's imports) and the
ratio of the process to objcopy, with the target (at most 3x).

    python bench/bench_convert.py                  # downloads the image package into the cache
    python bench/bench_convert.py --ko FILE.ko     # or any module
    python bench/bench_convert.py --deb FILE.deb
    python bench/bench_convert.py --ko arm.ko      # AArch64: against aarch64-linux-gnu-objcopy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.cache import cache_dir

DEFAULT_PACKAGE = "linux-image-6.1.0-56-amd64-unsigned"
TARGET_RATIO = 3.0
TARGET_RSS_MB = 200
# The objcopy that knows the module's machine (e_machine at offset 18): the host's for x86-64.
OBJCOPY = {62: "objcopy", 183: "aarch64-linux-gnu-objcopy"}


def objcopy_for(ko: Path) -> str:
    with open(ko, "rb") as handle:
        machine = int.from_bytes(handle.read(20)[18:20], "little")
    if machine not in OBJCOPY:
        sys.exit(f"{ko}: no objcopy known for e_machine {machine}")
    return OBJCOPY[machine]


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


@dataclass
class Runs:
    """Wall and CPU (user + system, children's threads included) seconds, and peak RSS."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_mb: float = 0.0


def child_run(argv: list[str], runs: Runs, env: dict[str, str]) -> None:
    """One child process: its wall time, CPU time and peak RSS added to `runs`."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    runs.wall.append(time.perf_counter() - start)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(argv)}")
    runs.cpu.append(usage.ru_utime + usage.ru_stime)
    runs.rss_mb = max(runs.rss_mb, usage.ru_maxrss / 1024)


def child_env(pycache: Path) -> dict[str, str]:
    """As an installed package runs: bytecode cached (in `pycache`, not in the tree), even
    where the caller's environment says PYTHONDONTWRITEBYTECODE."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def measure_here(processes: dict[str, list[str]], runs: int) -> dict[str, Runs]:
    """Each process `runs` times, interleaved so that load on the machine hits all alike,
    after one warm-up run of each (page cache, bytecode cache)."""
    results = {name: Runs() for name in processes}
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as pycache:
        env = child_env(Path(pycache))
        for argv in processes.values():
            child_run(argv, Runs(), env)
        for _ in range(runs):
            for name, argv in processes.items():
                child_run(argv, results[name], env)
    return results


def measure(processes: dict[str, list[str]], runs: int) -> dict[str, Runs]:
    """measure_here() in a fresh small process: a child's peak RSS starts at that of the
    process it is forked from, and this one has held the whole module."""
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", str(runs)],
        input=json.dumps(processes),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return {name: Runs(**fields) for name, fields in json.loads(proc.stdout).items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ko", type=Path, help="module to convert (skips the download)")
    parser.add_argument("--deb", type=Path, help="an image package already downloaded")
    parser.add_argument("--package", default=DEFAULT_PACKAGE)
    parser.add_argument("--count", type=int, default=300, help="symbols treated as unexported")
    parser.add_argument("--runs", type=int, default=7, help="runs of each process (best kept)")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # see measure()
    args = parser.parse_args()
    if args.measure:
        results = measure_here(json.loads(sys.stdin.read()), args.measure)
        print(json.dumps({name: asdict(runs) for name, runs in results.items()}))
        return 0

    from harness.klp.convert import ConvertReport, convert_module, undefined_symbols
    from harness.klp.symbols import SymbolTable, load_symvers
    from harness.paths import python_tool

    ko = args.ko or largest_module(fetch(args.package, args.deb))
    work = cache_dir("bench", "work")
    undefined = sorted(undefined_symbols(ko))
    chosen = undefined[: args.count]
    symvers = work / "Module.symvers"
    # klp_enable_patch with a CRC: the livepatch guard's __versions entry is written too
    exported = [*undefined[args.count :], "klp_enable_patch"]
    symvers.write_text("".join(f"0x0000abcd\t{n}\tvmlinux\tEXPORT_SYMBOL\t\n" for n in exported))
    system_map = work / "System.map"
    system_map.write_text(
        "".join(f"{0xFFFFFFFF81000000 + 16 * i:016x} T {n}\n" for i, n in enumerate(chosen))
    )
    out, copy = work / "out.ko", work / "objcopy.ko"
    table = SymbolTable.load(system_map)
    exports = load_symvers(symvers)

    def convert() -> ConvertReport:
        return convert_module(ko, out, symtab=table, exports=exports, versions=exports)

    report = convert()
    t_lib = best_of(args.runs, convert)

    entry = python_tool("klp-harness")
    cli = [entry] if entry else [sys.executable, "-m", "harness.cli.main"]
    cli += ["convert", str(ko), "-o", str(out), "--system-map", str(system_map)]
    cli += ["--symvers", str(symvers), "--strip-signature"]  # Debian signs its modules
    py = [sys.executable, "-c"]
    processes = {
        "objcopy": [objcopy_for(ko), str(ko), str(copy)],
        "klp-harness convert": cli,
        "python (empty)": [*py, "pass"],
        "python + CLI imports": [*py, "import harness.cli.main, harness.cli.convert"],
        "python + klp imports": [*py, "import harness.cli.main, harness.klp.convert"],
    }
    results = measure(processes, args.runs)

    oc, conv = results["objcopy"], results["klp-harness convert"]
    wall_ratio = min(conv.wall) / min(oc.wall)
    cpu_ratio = min(conv.cpu) / min(oc.cpu)
    relocs = report.relocations
    print(f"module:        {ko} ({ko.stat().st_size / 1e6:.1f} MB, {len(undefined)} undefined)")
    print(f"objcopy:       {objcopy_for(ko)}")
    print(f"converted:     {len(report.converted)} symbols, {relocs} relocations")
    print(f"command:       {' '.join(cli[:2])} ...")
    print(
        f"library:       {ms(t_lib)}, {relocs / t_lib:,.0f} relocations/s "
        "(in-process, imports done)"
    )
    print(f"processes, best of {args.runs} (wall / CPU user+sys / peak RSS):")
    for name, runs in results.items():
        print(
            f"  {name:22} {ms(min(runs.wall)):>7} / {ms(min(runs.cpu)):>7} / {runs.rss_mb:4.0f} MB"
        )
    print(
        f"ratio klp-harness convert / objcopy (process): {wall_ratio:.2f}x wall, "
        f"{cpu_ratio:.2f}x CPU"
    )
    ok = wall_ratio <= TARGET_RATIO and conv.rss_mb < TARGET_RSS_MB
    print(
        f"target: process <= {TARGET_RATIO:.0f}x objcopy (wall), RSS < {TARGET_RSS_MB} MB: "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
