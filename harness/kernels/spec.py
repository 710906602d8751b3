"""Kernel specs (`debian:bookworm`, `debian:6.1.0-56-amd64`, `local:PATH`, ...) and the
kernels declared as data in `kernels/*.toml` (format: kernels/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import ExpectationError, KernelError
from harness.kernels.arch import HOST, arches, find_arch
from harness.kernels.datafile import read_tables
from harness.kernels.releases import codenames, find_release
from harness.paths import CONFIGS_DIR, KERNELS_DIR

# Debian's kernel flavours (the ABI's last part) and the architecture each runs on.
FLAVOURS = {
    "amd64": "x86_64",
    "cloud-amd64": "x86_64",
    "rt-amd64": "x86_64",
    "arm64": "arm64",
    "arm64-16k": "arm64",
    "cloud-arm64": "arm64",
    "rt-arm64": "arm64",
    "powerpc64le": "ppc64le",
    "powerpc64le-64k": "ppc64le",
}

SpecKind = Literal["debian-suite", "debian-abi", "source", "local"]

# An ABI is what `uname -r` says: 6.1.0-56-amd64, 6.12.115+deb13.1-cloud-amd64,
# 6.1.0-0.deb11.48-amd64, 7.3.4+deb13-arm64, 6.12.117+deb13-arm64-16k.
_ABI = re.compile(r"^(\d+\.\d+[0-9A-Za-z.+~-]*?)-(" + "|".join(FLAVOURS) + ")$")
_SUITE = re.compile(r"^([a-z]+)(-backports)?(-cloud)?$")
_SOURCE_VERSION = re.compile(r"^\d+\.\d+$")
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

DEFAULT_DIR = KERNELS_DIR
BASE_CONFIG = "base"  # kernels/configs/base.config, under every source config


def is_abi(text: str) -> bool:
    """`text` is a kernel ABI as `uname -r` prints it (6.1.0-56-amd64)."""
    return _ABI.match(text) is not None


@dataclass(frozen=True)
class Spec:
    """A parsed kernel spec; `text` is the normalised spelling (cache key, display)."""

    kind: SpecKind
    text: str
    release: str = ""  # debian-suite: "bookworm"
    backports: bool = False
    flavour: str = "amd64"  # debian-*: a key of FLAVOURS ("amd64", "cloud-arm64", ...)
    abi: str = ""  # debian-abi: "6.1.0-56-amd64"
    path: Path | None = None  # local
    ref: str = ""  # source: "6.1" (Debian's linux-source-6.1) or a tree's path
    config: str = ""  # source: a fragment name in kernels/configs, e.g. "livepatch"
    arch: str = HOST  # source, debian-*: the architecture (kernels/arches/arches.toml)

    @property
    def suite(self) -> str:
        return f"{self.release}-backports" if self.backports else self.release

    def suite_priorities(self) -> dict[str, int]:
        """apt pin priorities that make apt's candidate the one this spec means.

        A release means itself plus its -updates/-security; a backports suite wins over its
        release (what `-t X-backports` does); every other suite is pinned away (-1).
        """
        if self.kind != "debian-suite":
            return {}
        release = find_release(self.release)  # parse_spec checked that it exists
        pins = {self.release: 500}
        for extra in release.suites if release else ():
            if extra != "backports":
                pins[f"{self.release}-{extra}"] = 500
        if self.backports:
            pins[f"{self.release}-backports"] = 990
        return pins


def parse_spec(text: str) -> Spec:
    """Parse a kernel spec; a KernelError names what is wrong with it."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise KernelError(
            f"unknown kernel spec {text!r}: expected debian:SUITE, debian:ABI, "
            "source:X.Y:CONFIG or local:PATH"
        )
    if kind == "local":
        path = Path(rest).expanduser().absolute()
        return Spec("local", f"local:{path}", path=path)
    if kind == "source":
        return _source_spec(text, rest)
    if kind != "debian":
        raise KernelError(f"unknown kernel spec kind {kind!r} in {text!r} (debian, source, local)")
    return _debian_spec(text, rest)


