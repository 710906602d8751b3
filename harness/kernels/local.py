"""`local:PATH`: a user's own kernel build tree, its symbol table recovered into the cache."""

from __future__ import annotations

from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.arch import HOST, Arch, arch_of_config, arches, find_arch
from harness.kernels.kernel import Kernel, KernelMeta, read_config
from harness.kernels.spec import Spec
from harness.kernels.verify import image_problem


def local_store(spec: Spec) -> Path:
    """Where the recovered table of a local tree is kept."""
    assert spec.path is not None
    return cache_dir("local", cache_key(str(spec.path).strip("/")[-80:]))


def tree_arch(tree: Path) -> Arch:
    """The architecture a built tree's .config was made for (the host's without one)."""
    config = tree / ".config"
    if not config.is_file():
        return find_arch(HOST)
    arch = arch_of_config(read_config(config))
    if arch is None:
        raise KernelError(f"{config}: a .config for none of {', '.join(arches())}")
    return arch


def local_kernel(spec: Spec, *, printer: Printer | None = None) -> Kernel:
    """The kernel of a built tree, its symbol table recovered (again when its boot image
    changed); the architecture is the one its .config was made for."""
    printer = printer or Printer()
    tree = spec.path
    assert tree is not None
    config = tree / ".config"
    arch = tree_arch(tree)
    image_name = Path(arch.image).name
    need = {
        image_name: tree / arch.image,
        "config": config,
        "Module.symvers": tree / "Module.symvers",
        "System.map": tree / "System.map",
    }
    missing = [f"{k} ({v})" for k, v in need.items() if not v.is_file()]
    if missing:
        raise KernelError(f"{spec.text}: not a built kernel tree, missing {', '.join(missing)}")
    if problem := image_problem(need[image_name], arch.name):
        raise KernelError(f"{spec.text}: {problem}")
    release_file = tree / "include/config/kernel.release"
    if not release_file.is_file():
        raise KernelError(f"{spec.text}: {release_file} missing (run make in the tree)")
    release = release_file.read_text().strip()
    st = need[image_name].stat()
    store = local_store(spec)
    table, stamp = store / "kallsyms", store / "kallsyms.source"
    want = f"{st.st_size} {st.st_mtime_ns}"
    with locked(table):
        if not (table.is_file() and stamp.is_file() and stamp.read_text() == want):
            printer.say(f"recovering the symbol table from {need[image_name]}")
            rebase = None if arch.name == HOST else need["System.map"]
            if arch.symbols == "system-map":
                rec = kallsyms.from_system_map(need["System.map"], table)
            else:
                rec = kallsyms.recover(need[image_name], table, system_map=rebase)
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
        vmlinuz=str(need[image_name]),
        modules_dir=str(modules),
        config=str(need["config"]),
        arch=arch.name,
        headers=str(tree),
    )
    return Kernel.from_meta(spec.text, store, meta)
