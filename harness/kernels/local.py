"""`local:PATH`: a user's own kernel build tree, its symbol table recovered into the cache."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.kernel import Kernel
from harness.kernels.spec import Spec
from harness.kernels.verify import vmlinuz_problem


def local_store(spec: Spec) -> Path:
    """Where the recovered table of a local tree is kept."""
    assert spec.path is not None
    return cache_dir("local", re.sub(r"[^A-Za-z0-9._-]", "_", f"{spec.path}".strip("/"))[-80:])


def local_kernel(spec: Spec, quiet: bool) -> Kernel:
    tree = spec.path
    assert tree is not None
    need = {
        "bzImage": tree / "arch/x86/boot/bzImage",
        "config": tree / ".config",
        "Module.symvers": tree / "Module.symvers",
        "System.map": tree / "System.map",
    }
    missing = [f"{k} ({v})" for k, v in need.items() if not v.is_file()]
    if missing:
        raise KernelError(f"{spec.text}: not a built kernel tree, missing {', '.join(missing)}")
    if problem := vmlinuz_problem(need["bzImage"]):
        raise KernelError(f"{spec.text}: {problem}")
    release_file = tree / "include/config/kernel.release"
    if not release_file.is_file():
        raise KernelError(f"{spec.text}: {release_file} missing (run make in the tree)")
    release = release_file.read_text().strip()
    st = need["bzImage"].stat()
    store = local_store(spec)
    table, stamp = store / "kallsyms", store / "kallsyms.source"
    want = f"{st.st_size} {st.st_mtime_ns}"
    with locked(table):
        if not (table.is_file() and stamp.is_file() and stamp.read_text() == want):
            if not quiet:
                print(f"klp-harness: recovering the symbol table from {need['bzImage']}",
                      file=sys.stderr, flush=True)  # fmt: skip
            rec = kallsyms.recover(need["bzImage"], table)
            if not quiet:
                print(f"klp-harness: {rec.count} symbols in {rec.seconds:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
            atomic_write_text(stamp, want)
    installed = tree / "lib/modules" / release  # `make modules_install INSTALL_MOD_PATH=<tree>`
    modules = installed if installed.is_dir() else store / "modules" / release
    modules.mkdir(parents=True, exist_ok=True)
    return Kernel(
        spec=spec.text,
        name=f"local-{release}",
        release=release,
        package_version="local",
        vmlinuz=need["bzImage"],
        modules_dir=modules,
        config=need["config"],
        headers=tree,
        symvers=need["Module.symvers"],
        kallsyms=table,
    )