def _debian_spec(text: str, rest: str) -> Spec:
    """`debian:SUITE[-backports][-cloud][:ARCH]` or `debian:ABI[:ARCH]`; ARCH defaults to the
    host's (an ABI's flavour names its own) and is left out of the normalised text then."""
    arch = ""
    head, sep, last = rest.rpartition(":")
    if sep:
        try:
            find_arch(last)
        except KernelError as err:
            raise KernelError(f"bad debian spec {text!r}: {err}") from None
        rest, arch = head, last
    if m := _ABI.match(rest):
        flavour = m.group(2)
        if arch and arch != FLAVOURS[flavour]:
            own = FLAVOURS[flavour]
            raise KernelError(
                f"{text!r}: ABI {rest} is of flavour {flavour}, for {own}, not {arch}"
            )
        return Spec(
            "debian-abi", f"debian:{rest}", abi=rest, flavour=flavour, arch=FLAVOURS[flavour]
        )
    arch = arch or HOST
    m = _SUITE.match(rest)
    found = find_release(m.group(1)) if m else None
    if not m or found is None:
        raise KernelError(
            f"unknown suite or ABI {rest!r} in {text!r} (releases: {', '.join(codenames())}; "
            "add -backports and/or -cloud and :ARCH, or give an ABI such as 6.1.0-56-amd64)"
        )
    release, backports, cloud = m.group(1), bool(m.group(2)), bool(m.group(3))
    if backports and "backports" not in found.suites:
        raise KernelError(f"unknown suite {release}-backports in {text!r}: not on the mirror")
    flavour = ("cloud-" if cloud else "") + find_arch(arch).flavour
    if FLAVOURS.get(flavour) != arch:
        raise KernelError(f"{text!r}: Debian has no {flavour} kernel flavour for {arch}")
    suffix = "" if arch == HOST else f":{arch}"
    return Spec(
        "debian-suite",
        f"debian:{rest}{suffix}",
        release=release,
        backports=backports,
        flavour=flavour,
        arch=arch,
    )


def _source_spec(text: str, rest: str) -> Spec:
    """`source:X.Y:CONFIG[:ARCH]` (Debian's linux-source-X.Y) or `source:PATH:CONFIG[:ARCH]`
    (a tree); ARCH defaults to the host's and is left out of the normalised text then."""
    arch = HOST
    head, sep, last = rest.rpartition(":")
    if sep and ":" in head:
        if last not in arches() and _SOURCE_VERSION.match(head.split(":")[0]):
            try:  # `source:7.3:livepatch:mips`: name the architectures
                find_arch(last)
            except KernelError as err:
                raise KernelError(f"bad source spec {text!r}: {err}") from None
        if last in arches():
            rest, arch = head, last
    ref, sep, config = rest.rpartition(":")
    if not sep or not ref or not _CONFIG_NAME.match(config):
        raise KernelError(
            f"bad source spec {text!r}: expected source:X.Y:CONFIG[:ARCH] (e.g. "
            "source:6.1:livepatch, source:7.3:livepatch:arm64) or source:PATH:CONFIG[:ARCH], "
            "CONFIG a fragment name in kernels/configs"
        )
    suffix = "" if arch == HOST else f":{arch}"
    if _SOURCE_VERSION.match(ref):
        return Spec("source", f"source:{ref}:{config}{suffix}", ref=ref, config=config, arch=arch)
    if not ref.startswith(("/", ".", "~")):
        raise KernelError(
            f"bad source spec {text!r}: {ref!r} is neither a version X.Y nor a path "
            "(start a relative path with ./)"
        )
    path = Path(ref).expanduser().absolute()
    return Spec(
        "source", f"source:{path}:{config}{suffix}", ref=str(path), path=path, config=config,
        arch=arch,
    )  # fmt: skip


@dataclass(frozen=True)
class KernelDecl:
    """One `[[kernel]]` table of a kernels/*.toml file."""

    name: str
    spec: str
    description: str = ""
    default: bool = False
    source: Path | None = None  # the file that declared it


_KEYS = {"name", "spec", "description", "default"}


