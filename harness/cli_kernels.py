"""`klp-harness kernels list|fetch SPEC|info SPEC`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness import kallsyms
from harness.acquire import acquire, cached
from harness.errors import KernelError
from harness.kernel import Kernel
from harness.kernels import load_declared

INFO_OPTIONS = ("LIVEPATCH", "KALLSYMS_ALL", "MODULE_SIG_FORCE")


def register(sub: Any) -> None:
    parser = sub.add_parser("kernels", help="list, fetch and describe kernels")
    ksub = parser.add_subparsers(dest="kernels_command", required=True, parser_class=type(parser))
    p = ksub.add_parser("list", help="kernels declared in kernels/ and which are cached")
    p.set_defaults(func=run_list)
    p = ksub.add_parser("fetch", help="download and prepare a kernel (debian:bookworm, ...)")
    p.add_argument("spec", help="kernel spec or declared kernel name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_fetch)
    p = ksub.add_parser("info", help="describe a kernel (fetching it if needed)")
    p.add_argument("spec", help="kernel spec or declared kernel name")
    p.add_argument("--cached-only", action="store_true", help="fail instead of fetching")
    p.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    decls = load_declared()
    width = max((len(d.name) for d in decls), default=4)
    swidth = max((len(d.spec) for d in decls), default=4)
    for d in decls:
        try:
            kernel = cached(d.spec)
        except KernelError:
            kernel = None
        state = f"cached {kernel.release} ({kernel.package_version})" if kernel else "-"
        mark = "*" if d.default else " "
        print(f"{mark} {d.name:<{width}}  {d.spec:<{swidth}}  {state:<40}  {d.description}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    start = time.monotonic()
    kernel = acquire(args.spec, quiet=args.quiet)
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
    kernel = cached(args.spec) if args.cached_only else acquire(args.spec, quiet=False)
    if kernel is None:
        raise KernelError(f"{args.spec}: not in the cache (run `klp-harness kernels fetch`)")
    rows = describe(kernel)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    sys.stdout.flush()
    return 0
