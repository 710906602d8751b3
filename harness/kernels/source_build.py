"""Kernels built from source (`source:X.Y:CONFIG`, `source:PATH:CONFIG`): configure, build
out of tree (O=) with progress and a kept log, install an (even empty) modules tree, recover the
symbol table from the boot image, all cached by (source version, merged fragments hash)."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.arch import HOST, Arch, find_arch
from harness.kernels.kernel import Kernel, KernelMeta
from harness.kernels.source import (
    SourceTree,
    cached_source,
    configure,
    error_tail,
    fetch_source,
    fragments_hash,
    run_logged,
    user_tree,
)
from harness.kernels.spec import Spec, fragment_paths
from harness.kernels.verify import MARKER, DamagedEntry, image_problem, read_meta

RECIPE = "1"  # bump when the build steps change: every source kernel is rebuilt
JOBS = int(os.environ.get("KLP_HARNESS_BUILD_JOBS", "2"))
PROGRESS_SECONDS = 60.0
# A fragment line `# klp-harness-make: VAR=value ...` gives every make of the build (config
# included) those variables: `LLVM=-19` builds with clang-19/ld.lld-19 (kernels/configs/lto.config).
_MAKE_LINE = re.compile(r"^#\s*klp-harness-make:(.*)$", re.M)
_MAKE_VAR = re.compile(r"[A-Z][A-Z0-9_]*=[A-Za-z0-9_./+-]*")


def make_variables(fragments: list[Path]) -> list[str]:
    """The make variables the fragments ask for, in order; a KernelError names a bad one."""
    found: list[str] = []
    for path in fragments:
        for line in _MAKE_LINE.findall(path.read_text(errors="replace")):
            for word in line.split():
                if not _MAKE_VAR.fullmatch(word):
                    raise KernelError(
                        f"{path}: klp-harness-make: {word!r} is not VAR=value "
                        "(upper-case name; letters, digits, _ . / + - in the value)"
                    )
                found.append(word)
    return found


def _make_output(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def _die_with_parent() -> None:
    """In the make child: SIGTERM when the harness dies, so no orphaned build runs on."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def image_path(arch: Arch) -> str:
    """The boot image in an entry."""
    return f"obj/{arch.image}"


def _build(
    objdir: Path, log: Path, label: str, printer: Printer, make_vars: list[str], target: str
) -> float:
    """`nice make -jN <image> modules` with a progress line a minute; seconds taken."""
    argv = ["nice", "-n", "10", "make", f"-j{JOBS}", "-C", str(objdir), *make_vars]
    argv += [target, "modules"]
    start = time.monotonic()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
        while True:
            try:
                proc.wait(timeout=PROGRESS_SECONDS)
                break
            except subprocess.TimeoutExpired:
                objects = log.read_text(errors="replace").count("  CC  ")
                minutes = (time.monotonic() - start) / 60
                printer.say(f"still building {label} ({minutes:.0f} min, {objects} objects)")
            except BaseException:
                proc.kill()
                raise
    if proc.returncode != 0:
        raise KernelError(f"building {label} failed (log: {log}):\n{error_tail(log)}")
    return time.monotonic() - start


