"""`local:PATH`: a user's own kernel build tree, its symbol table recovered into the cache."""

from __future__ import annotations

from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.kernel import Kernel, KernelMeta
from harness.kernels.spec import Spec
from harness.kernels.verify import vmlinuz_problem


def local_store(spec: Spec) -> Path:
    """Where the recovered table of a local tree is kept."""
    assert spec.path is not None
    return cache_dir("local", cache_key(str(spec.path).strip("/")[-80:]))


def local_kernel(spec: Spec, *, printer: Printer | None = None) -> Kernel:
    """The kernel of a built tree, its symbol table recovered (again when bzImage changed)."""
    printer = printer or Printer()
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
            printer.say(f"recovering the symbol table from {need['bzImage']}")
            rec = kallsyms.recover(need["bzImage"], table)
            printer.say(f"{rec.count} symbols in {rec.seconds:.1f} s")
            atomic_write_text(stamp, want)
    installed = tree / "lib/modules" / release  # `make modules_install INSTALL_MOD_PATH=<tree>`
    modules = installed if installed.is_dir() else store / "modules" / release
    modules.mkdir(parents=True, exist_ok=True)
    meta = KernelMeta(
        name=f"local-{release}",
        release=release,
        package_version="local",
        packages=[],
        vmlinuz=str(need["bzImage"]),
        modules_dir=str(modules),
        config=str(need["config"]),
        headers=str(tree),
    )
    return Kernel.from_meta(spec.text, store, meta)
