"""What a kernel spec names now: apt's dependency data, read through a private apt root, turned
into the packages (name, version, Size, SHA256) of one kernel ABI, and kept in the cache.

A kernel of another architecture (`debian:trixie-backports:arm64`) is read through that
architecture's own apt root, except its `linux-kbuild-*`: the tools modules are built with
(fixdep, modpost) must run on this host, so they come from the host's root, the same version
(linux-kbuild-* is Multi-Arch: foreign, so the host's build satisfies the headers' Depends)."""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.apt import HOST_DEBIAN_ARCH, AptRoot, parse_depends, private_root
from harness.kernels.arch import find_arch
from harness.kernels.spec import Spec, is_abi, parse_spec

_HEADERS_DEP = re.compile(r"^linux-(headers|kbuild)-")
_SIGNED = re.compile(r"^linux-(image|binary)-.*(?<!-unsigned)$")
_KBUILD = re.compile(r"^linux-kbuild-")


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    arch: str
    size: int
    sha256: str = ""  # as apt's Packages index records it

    @classmethod
    def from_record(cls, rec: dict[str, str]) -> Pkg:
        """The package an `apt-cache show` record describes."""
        size = rec.get("Size", "")
        return cls(
            rec["Package"],
            rec["Version"],
            rec.get("Architecture", "amd64"),
            int(size) if size.isdigit() else 0,
            rec.get("SHA256", ""),
        )

    @property
    def deb(self) -> str:
        """The file name `apt-get download` gives it (the epoch colon escaped)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


@dataclass(frozen=True)
class Resolution:
    abi: str
    version: str
    packages: tuple[Pkg, ...]
    time: float

    @property
    def entry(self) -> Path:
        return cache_dir("kernels") / f"debian-{self.abi}_{cache_key(self.version)}"


def resolve_in(apt: AptRoot, spec: Spec, host: AptRoot | None = None) -> Resolution:
    """What `spec` names in `apt`'s lists; `host`, the host's root when `apt` is of another
    architecture, gives the linux-kbuild-* package."""
    pins = spec.suite_priorities() or None
    if spec.kind == "debian-suite":
        meta_name = f"linux-image-{spec.flavour}"
        meta = apt.show(meta_name, pins)
        if meta is None:
            raise KernelError(f"{spec.text}: no {meta_name} in {spec.suite}")
        image_deps = [
            d
            for d in parse_depends(meta.get("Depends", ""))
            if d.name.startswith("linux-image-") and is_abi(d.name[12:])
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
    image = apt.show(image_ref, pins)
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
        if host is not None and _KBUILD.match(name):  # tools that run here: the host's build
            rec = host.show(f"{name}={want}", None)
        if _SIGNED.match(name):  # the -unsigned twin holds the same files, unsigned
            rec = apt.show(f"{name}-unsigned={want}", None)
        rec = rec or apt.show(f"{name}={want}", None) or apt.show(name, pins)
        if rec is None:
            raise KernelError(
                f"{spec.text}: package {name} (needed by linux-image-{abi}) not found on the mirror"
            )
        found[rec["Package"]] = Pkg.from_record(rec)
        for dep in parse_depends(rec.get("Depends", "")):
            if abi in dep.name or (follow is not None and follow.match(dep.name)):
                # `=` pins the exact build; otherwise the same source version when it exists
                add(dep.name, dep.version if dep.op == "=" else version, follow)

    add(f"linux-image-{abi}", version, None)
    add(f"linux-headers-{abi}", version, _HEADERS_DEP)
    return Resolution(abi, version, tuple(found.values()), time.time())


def resolution_file(spec: Spec) -> Path:
    """Where what `spec` resolved to last is kept."""
    return cache_dir("resolved") / f"{cache_key(spec.text)}.json"


def load_resolution(spec: Spec) -> Resolution | None:
    """The saved resolution; None when absent or not what `save_resolution` writes."""
    try:
        data = json.loads(resolution_file(spec).read_text())
        pkgs = tuple(Pkg(**p) for p in data["packages"])
        res = Resolution(data["abi"], data["version"], pkgs, float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    texts = [res.abi, res.version, *(f for p in pkgs for f in (p.name, p.version, p.arch))]
    if not all(isinstance(t, str) and t for t in texts) or not all(
        isinstance(p.size, int) and isinstance(p.sha256, str) for p in pkgs
    ):
        return None
    return res


def save_resolution(spec: Spec, res: Resolution) -> None:
    atomic_write_text(resolution_file(spec), json.dumps(asdict(res), indent=1))


def resolve(spec_text: str, *, printer: Printer | None = None) -> Resolution:
    """What a spec names now (ABI, version, packages), without downloading anything."""
    return resolve_fresh(parse_spec(spec_text), printer=printer)[1]


def resolve_fresh(spec: Spec, *, printer: Printer | None = None) -> tuple[AptRoot, Resolution]:
    """Resolve `spec` through the private apt root (its lists made fresh first) and save it."""
    printer = printer or Printer()
    apt = private_root(find_arch(spec.arch).debian)
    host = private_root() if apt.arch != HOST_DEBIAN_ARCH else None
    with ExitStack() as held:  # concurrent runs: one updates, the others wait
        held.enter_context(locked(apt.root / "lists"))
        apt.ensure_fresh(printer=printer)
        if host is not None:  # always taken after the foreign root's lock: no deadlock
            held.enter_context(locked(host.root / "lists"))
            host.ensure_fresh(printer=printer)
        try:
            res = resolve_in(apt, spec, host)
        except KernelError:
            if apt.updated:
                raise
            apt.update(printer=printer)  # a stale list may lack what the mirror has now: retry
            res = resolve_in(apt, spec, host)
    save_resolution(spec, res)
    return apt, res