def check_system_map(table: Path, system_map: Path) -> list[str]:
    """Names several times in the recovered table whose count differs in System.map (they
    would get other sympos); empty when the two agree. Only System.map entries of the kinds
    the table has for that name count (without KALLSYMS_ALL kallsyms holds no data)."""
    ours: collections.Counter[str] = collections.Counter()
    kinds: dict[str, set[str]] = collections.defaultdict(set)
    for symbol in kallsyms.read(table):
        ours[symbol.name] += 1
        kinds[symbol.name].add(symbol.type.lower())
    theirs: collections.Counter[str] = collections.Counter()
    with open(system_map, errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and ours[parts[2]] > 1 and parts[1].lower() in kinds[parts[2]]:
                theirs[parts[2]] += 1
    return sorted(n for n, c in ours.items() if c > 1 and theirs[n] != c)


def _tree_and_label(spec: Spec, printer: Printer) -> tuple[SourceTree, str, str]:
    """(tree, short version for the name, source version for the cache key)."""
    if spec.path is not None:
        tree = user_tree(spec.path)
        version = _make_output(["make", "-s", "-C", str(tree.path), "kernelversion"])
        where = hashlib.sha256(str(spec.path).encode()).hexdigest()[:6]
        return tree, f"{version}-{where}", f"{spec.path}@{version}"
    tree = fetch_source(spec.ref, printer=printer)
    return tree, spec.ref, tree.pinned


_META_KEYS: dict[str, type] = {
    "name": str,
    "release": str,
    "package_version": str,
    "packages": list,
}
_OPTIONAL_KEYS: dict[str, type] = {"arch": str, "image_bytes": int}


def _entry_meta(entry: Path) -> KernelMeta:
    """The kernel of a finished build (the tree built in obj/, modules installed in modroot/);
    DamagedEntry when its kernel.json or files are not what the build left."""
    meta = read_meta(entry, _META_KEYS)
    for key, kind in _OPTIONAL_KEYS.items():
        if key in meta and not isinstance(meta[key], kind):
            raise DamagedEntry(f"kernel.json: bad {key!r}")
    try:
        arch = find_arch(meta.get("arch", HOST))
    except KernelError as err:
        raise DamagedEntry(f"kernel.json: {err}") from None
    image = image_path(arch)
    release = meta["release"]
    if "/" in release or release in ("", ".", ".."):
        raise DamagedEntry(f"kernel.json: bad 'release' {release!r}")
    for need in ("obj/.config", "obj/Module.symvers", "kallsyms"):
        if not (entry / need).is_file():
            raise DamagedEntry(f"{need}: missing")
    if problem := image_problem(entry / image, arch.name):
        raise DamagedEntry(problem)
    if "image_bytes" in meta and (entry / image).stat().st_size != meta["image_bytes"]:
        raise DamagedEntry(f"{image}: not the {meta['image_bytes']} bytes the build wrote")
    return KernelMeta(
        name=meta["name"],
        release=release,
        package_version=meta["package_version"],
        packages=meta["packages"],
        vmlinuz=image,
        modules_dir=f"modroot/lib/modules/{release}",
        config="obj/.config",
        headers="obj",
        arch=arch.name,
    )


def _entry_kernel(spec: Spec, entry: Path) -> Kernel:
    return Kernel.from_meta(spec.text, entry, _entry_meta(entry))


def check_build(entry: Path) -> str:
    """What is wrong with a finished build in the cache ("" when sound), for `kernels verify`."""
    try:
        _entry_meta(entry)
    except DamagedEntry as err:
        return str(err)
    return ""


def _entry(spec: Spec, label: str, fragments: list[Path], source_id: str) -> tuple[str, str, Path]:
    """(name, hash of the recipe, source and fragments, cache entry) of a build; another
    architecture's make variables are part of the recipe (the host's are none)."""
    arch = find_arch(spec.arch)
    recipe = RECIPE if spec.arch == HOST else f"{RECIPE} {' '.join(arch.make_vars())}"
    digest = fragments_hash(fragments, recipe, source_id)[:12]
    suffix = "" if spec.arch == HOST else f"-{spec.arch}"
    name = f"source-{label}-{spec.config}{suffix}"
    return name, digest, cache_dir("source-builds") / f"{name}-{digest}"


def source_kernel(spec: Spec, *, printer: Printer | None = None) -> Kernel:
    """Build (or find in the cache) the kernel a `source:` spec names."""
    printer = printer or Printer()
    fragments = fragment_paths(spec.config, spec.arch)
    find_arch(spec.arch).require_tools()
    tree, label, source_id = _tree_and_label(spec, printer)
    name, digest, entry = _entry(spec, label, fragments, source_id)
    if (entry / MARKER).is_file():
        with contextlib.suppress(DamagedEntry):  # said and redone under the lock below
            return _entry_kernel(spec, entry)
    with locked(entry):
        if (entry / MARKER).is_file():
            try:
                return _entry_kernel(spec, entry)
            except DamagedEntry as err:  # the build resumes in place: make redoes what is gone
                printer.warn(f"{entry}: cached build damaged ({err}), building it again")
                (entry / MARKER).unlink()
                image = entry / image_path(find_arch(spec.arch))
                if image_problem(image, spec.arch):  # make would keep a truncated file
                    image.unlink(missing_ok=True)
        _build_entry(spec, tree, fragments, entry, name, digest, printer)
    return _entry_kernel(spec, entry)


def _build_entry(
    spec: Spec,
    tree: SourceTree,
    fragments: list[Path],
    entry: Path,
    name: str,
    digest: str,
    printer: Printer,
) -> None:
    # Built in place (not staged): kbuild records absolute paths. A failed build is resumed.
    entry.mkdir(parents=True, exist_ok=True)
    objdir, log = entry / "obj", entry / "build.log"
    with open(log, "a") as handle:  # a resumed build keeps the earlier attempts' log
        handle.write(f"# klp-harness: {spec.text} from {tree.path}\n")
    start = time.monotonic()
    printer.say(f"configuring {name}: tinyconfig + {', '.join(p.name for p in fragments)}")
    arch = find_arch(spec.arch)
    make_vars = arch.make_vars() + make_variables(fragments)
    configure(
        tree.path, objdir, fragments, log, printer=printer, make_vars=make_vars,
        arch_dir=arch.kbuild,
    )  # fmt: skip
    printer.say(f"building {name} with make -j{JOBS} {' '.join(make_vars)} (log: {log})")
    seconds = _build(objdir, log, name, printer, make_vars, arch.target)
    printer.say(f"built {name} in {seconds / 60:.1f} min")
    make = ["make", "-C", str(objdir), *make_vars]
    release = _make_output([*make, "-s", "kernelrelease"])
    modroot = entry / "modroot"
    run_logged([*make, f"INSTALL_MOD_PATH={modroot}", "modules_install"], log)
    (modroot / "lib/modules" / release).mkdir(parents=True, exist_ok=True)
    image = entry / image_path(arch)
    printer.say(f"recovering the symbol table from {image}")
    system_map = objdir / "System.map"
    rebase = None if arch.name == HOST else system_map
    if arch.symbols == "system-map":
        rec = kallsyms.from_system_map(system_map, entry / "kallsyms")
    else:
        rec = kallsyms.recover(image, entry / "kallsyms", system_map=rebase)
    differ = check_system_map(rec.path, system_map)
    if differ:
        raise KernelError(
            f"{name}: the table recovered from {image.name} and System.map count these names "
            f"differently: {', '.join(differ[:10])}"
        )
    printer.say(f"{rec.count} symbols, duplicated names agree with System.map")
    meta = {
        "name": name,
        "release": release,
        "package_version": f"{tree.version or 'tree'}+{digest}",
        "packages": [tree.pinned] if tree.package else [],
        "source": str(tree.path),
        "fragments": [str(p) for p in fragments],
        "build_seconds": round(seconds, 1),
        "total_seconds": round(time.monotonic() - start, 1),
        "symbols": rec.count,
    }
    if arch.name != HOST:  # the host's entries keep their old kernel.json
        meta |= {"arch": arch.name, "image_bytes": image.stat().st_size}
    atomic_write_text(entry / "kernel.json", json.dumps(meta, indent=1))
    (entry / MARKER).touch()


def cached_source_kernel(spec: Spec) -> Kernel | None:
    """The source kernel as last resolved and built, never fetching or building."""
    if spec.path is not None:
        return None
    tree = cached_source(spec.ref)
    try:
        fragments = fragment_paths(spec.config, spec.arch)
    except KernelError:
        return None
    if tree is None:
        return None
    entry = _entry(spec, spec.ref, fragments, tree.pinned)[2]
    if not (entry / MARKER).is_file():
        return None
    try:
        return _entry_kernel(spec, entry)
    except DamagedEntry as err:
        raise KernelError(
            f"{spec.text}: cached build {entry} damaged ({err}); "
            f"`klp-harness kernels fetch {spec.text}` builds it again"
        ) from None
