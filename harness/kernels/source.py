"""Kernel sources and configs: Debian's linux-source-X.Y unpacked into the cache, and a config
made from `make tinyconfig` + fragments (kernels/configs) with the kernel's merge_config.sh,
olddefconfig and a check that every requested option survived."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, locked, staged_dir
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.apt import private_root
from harness.kernels.kernel import read_config
from harness.kernels.resolve import Pkg

# -- fragments (which ones a config means: spec.fragment_paths) ------------------------------------


def requested(paths: Sequence[Path]) -> dict[str, str]:
    """The options the fragments ask for, later fragments winning; "n" for =n and "is not set"."""
    want: dict[str, str] = {}
    for path in paths:
        want.update(read_config(path))
    return want


def fragments_hash(paths: Sequence[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode() + b"\0")
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# -- Kconfig dependencies, for naming why an option was lost --------------------------------------

_TOKEN = re.compile(r"\s*(&&|\|\||!=|[!()=]|\"[^\"]*\"|[A-Za-z0-9_]+)")


def _tristate(token: str, config: dict[str, str]) -> int:
    if token in ("y", "m", "n"):
        return {"n": 0, "m": 1, "y": 2}[token]
    value = config.get(f"CONFIG_{token}", "n")
    return {"n": 0, "m": 1, "y": 2}.get(value, 2)


def evaluate(expr: str, config: dict[str, str]) -> int:
    """A Kconfig `depends on` expression as a tristate (0 n, 1 m, 2 y) under `config`."""
    tokens: list[str] = [t for t in _TOKEN.findall(expr) if t]
    pos = 0

    def peek() -> str:
        return tokens[pos] if pos < len(tokens) else ""

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        tok = take() if peek() else "n"
        if tok == "!":
            return 2 - atom()
        if tok == "(":
            value = disjunction()
            if peek() == ")":
                take()
            return value
        if peek() in ("=", "!="):
            op, other = take(), take().strip('"')
            left = config.get(f"CONFIG_{tok}", tok) if tok not in ("y", "m", "n") else tok
            right = config.get(f"CONFIG_{other}", other) if re.match(r"^[A-Z]", other) else other
            return 2 if (left == right) == (op == "=") else 0
        return _tristate(tok.strip('"'), config)

    def conjunction() -> int:
        value = atom()
        while peek() == "&&":
            take()
            value = min(value, atom())
        return value

    def disjunction() -> int:
        value = conjunction()
        while peek() == "||":
            take()
            value = max(value, conjunction())
        return value

    return disjunction()


def kconfig_depends(tree: Path, option: str, arch_dir: str = "x86") -> list[str] | None:
    """Every `depends on` (and enclosing `if`/menu dependency) of `option` in the tree's
    Kconfig files of architecture `arch_dir`; None when no Kconfig file defines it."""
    name = option.removeprefix("CONFIG_")
    files = [p for p in tree.rglob("Kconfig*") if p.is_file()]
    files = [p for p in files if p.parts[len(tree.parts)] != "arch" or arch_dir in p.parts
             or p.parent == tree / "arch"]  # fmt: skip
    found: list[str] = []
    defined = False
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if not re.search(rf"^\s*(menu)?config {name}\s*$", text, re.M):
            continue
        defined = True
        stack: list[list[str]] = []  # deps of enclosing if/menu/choice blocks
        current: list[str] | None = None
        mine = False
        for raw in text.splitlines():
            line = raw.strip()
            word = line.split(maxsplit=1)[0] if line else ""
            if word in ("config", "menuconfig"):
                mine = line.split()[1:2] == [name]
                current = []
                if mine:
                    found += [d for block in stack for d in block]
            elif word in ("if", "menu", "choice"):
                current = [line[3:].strip()] if word == "if" else []
                stack.append(current)
                mine = False
            elif word in ("endif", "endmenu", "endchoice"):
                if stack:
                    stack.pop()
                current, mine = None, False
            elif word in ("comment", "source", "mainmenu"):
                current, mine = None, False
            elif line.startswith("depends on") and current is not None:
                dep = line[len("depends on") :].strip()
                current.append(dep)
                if mine:
                    found.append(dep)
    return list(dict.fromkeys(found)) if defined else None


def lost_options(want: dict[str, str], final: dict[str, str]) -> dict[str, str]:
    """{option: value in the final .config} for each requested value that did not survive."""
    return {k: final.get(k, "n") for k, v in want.items() if final.get(k, "n") != v}


def explain_lost(
    tree: Path, want: dict[str, str], final: dict[str, str], arch_dir: str = "x86"
) -> tuple[list[str], list[str]]:
    """(errors, warnings): one line per lost option, naming the unmet `depends on` when there
    is one; an option this kernel's Kconfig does not define (renamed, removed) only warns,
    so one base fragment serves several versions (PROC_SYSCTL is SYSCTL from 6.x)."""
    errors, warnings = [], []
    for option, got in lost_options(want, final).items():
        line = f"{option}={want[option]} requested, final .config has {option}={got}"
        depends = kconfig_depends(tree, option, arch_dir)
        if depends is None:
            warnings.append(f"{line}; not defined in this kernel's Kconfig, ignored")
            continue
        unmet = [d for d in depends if evaluate(d, final) == 0]
        if unmet and want[option] != "n":
            line += "; unmet: " + ", ".join(f"depends on {d}" for d in unmet)
        elif want[option] != "n":
            line += "; no unmet 'depends on' found (a choice, select or value range?)"
        errors.append(line)
    return errors, warnings


# -- running make ----------------------------------------------------------------------------------


def run_logged(argv: Sequence[str], log: Path, cwd: Path | None = None) -> None:
    """Run `argv`, appending its output to `log`; KernelError with the last error lines."""
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(argv[:6])} failed (log: {log}):\n{error_tail(log)}")


def error_tail(log: Path, lines: int = 12) -> str:
    """The last error lines of a log (else its last lines)."""
    text = log.read_text(errors="replace").splitlines()
    errors = [ln for ln in text if re.search(r"\berror\b|Error \d|\*\*\*", ln, re.I)]
    return "\n".join((errors or text)[-lines:])


def configure(
    tree: Path,
    objdir: Path,
    fragments: Sequence[Path],
    log: Path,
    *,
    printer: Printer | None = None,
    make_vars: Sequence[str] = (),
    arch_dir: str = "x86",
) -> dict[str, str]:
    """tinyconfig, merge the fragments, olddefconfig, then check every requested option.
    `make_vars` (e.g. LLVM=-19) go on every make: Kconfig probes the compiler."""
    printer = printer or Printer()
    objdir.mkdir(parents=True, exist_ok=True)
    make = ["make", "-C", str(tree), f"O={objdir}", *make_vars]
    run_logged([*make, "tinyconfig"], log)
    merge = [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(objdir)]
    run_logged([*merge, str(objdir / ".config"), *map(str, fragments)], log, cwd=tree)
    run_logged([*make, "olddefconfig"], log)
    final = read_config(objdir / ".config")
    want = requested(fragments)
    lost, ignored = explain_lost(tree, want, final, arch_dir)
    with open(log, "a") as handle:
        handle.writelines(f"# klp-harness: warning: {line}\n" for line in ignored)
    for line in ignored:
        printer.warn(line)
    if lost:
        raise KernelError(
            f"{len(lost)} requested option(s) did not survive olddefconfig "
            f"({', '.join(p.name for p in fragments)}):\n  " + "\n  ".join(lost)
        )
    return final


# -- Debian's linux-source-X.Y -----------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    path: Path
    package: str  # "linux-source-6.1"
    version: str  # "6.1.192-2"; "" for a user's tree

    @property
    def pinned(self) -> str:
        """The package it came from as apt names one version: linux-source-6.1=6.1.192-2."""
        return f"{self.package}={self.version}"


def _resolution(xy: str) -> Path:
    return cache_dir("resolved") / f"source-{xy}.json"


def _tree_dir(package: str, version: str) -> Path:
    return cache_dir("sources") / f"{package}_{cache_key(version)}"


def cached_source(xy: str) -> SourceTree | None:
    """The last resolved linux-source-X.Y when it is unpacked, whatever its age (no apt)."""
    package = f"linux-source-{xy}"
    try:
        version = json.loads(_resolution(xy).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    tree = _tree_dir(package, version) / package
    return SourceTree(tree, package, version) if tree.is_dir() else None


def fetch_source(
    xy: str, *, printer: Printer | None = None, max_age: float = 24 * 3600
) -> SourceTree:
    """The newest linux-source-X.Y of any reachable suite, unpacked (cached)."""
    printer = printer or Printer()
    package = f"linux-source-{xy}"
    try:
        known = json.loads(_resolution(xy).read_text())
        tree = _tree_dir(package, known["version"]) / package
        if time.time() - float(known["time"]) < max_age and tree.is_dir():
            return SourceTree(tree, package, known["version"])
    except (OSError, ValueError, KeyError):
        pass
    apt = private_root()
    with locked(apt.root / "lists"):
        apt.ensure_fresh(printer=printer)
        rec = apt.show(package)
        if rec is None:
            raise KernelError(f"source:{xy}: no package {package} in any suite of the mirror")
        pkg = Pkg.from_record(rec)
        version = pkg.version
        deb = cache_dir("debs") / pkg.deb
        if not deb.is_file():
            printer.say(f"downloading {package} {version} ({pkg.size >> 20} MiB)")
            apt.download([(package, version)], deb.parent, printer=printer, size=pkg.size)
    entry = _tree_dir(package, version)
    with locked(entry):
        if not (entry / package).is_dir():
            with staged_dir(entry) as tmp:
                printer.say(f"unpacking {deb.name}")
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], check=True)
                tarball = tmp / "deb/usr/src" / f"{package}.tar.xz"
                subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], check=True)
                subprocess.run(["rm", "-rf", str(tmp / "deb")], check=True)
                if not (tmp / package / "Makefile").is_file():
                    raise KernelError(f"{deb}: no {package}/Makefile in {tarball.name}")
    atomic_write_text(_resolution(xy), json.dumps({"version": version, "time": time.time()}))
    return SourceTree(entry / package, package, version)


def user_tree(path: Path) -> SourceTree:
    if not (path / "Makefile").is_file() or not (path / "scripts/kconfig").is_dir():
        raise KernelError(f"source:{path}: not a kernel source tree (no Makefile, scripts/kconfig)")
    if (path / ".config").exists():
        raise KernelError(
            f"source:{path}: the tree is configured in place (.config); the harness builds "
            "out of tree with O=, which needs a clean tree (make mrproper)"
        )
    return SourceTree(path, "", "")