def _decls_from(path: Path) -> list[KernelDecl]:
    tables = read_tables(path, "kernel", "kernel declarations")
    decls = []
    for i, table in enumerate(tables):
        where = f"{path}: kernel #{i + 1}"
        if not isinstance(table, dict):
            raise ExpectationError(f"{where}: not a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ExpectationError(f"{where}: unknown keys {sorted(unknown)}")
        name, spec = table.get("name"), table.get("spec")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ExpectationError(f"{where}: 'name' must be a short identifier string")
        if not isinstance(spec, str):
            raise ExpectationError(f"{where} ({name}): 'spec' must be a string")
        try:
            parse_spec(spec)
        except KernelError as err:
            raise ExpectationError(f"{where} ({name}): {err}") from None
        desc, default = table.get("description", ""), table.get("default", False)
        if not isinstance(desc, str) or not isinstance(default, bool):
            raise ExpectationError(f"{where} ({name}): bad 'description' or 'default' type")
        decls.append(KernelDecl(name, spec, desc, default, path))
    return decls


def load_matrix(path: Path) -> list[KernelDecl]:
    """The kernels of one matrix: a kernels/*.toml file, or every file of a directory.
    A matrix that declares no kernel is refused (it would silently run the default)."""
    if path.is_dir():
        decls = load_declared(path)
        if not decls:
            raise ExpectationError(f"{path}: no [[kernel]] declared in any *.toml file there")
        return decls
    if not path.is_file():
        raise ExpectationError(f"{path}: no such matrix file")
    decls = _decls_from(path)
    if not decls:
        raise ExpectationError(f"{path}: declares no [[kernel]]")
    _check_unique(decls, path)
    return decls


def _check_unique(decls: list[KernelDecl], where: Path) -> None:
    """Names unique, at most one default."""
    seen: dict[str, Path | None] = {}
    for decl in decls:
        if decl.name in seen:
            first = seen[decl.name]
            again = "in the same file" if first == decl.source else f"in {first}"
            raise ExpectationError(
                f"{decl.source}: kernel name {decl.name!r} already declared {again}"
            )
        seen[decl.name] = decl.source
    defaults = [d.name for d in decls if d.default]
    if len(defaults) > 1:
        raise ExpectationError(f"{where}: more than one default kernel ({', '.join(defaults)})")


def load_declared(dir: Path | None = None) -> list[KernelDecl]:
    """Every kernel declared in the `*.toml` files of `dir` (default: the repository's
    kernels/; its subdirectories hold other data), in file order."""
    root = dir if dir is not None else DEFAULT_DIR
    if not root.is_dir():
        raise ExpectationError(f"{root}: kernel declaration directory not found")
    paths = sorted(root.glob("*.toml"))
    decls = [decl for path in paths for decl in _decls_from(path)]
    _check_unique(decls, root)
    return decls


def default_spec(dir: Path | None = None) -> str:
    """The spec of the kernel marked `default = true` in kernels/ ("debian:bookworm")."""
    for decl in load_declared(dir):
        if decl.default:
            return decl.spec
    raise ExpectationError(f"{dir or DEFAULT_DIR}: no kernel is marked default = true")


def check_spec(name_or_spec: str, dir: Path | None = None) -> Spec:
    """A spec (or declared name) checked without fetching anything: its syntax, the suite,
    a source config's fragment, a local tree's directory; KernelError (exit 20) naming what
    is wrong. Whether an ABI exists on the mirror is only known by resolving it."""
    spec = parse_spec(resolve_name(name_or_spec, dir))
    if spec.kind == "source":
        fragment_paths(spec.config, spec.arch)
    if spec.path is not None and not spec.path.is_dir():
        raise KernelError(f"{spec.text}: {spec.path} is not a directory")
    return spec


def resolve_name(name_or_spec: str, dir: Path | None = None) -> str:
    """A declared kernel's name stands for its spec on the command line."""
    if ":" in name_or_spec:
        return name_or_spec
    for decl in load_declared(dir):
        if decl.name == name_or_spec:
            return decl.spec
    raise KernelError(f"{name_or_spec!r} is neither a kernel spec nor a declared kernel name")


def fragment_paths(config: str, arch: str = HOST, configs_dir: Path = CONFIGS_DIR) -> list[Path]:
    """The fragments a source config means: the architecture's base.config, then
    <config>.config from the architecture's subdirectory if it has one, else the shared one
    (kernels/configs/<arch>/ for every architecture but the host's); a KernelError lists the
    known configs."""
    find_arch(arch)
    own = configs_dir if arch == HOST else configs_dir / arch
    base = own / f"{BASE_CONFIG}.config"
    chosen = own / f"{config}.config"
    if not chosen.is_file():
        chosen = configs_dir / f"{config}.config"
    if config == BASE_CONFIG or config in arches() or not chosen.is_file():
        names = {p.stem for d in {configs_dir, own} for p in d.glob("*.config")}
        known = ", ".join(sorted(names - {BASE_CONFIG}))
        raise KernelError(f"no config {config!r} for {arch} in {configs_dir} (known: {known})")
    if not base.is_file():
        raise KernelError(f"{base}: base config fragment missing")
    return [base, chosen]
