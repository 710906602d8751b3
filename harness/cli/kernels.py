"""`klp-harness kernels list|fetch SPEC|info SPEC|verify [SPEC]`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import cache_dir, cache_root, sweep_all, sweep_owned, try_locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.acquire import acquire, cached
from harness.kernels.apt import DOWNLOAD_DIR
from harness.kernels.kernel import Kernel
from harness.kernels.local import tree_arch
from harness.kernels.resolve import load_resolution
from harness.kernels.source_build import check_build
from harness.kernels.spec import load_declared, parse_spec, resolve_name
from harness.kernels.verify import (
    MARKER,
    DamagedEntry,
    debian_entry,
    debs_problem,
    image_problem,
)

INFO_OPTIONS = ("LIVEPATCH", "KALLSYMS_ALL", "MODULE_SIG_FORCE")


def register(sub: Any) -> None:
    parser = sub.add_parser("kernels", help="list, fetch and describe kernels")
    ksub = parser.add_subparsers(dest="kernels_command", required=True, parser_class=type(parser))
    p = ksub.add_parser("list", help="kernels declared in kernels/ and which are cached")
    p.set_defaults(func=run_list)
    p = ksub.add_parser("fetch", help="download and prepare a kernel (debian:bookworm, ...)")
    p.add_argument("spec", help="kernel spec or declared kernel name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="drop what the cache holds for SPEC (entry and resolution) and fetch it again",
    )
    p.set_defaults(func=run_fetch)
    p = ksub.add_parser("info", help="describe a kernel (fetching it if needed)")
    p.add_argument("spec", help="kernel spec or declared kernel name")
    p.add_argument("--cached-only", action="store_true", help="fail instead of fetching")
    p.set_defaults(func=run_info)
    p = ksub.add_parser(
        "verify",
        help="check cached kernels against their manifests and apt's records",
        description="Check every cached kernel (or SPEC's) file by file against what was "
        "installed, and its .debs against apt's Size and SHA256; remove staging dirs left by "
        "killed runs. One line per entry; exit 20 when anything is damaged.",
    )
    p.add_argument("spec", nargs="?", help="kernel spec or declared name (default: all cached)")
    p.set_defaults(func=run_verify)


def run_list(args: argparse.Namespace) -> int:
    decls = load_declared()
    width = max((len(d.name) for d in decls), default=4)
    swidth = max((len(d.spec) for d in decls), default=4)
    for d in decls:
        try:
            kernel = cached(d.spec)
            state = f"cached {kernel.release} ({kernel.package_version})" if kernel else "-"
        except KernelError as err:
            state = "damaged" if "damaged" in str(err) else "-"
        mark = "*" if d.default else " "
        print(f"{mark} {d.name:<{width}}  {d.spec:<{swidth}}  {state:<40}  {d.description}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    start = time.monotonic()
    kernel = acquire(args.spec, printer=Printer(quiet=args.quiet), refresh=args.refresh)
    print(
        f"{kernel.name} {kernel.package_version}: {kernel.vmlinuz} "
        f"({time.monotonic() - start:.1f} s)"
    )
    return 0


def describe(kernel: Kernel) -> list[tuple[str, str]]:
    """The `kernels info` rows."""
    rows = [
        ("spec", kernel.spec),
        ("name", kernel.name),
        ("release", kernel.release),
        ("arch", kernel.arch),
        ("package version", kernel.package_version),
    ]
    rows += [("package", p) for p in kernel.packages]
    rows += [
        ("vmlinuz", str(kernel.vmlinuz)),
        ("modules", str(kernel.modules_dir)),
        ("headers", str(kernel.headers)),
        ("Module.symvers", str(kernel.symvers)),
        ("symbols", f"{kernel.kallsyms} ({kallsyms.count(kernel.kallsyms)} entries)"),
        ("config", str(kernel.config)),
        ("compiler", kernel.config_value("CC_VERSION_TEXT")),
    ]
    rows += [(f"CONFIG_{opt}", kernel.config_value(opt)) for opt in INFO_OPTIONS]
    return rows


def run_info(args: argparse.Namespace) -> int:
    kernel = cached(args.spec) if args.cached_only else acquire(args.spec, printer=Printer())
    if kernel is None:
        raise KernelError(f"{args.spec}: not in the cache (run `klp-harness kernels fetch`)")
    rows = describe(kernel)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    sys.stdout.flush()
    return 0


def run_verify(args: argparse.Namespace) -> int:
    lines = verify_spec(args.spec) if args.spec else verify_all()
    for line in lines:
        print(f"{line.name}: {line.state}")
    if not any(line.entry for line in lines):
        print(f"no cached kernels in {cache_root()}")
    sys.stdout.flush()
    bad = [line for line in lines if not line.ok]
    if bad:
        entries = sum(v.entry for v in lines)
        raise KernelError(
            f"{len(bad)} of {entries} cached kernel(s) damaged or incomplete; the next fetch "
            "or run of one installs it again, `kernels fetch --refresh SPEC` with its debs"
        )
    return 0


@dataclass(frozen=True)
class Verdict:
    name: str
    state: str
    ok: bool
    entry: bool = True  # else a staging dir swept


def _incomplete(entry: Path, what: str) -> Verdict:
    with try_locked(entry) as free:
        if not free:
            return Verdict(entry.name, "being installed now", True)
    return Verdict(entry.name, f"incomplete ({what})", False)


def _check_debian(entry: Path) -> Verdict:
    try:
        meta = debian_entry(entry)
        problem = debs_problem(cache_root() / "debs", meta) if meta else ""
    except DamagedEntry as err:
        return Verdict(entry.name, f"damaged: {err}", False)
    if meta is None:
        return _incomplete(entry, "an interrupted install; the next fetch redoes it")
    if problem:
        return Verdict(entry.name, f"damaged: {problem}", False)
    debs = f", {len(meta['debs'])} .debs" if meta.get("debs") else ""
    return Verdict(entry.name, f"ok ({len(meta['files'])} files{debs})", True)


def _check_source(entry: Path) -> Verdict:
    if not (entry / MARKER).is_file():
        return _incomplete(entry, "an interrupted build; the next one resumes it")
    problem = check_build(entry)
    return Verdict(entry.name, f"damaged: {problem}" if problem else "ok", not problem)


def _sweep() -> list[Verdict]:
    """Staging dirs of killed runs, as lines (`removed`, always ok)."""
    root = cache_root()
    removed = []
    for sub in ("kernels", "sources"):
        removed += sweep_all(root / sub)
    for builds in sorted((root / "builds").glob("*")):
        if builds.is_dir():
            removed += sweep_all(builds)
    with try_locked(root / "apt" / "lists") as mine:
        if mine:
            removed += sweep_owned(root / "debs", DOWNLOAD_DIR)
    return [
        Verdict(str(path), f"removed, left by a killed run ({size / 2**20:.1f} MiB)", True, False)
        for path, size in removed
    ]


def verify_all() -> list[Verdict]:
    """Every entry of the kernel cache (Debian kernels, source builds), then the sweep."""
    out = [_check_debian(e) for e in sorted(cache_dir("kernels").glob("debian-*")) if e.is_dir()]
    builds = sorted(cache_dir("source-builds").glob("source-*"))
    out += [_check_source(e) for e in builds if e.is_dir()]
    return out + _sweep()


def verify_spec(text: str) -> list[Verdict]:
    spec = parse_spec(resolve_name(text))
    if spec.kind == "local":
        assert spec.path is not None
        arch = tree_arch(spec.path)
        problem = image_problem(spec.path / arch.image, arch.name)
        return [Verdict(spec.text, f"damaged: {problem}" if problem else "ok", not problem)]
    if spec.kind == "source":
        try:
            kernel = cached(spec.text)
        except KernelError as err:
            return [Verdict(spec.text, str(err).removeprefix(f"{spec.text}: "), False)]
        if kernel is None:
            raise KernelError(f"{spec.text}: not in the cache")
        return [_check_source(kernel.kallsyms.parent), *_sweep()]
    res = load_resolution(spec)
    if res is None or not res.entry.is_dir():
        raise KernelError(f"{spec.text}: not in the cache")
    return [_check_debian(res.entry), *_sweep()]
