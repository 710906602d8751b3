"""Kernel acquisition: a spec in, a ready `Kernel` out (packages fetched with apt through a
private root, extracted into the cache, headers made buildable, symbol table recovered).
A Debian kernel of another architecture (arm64) comes through that architecture's apt root;
its entry records `arch`, and its symbol table is placed by the link addresses of its headers'
BTF vmlinux (see harness.kernels.anchors)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.cache import (
    atomic_write_text,
    cache_dir,
    locked,
    remove_tree,
    staged_dir,
    sweep_staging,
)
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.anchors import link_addresses
from harness.kernels.apt import HOST_DEBIAN_ARCH, AptRoot, pdeathsig, private_root
from harness.kernels.arch import HOST, find_arch
from harness.kernels.kernel import Kernel
from harness.kernels.local import local_kernel, local_store
from harness.kernels.resolve import (
    Pkg,
    Resolution,
    load_resolution,
    resolution_file,
    resolve_fresh,
)
from harness.kernels.source_build import cached_source_kernel, source_kernel
from harness.kernels.spec import Spec, parse_spec, resolve_name
from harness.kernels.verify import (
    MARKER,
    DamagedEntry,
    deb_problem,
    debian_entry,
    debian_kernel,
    debian_rels,
    digest,
    image_problem,
    record,
)

MAX_AGE = 24 * 3600  # a suite's resolution is redone after this long (an ABI's never)
KERNEL_HALF = 0xFFFF000000000000  # arm64 kernel addresses are above (any VA_BITS >= 48)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# -- extraction into the cache ----------------------------------------------------------------


def image_paths(root: Path, abi: str) -> dict[str, Path]:
    """Where the files are: /boot and /lib/modules up to 6.12, /usr/lib/modules/<abi> from 7.x."""
    split = root / "usr/lib/modules" / abi
    if (split / "vmlinuz").is_file():
        return {"vmlinuz": split / "vmlinuz", "config": split / "config", "modules_dir": split}
    modules = root / "lib/modules" / abi
    if not modules.is_dir():
        modules = split
    image = root / "boot" / f"vmlinuz-{abi}"
    elf = root / "boot" / f"vmlinux-{abi}"  # ppc64el: the ELF image itself
    return {
        "vmlinuz": elf if elf.is_file() and not image.is_file() else image,
        "config": root / "boot" / f"config-{abi}",
        "modules_dir": modules,
    }


def _fix_headers(tree: Path, final_root: Path) -> None:
    """Point the arch Makefile's absolute /usr/src/... paths (include, KBUILD_OUTPUT) at the
    cache; `scripts`/`tools` are relative links that already resolve inside the root."""
    makefile = tree / "Makefile"
    if not makefile.is_file():
        raise KernelError(f"{tree}: headers package has no Makefile")
    text = makefile.read_text()
    fixed = re.sub(r"(?<![\w/])/usr/src/", f"{final_root}/usr/src/", text)
    atomic_write_text(makefile, fixed)
    if not (tree / "scripts").resolve().is_dir():
        raise KernelError(f"{tree}/scripts does not resolve: linux-kbuild package missing?")


def _extract(deb: Path, root: Path, printer: Printer) -> None:
    printer.say(f"extracting {deb.name}")
    proc = subprocess.run(
        [*pdeathsig(), "dpkg-deb", "-x", str(deb), str(root)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise KernelError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()[-300:]}")


def _fetch_debs(
    apt: AptRoot | None, res: Resolution, printer: Printer, arch: str = HOST_DEBIAN_ARCH
) -> Path:
    """Every .deb of `res` in the cache and as apt recorded it (Size, SHA256): a damaged one
    is fetched again, saying so. `arch` is the kernel's Debian architecture: its packages come
    through its root, the host's linux-kbuild through the host's."""
    debs = cache_dir("debs")
    missing = []
    for p in res.packages:
        path = debs / p.deb
        if path.is_file():
            if not (problem := deb_problem(path, p.size, p.sha256)):
                continue
            printer.warn(f"{p.deb}: cached file damaged ({problem}), fetching again")
            path.unlink()
        missing.append(p)
    if not missing:
        return debs
    total = sum(p.size for p in missing)
    printer.say(f"downloading {len(missing)} packages ({_mib(total)})")
    if not printer.tty:  # a log names them; a terminal shows a progress bar
        for p in missing:
            printer.say(f"  {p.name} {p.version} ({_mib(p.size)})")
    by_root: dict[str, list[Pkg]] = {}
    for p in missing:
        by_root.setdefault(HOST_DEBIAN_ARCH if p.arch == HOST_DEBIAN_ARCH else arch, []).append(p)
    for root_arch, pkgs in by_root.items():
        # `apt`, when given, is the root the resolution came from: the kernel's architecture's
        root = apt if apt is not None and root_arch == arch else private_root(root_arch)
        with locked(root.root / "lists"):  # apt-get reads the lists an update rewrites
            wanted = [(p.name, p.version) for p in pkgs]
            root.download(wanted, debs, printer=printer, size=sum(p.size for p in pkgs))
    for p in missing:
        path = debs / p.deb
        if not path.is_file():
            raise KernelError(f"download failed: apt-get did not produce {p.deb}")
        if problem := deb_problem(path, p.size, p.sha256):
            path.unlink()
            raise KernelError(f"download of {p.deb} is damaged ({problem})")
    return debs


_said: set[Path] = set()  # damaged entries already reported by this process


def _sound(entry: Path, printer: Printer) -> dict[str, Any] | None:
    """The kernel.json of an installed entry that matches its manifest; a damaged one is
    said so (once) and is then installed again."""
    try:
        return debian_entry(entry)
    except DamagedEntry as err:
        if entry not in _said:
            printer.warn(f"{entry}: cached kernel damaged ({err}), installing it again")
            _said.add(entry)
        return None


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def _symbols(vmlinuz: Path, headers: Path, out: Path, arch: str) -> kallsyms.Recovered:
    """The recovered table. For another architecture the tool may guess the Image's base
    wrong (7.x arm64: _text at 0x3240000): the link addresses in the headers' BTF vmlinux
    place it; without that file (6.1) the tool read an absolute base from the image, which
    must then lie in the kernel half."""
    if arch == HOST:
        return kallsyms.recover(vmlinuz, out)
    btf = headers / "vmlinux"
    if btf.is_file():
        anchors: dict[str, int] | None = link_addresses(btf)
    elif _is_elf(vmlinuz):  # ppc64el ships the unstripped ELF image
        anchors = link_addresses(vmlinuz)
    else:
        anchors = None
    rec = kallsyms.recover(vmlinuz, out, anchors=anchors)
    if anchors is None:
        first = next(iter(kallsyms.read(out)), None)
        if first is None or first.address < KERNEL_HALF:
            raise KernelError(
                f"{vmlinuz}: symbol table recovered at {first.address if first else 0:#x}, "
                "not in the kernel half, and the headers ship no vmlinux to place it by"
            )
    return rec


def _install(apt: AptRoot | None, res: Resolution, spec: Spec, printer: Printer) -> Kernel:
    entry = res.entry
    with locked(entry):
        if meta := _sound(entry, printer):  # installed, or just repaired
            return Kernel.from_meta(spec.text, entry, debian_kernel(meta))
        for path, size in sweep_staging(entry):
            printer.warn(f"removed {path}, left by an interrupted run ({_mib(size)})")
        debs = _fetch_debs(apt, res, printer, find_arch(spec.arch).debian)
        with staged_dir(entry) as tmp:
            root = tmp / "root"
            root.mkdir()
            for p in res.packages:
                _extract(debs / p.deb, root, printer)
            paths = image_paths(root, res.abi)
            if not paths["vmlinuz"].is_file():
                names = ", ".join(p.name for p in res.packages)
                raise KernelError(f"{spec.text}: no vmlinuz for {res.abi} in {names}")
            if problem := image_problem(paths["vmlinuz"], spec.arch):
                raise KernelError(f"{spec.text}: {problem}")
            headers = root / "usr/src" / f"linux-headers-{res.abi}"
            _fix_headers(headers, entry / "root")
            printer.say(f"recovering the symbol table from {paths['vmlinuz'].name}")
            rec = _symbols(paths["vmlinuz"], headers, tmp / "kallsyms", spec.arch)
            printer.say(f"{rec.count} symbols in {rec.seconds:.1f} s")
            info: dict[str, Any] = {
                "abi": res.abi,
                "version": res.version,
                "packages": [f"{p.name}={p.version}" for p in res.packages],
                **{k: str(v.relative_to(tmp)) for k, v in paths.items()},
                "headers": str(headers.relative_to(tmp)),
                "symbols": rec.count,
                "symbols_seconds": round(rec.seconds, 2),
                "debs": {p.deb: list(digest(debs / p.deb)) for p in res.packages},
            }
            if spec.arch != HOST:
                info["arch"] = spec.arch
            info["files"] = record(tmp, debian_rels(tmp, info))
            atomic_write_text(tmp / "kernel.json", json.dumps(info, indent=1))
            (tmp / MARKER).touch()
    installed = debian_entry(entry)
    if installed is None:
        raise KernelError(f"{entry}: not installed after installing it")
    return Kernel.from_meta(spec.text, entry, debian_kernel(installed))


def cached(spec: str) -> Kernel | None:
    """The kernel from the cache only (whatever the resolution's age); never calls apt.
    A damaged entry is a KernelError saying how to repair it."""
    parsed = parse_spec(resolve_name(spec))
    if parsed.kind == "local":
        return local_kernel(parsed, printer=Printer().silent())
    if parsed.kind == "source":
        return cached_source_kernel(parsed)
    res = load_resolution(parsed)
    if res is None:
        return None
    try:
        meta = debian_entry(res.entry)
    except DamagedEntry as err:
        raise KernelError(
            f"{parsed.text}: cached kernel {res.entry} damaged ({err}); "
            f"`klp-harness kernels fetch {parsed.text}` installs it again"
        ) from None
    return Kernel.from_meta(parsed.text, res.entry, debian_kernel(meta)) if meta else None


def acquire(spec: str, *, printer: Printer | None = None, refresh: bool = False) -> Kernel:
    """Fetch (or find in the cache) the kernel `spec` names; see kernels/README.md.
    `refresh` drops what the cache holds for it first (entry and resolution)."""
    printer = printer or Printer()
    parsed = parse_spec(resolve_name(spec))
    if parsed.kind == "source":
        if refresh:
            _drop_source(parsed, printer)
        return source_kernel(parsed, printer=printer)
    if parsed.kind == "local":
        if refresh:
            store = local_store(parsed)
            with locked(store / "kallsyms"):
                remove_tree(store)
        return local_kernel(parsed, printer=printer)
    res = load_resolution(parsed)
    if refresh:
        resolution_file(parsed).unlink(missing_ok=True)
        if res is not None:
            _drop(res.entry, printer)
        res = None
    if res is not None and (parsed.kind == "debian-abi" or time.time() - res.time < MAX_AGE):
        meta = _sound(res.entry, printer)
        if meta is not None:  # warm: no apt at all
            return Kernel.from_meta(parsed.text, res.entry, debian_kernel(meta))
    apt, res = resolve_fresh(parsed, printer=printer)
    if refresh:
        _drop(res.entry, printer)
    return _install(apt, res, parsed, printer)


def _drop(entry: Path, printer: Printer) -> None:
    if entry.exists():
        with locked(entry):
            remove_tree(entry)
        printer.say(f"dropped {entry}")


def _drop_source(spec: Spec, printer: Printer) -> None:
    if spec.path is not None:
        raise KernelError(
            f"{spec.text}: --refresh takes debian:, local: and source:X.Y: specs; for a tree "
            f"of your own remove its build in {cache_dir('source-builds')}"
        )
    try:
        kernel = cached_source_kernel(spec)
    except KernelError:  # damaged: source_kernel builds it again anyway
        return
    if kernel is not None:
        _drop(kernel.kallsyms.parent, printer)
