"""Kernel acquisition: a spec in, a ready `Kernel` out (packages fetched with apt through a
private root, extracted into the cache, headers made buildable, symbol table recovered)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import kallsyms
from harness.apt import AptRoot, find_mirrors, parse_depends, read_host_sources
from harness.cache import atomic_write_text, cache_dir, locked, staged_dir
from harness.errors import KernelError
from harness.kbuild import cached_source_kernel, source_kernel
from harness.kernel import Kernel
from harness.kernels import _ABI, Spec, parse_spec, resolve_name

RESOLUTION_MAX_AGE = 24 * 3600
MARKER = ".complete"
_HEADERS_DEP = re.compile(r"^linux-(headers|kbuild)-")
_SIGNED = re.compile(r"^linux-(image|binary)-.*(?<!-unsigned)$")


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    arch: str
    size: int

    @property
    def deb(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


@dataclass(frozen=True)
class Resolution:
    abi: str
    version: str
    packages: tuple[Pkg, ...]
    time: float

    @property
    def entry(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9.+~_-]", "_", self.version)
        return cache_dir("kernels") / f"debian-{self.abi}_{safe}"


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"klp-harness: {msg}", file=sys.stderr, flush=True)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# -- resolution through apt's dependency data ---------------------------------------------------


def _record(apt: AptRoot, ref: str, pins: dict[str, int] | None) -> dict[str, str] | None:
    return apt.show(ref, pins)


def _resolve(apt: AptRoot, spec: Spec) -> Resolution:
    pins = spec.suite_priorities() or None
    if spec.kind == "debian-suite":
        meta_name = f"linux-image-{spec.flavour}"
        meta = _record(apt, meta_name, pins)
        if meta is None:
            raise KernelError(f"{spec.text}: no {meta_name} in {spec.suite}")
        image_deps = [
            d
            for d in parse_depends(meta.get("Depends", ""))
            if d.name.startswith("linux-image-") and _ABI.match(d.name[12:])
        ]
        if not image_deps:
            raise KernelError(
                f"{spec.text}: {meta_name} {meta.get('Version')} names no "
                "linux-image-<abi> in its Depends"
            )
        abi, version = image_deps[0].name[12:], image_deps[0].version
    else:
        abi, version = spec.abi, ""
    image_ref = f"linux-image-{abi}" + (f"={version}" if version else "")
    image = _record(apt, image_ref, pins)
    if image is None:
        raise KernelError(
            f"{spec.text}: no such ABI: package linux-image-{abi} is in no suite of the mirror"
        )
    version = image["Version"]
    found: dict[str, Pkg] = {}

    def add(name: str, want: str, follow: re.Pattern[str] | None) -> None:
        if name in found or f"{name}-unsigned" in found:
            return
        rec = None
        if _SIGNED.match(name):  # the -unsigned twin holds the same files, unsigned
            rec = _record(apt, f"{name}-unsigned={want}", None)
        rec = rec or _record(apt, f"{name}={want}", None) or _record(apt, name, pins)
        if rec is None:
            raise KernelError(
                f"{spec.text}: package {name} (needed by linux-image-{abi}) not found on the mirror"
            )
        found[rec["Package"]] = Pkg(
            rec["Package"],
            rec["Version"],
            rec.get("Architecture", "amd64"),
            int(rec.get("Size", "0")),
        )
        for dep in parse_depends(rec.get("Depends", "")):
            if abi in dep.name or (follow is not None and follow.match(dep.name)):
                # `=` pins the exact build; otherwise the same source version when it exists
                add(dep.name, dep.version if dep.op == "=" else version, follow)

    add(f"linux-image-{abi}", version, None)
    add(f"linux-headers-{abi}", version, _HEADERS_DEP)
    return Resolution(abi, version, tuple(found.values()), time.time())


def _resolution_file(spec: Spec) -> Path:
    return cache_dir("resolved") / (re.sub(r"[^A-Za-z0-9.+~_-]", "_", spec.text) + ".json")


def _load_resolution(spec: Spec) -> Resolution | None:
    try:
        data = json.loads(_resolution_file(spec).read_text())
        pkgs = tuple(Pkg(**p) for p in data["packages"])
        return Resolution(data["abi"], data["version"], pkgs, float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_resolution(spec: Spec, res: Resolution) -> None:
    atomic_write_text(_resolution_file(spec), json.dumps(asdict(res), indent=1))


def _apt_root() -> AptRoot:
    apt = AptRoot(cache_dir("apt"), find_mirrors(read_host_sources()))
    with locked(apt.root / "lists"):
        apt.setup()
    return apt


def apt_root() -> AptRoot:
    """The private apt root, set up and with fresh lists (for look-ups beyond acquire)."""
    apt = _apt_root()
    with locked(apt.root / "lists"):
        apt.ensure_fresh(quiet=True)
    return apt


def resolve(spec_text: str) -> Resolution:
    """What a spec names now (ABI, version, packages), without downloading anything."""
    return _resolve_fresh(parse_spec(spec_text), quiet=True)[1]


def _resolve_fresh(spec: Spec, quiet: bool) -> tuple[AptRoot, Resolution]:
    apt = _apt_root()
    with locked(apt.root / "lists"):  # concurrent runs: one updates, the others wait
        apt.ensure_fresh(quiet)
        try:
            res = _resolve(apt, spec)
        except KernelError:
            if apt.updated:
                raise
            apt.update(quiet)  # a stale list may lack what the mirror has now: retry once
            res = _resolve(apt, spec)
    _save_resolution(spec, res)
    return apt, res


# -- extraction into the cache ----------------------------------------------------------------


def _paths(root: Path, abi: str) -> dict[str, Path]:
    """Where the files are: /boot and /lib/modules up to 6.12, /usr/lib/modules/<abi> from 7.x."""
    split = root / "usr/lib/modules" / abi
    if (split / "vmlinuz").is_file():
        return {"vmlinuz": split / "vmlinuz", "config": split / "config", "modules_dir": split}
    modules = root / "lib/modules" / abi
    if not modules.is_dir():
        modules = split
    return {
        "vmlinuz": root / "boot" / f"vmlinuz-{abi}",
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


def _extract(deb: Path, root: Path, quiet: bool) -> None:
    _say(f"extracting {deb.name}", quiet)
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(root)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise KernelError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()[-300:]}")


def _complete(entry: Path) -> bool:
    return (entry / MARKER).is_file() and (entry / "kernel.json").is_file()


def _install(apt: AptRoot | None, res: Resolution, spec: Spec, quiet: bool) -> Path:
    entry = res.entry
    if _complete(entry):
        return entry
    with locked(entry):
        if _complete(entry):  # a concurrent run finished it
            return entry
        debs = cache_dir("debs")
        missing = [p for p in res.packages if not (debs / p.deb).is_file()]
        if missing:
            apt = apt or _apt_root()
            total = sum(p.size for p in missing)
            _say(f"downloading {len(missing)} packages ({_mib(total)})", quiet)
            if not sys.stderr.isatty():
                for p in missing:
                    _say(f"  {p.name} {p.version} ({_mib(p.size)})", quiet)
            with locked(apt.root / "lists"):  # apt-get reads the lists an update rewrites
                apt.download([(p.name, p.version) for p in missing], debs, quiet)
            lost = [p.deb for p in missing if not (debs / p.deb).is_file()]
            if lost:
                raise KernelError(f"download failed: apt-get did not produce {', '.join(lost)}")
        with staged_dir(entry) as tmp:
            root = tmp / "root"
            root.mkdir()
            for p in res.packages:
                _extract(debs / p.deb, root, quiet)
            paths = _paths(root, res.abi)
            if not paths["vmlinuz"].is_file():
                names = ", ".join(p.name for p in res.packages)
                raise KernelError(f"{spec.text}: no vmlinuz for {res.abi} in {names}")
            headers = root / "usr/src" / f"linux-headers-{res.abi}"
            _fix_headers(headers, entry / "root")
            _say(f"recovering the symbol table from {paths['vmlinuz'].name}", quiet)
            rec = kallsyms.recover(paths["vmlinuz"], tmp / "kallsyms")
            _say(f"{rec.count} symbols in {rec.seconds:.1f} s", quiet)
            meta = {
                "abi": res.abi,
                "version": res.version,
                "packages": [f"{p.name}={p.version}" for p in res.packages],
                **{k: str(v.relative_to(tmp)) for k, v in paths.items()},
                "headers": str(headers.relative_to(tmp)),
                "symbols": rec.count,
                "symbols_seconds": round(rec.seconds, 2),
            }
            atomic_write_text(tmp / "kernel.json", json.dumps(meta, indent=1))
            (tmp / MARKER).touch()
    return entry


def _kernel(spec: Spec, entry: Path) -> Kernel:
    meta = json.loads((entry / "kernel.json").read_text())
    headers = entry / meta["headers"]
    return Kernel(
        spec=spec.text,
        name=f"debian-{meta['abi']}",
        release=meta["abi"],
        package_version=meta["version"],
        vmlinuz=entry / meta["vmlinuz"],
        modules_dir=entry / meta["modules_dir"],
        config=entry / meta["config"],
        headers=headers,
        symvers=headers / "Module.symvers",
        kallsyms=entry / "kallsyms",
        packages=tuple(meta["packages"]),
    )


def cached(spec: str) -> Kernel | None:
    """The kernel from the cache only (whatever the resolution's age); never calls apt."""
    parsed = parse_spec(resolve_name(spec))
    if parsed.kind == "local":
        return _local(parsed, quiet=True)
    if parsed.kind == "source":
        return cached_source_kernel(parsed)
    res = _load_resolution(parsed) if parsed.kind.startswith("debian") else None
    if res is None or not _complete(res.entry):
        return None
    return _kernel(parsed, res.entry)


def acquire(spec: str, *, quiet: bool = False) -> Kernel:
    """Fetch (or find in the cache) the kernel `spec` names; see kernels/README.md."""
    parsed = parse_spec(resolve_name(spec))
    if parsed.kind == "source":
        return source_kernel(parsed, quiet=quiet)
    if parsed.kind == "local":
        return _local(parsed, quiet)
    res = _load_resolution(parsed)
    if (
        res is not None
        and _complete(res.entry)
        and (parsed.kind == "debian-abi" or time.time() - res.time < RESOLUTION_MAX_AGE)
    ):
        return _kernel(parsed, res.entry)  # warm: no apt at all
    apt, res = _resolve_fresh(parsed, quiet)
    return _kernel(parsed, _install(apt, res, parsed, quiet))


# -- local:PATH, a user's own build tree ---------------------------------------------------------


def _local(spec: Spec, quiet: bool) -> Kernel:
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
    release_file = tree / "include/config/kernel.release"
    if not release_file.is_file():
        raise KernelError(f"{spec.text}: {release_file} missing (run make in the tree)")
    release = release_file.read_text().strip()
    st = need["bzImage"].stat()
    key = re.sub(r"[^A-Za-z0-9._-]", "_", f"{tree}".strip("/"))[-80:]
    store = cache_dir("local", key)
    table, stamp = store / "kallsyms", store / "kallsyms.source"
    want = f"{st.st_size} {st.st_mtime_ns}"
    with locked(table):
        if not (table.is_file() and stamp.is_file() and stamp.read_text() == want):
            _say(f"recovering the symbol table from {need['bzImage']}", quiet)
            rec = kallsyms.recover(need["bzImage"], table)
            _say(f"{rec.count} symbols in {rec.seconds:.1f} s", quiet)
            atomic_write_text(stamp, want)
    installed = tree / "lib/modules" / release  # `make modules_install INSTALL_MOD_PATH=<tree>`
    modules = installed if installed.is_dir() else cache_dir("local", key, "modules", release)
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
