"""Kernels built from source (`source:X.Y:CONFIG`, `source:PATH:CONFIG`): configure, build
out of tree (O=) with progress and a kept log, install an (even empty) modules tree, recover the
symbol table from bzImage, all cached by (source version, merged fragments hash)."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked
from harness.errors import KernelError
from harness.kernels import kallsyms
from harness.kernels.kernel import Kernel
from harness.kernels.source import (
    SourceTree,
    cached_source,
    configure,
    error_tail,
    fetch_source,
    fragment_paths,
    fragments_hash,
    run_logged,
    say,
    user_tree,
)
from harness.kernels.spec import Spec
from harness.kernels.verify import DamagedEntry, read_meta, vmlinuz_problem

RECIPE = "1"  # bump when the build steps change: every source kernel is rebuilt
MARKER = ".complete"
JOBS = int(os.environ.get("KLP_HARNESS_BUILD_JOBS", "2"))
PROGRESS_SECONDS = 60.0


def _make_output(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def _die_with_parent() -> None:
    """In the make child: SIGTERM when the harness dies, so no orphaned build runs on."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _build(objdir: Path, log: Path, label: str, quiet: bool) -> float:
    """`nice make -jN bzImage modules` with a progress line a minute; seconds taken."""
    argv = ["nice", "-n", "10", "make", f"-j{JOBS}", "-C", str(objdir), "bzImage", "modules"]
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
                say(f"still building {label} ({minutes:.0f} min, {objects} objects)", quiet)
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
    for _, kind, name in kallsyms.read(table):
        ours[name] += 1
        kinds[name].add(kind.lower())
    theirs: collections.Counter[str] = collections.Counter()
    with open(system_map, errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and ours[parts[2]] > 1 and parts[1].lower() in kinds[parts[2]]:
                theirs[parts[2]] += 1
    return sorted(n for n, c in ours.items() if c > 1 and theirs[n] != c)


def _tree_and_label(spec: Spec, quiet: bool) -> tuple[SourceTree, str, str]:
    """(tree, short version for the name, source version for the cache key)."""
    if spec.path is not None:
        tree = user_tree(spec.path)
        version = _make_output(["make", "-s", "-C", str(tree.path), "kernelversion"])
        where = hashlib.sha256(str(spec.path).encode()).hexdigest()[:6]
        return tree, f"{version}-{where}", f"{spec.path}@{version}"
    tree = fetch_source(spec.ref, quiet)
    return tree, spec.ref, f"{tree.package}={tree.version}"


_META_KEYS: dict[str, type] = {
    "name": str,
    "release": str,
    "package_version": str,
    "packages": list,
}


def _entry_kernel(spec: Spec, entry: Path) -> Kernel:
    """The kernel of a finished build; DamagedEntry when its kernel.json or files are not
    what the build left."""
    meta = read_meta(entry, _META_KEYS)
    if "/" in meta["release"] or meta["release"] in ("", ".", ".."):
        raise DamagedEntry(f"kernel.json: bad 'release' {meta['release']!r}")
    objdir = entry / "obj"
    for need in (objdir / ".config", objdir / "Module.symvers", entry / "kallsyms"):
        if not need.is_file():
            raise DamagedEntry(f"{need.relative_to(entry)}: missing")
    if problem := vmlinuz_problem(objdir / "arch/x86/boot/bzImage"):
        raise DamagedEntry(problem)
    return Kernel(
        spec=spec.text,
        name=meta["name"],
        release=meta["release"],
        package_version=meta["package_version"],
        vmlinuz=objdir / "arch/x86/boot/bzImage",
        modules_dir=entry / "modroot/lib/modules" / meta["release"],
        config=objdir / ".config",
        headers=objdir,
        symvers=objdir / "Module.symvers",
        kallsyms=entry / "kallsyms",
        packages=tuple(meta["packages"]),
    )


def check_build(entry: Path) -> str:
    """What is wrong with a finished build in the cache ("" when sound), for `kernels verify`."""
    try:
        _entry_kernel(Spec("source", entry.name), entry)
    except DamagedEntry as err:
        return str(err)
    return ""


def source_kernel(spec: Spec, *, quiet: bool = False) -> Kernel:
    """Build (or find in the cache) the kernel a `source:` spec names."""
    fragments = fragment_paths(spec.config)
    tree, label, source_id = _tree_and_label(spec, quiet)
    digest = fragments_hash(fragments, RECIPE, source_id)[:12]
    name = f"source-{label}-{spec.config}"
    entry = cache_dir("source-builds") / f"{name}-{digest}"
    if (entry / MARKER).is_file():
        with contextlib.suppress(DamagedEntry):  # said and redone under the lock below
            return _entry_kernel(spec, entry)
    with locked(entry):
        if (entry / MARKER).is_file():
            try:
                return _entry_kernel(spec, entry)
            except DamagedEntry as err:  # the build resumes in place: make redoes what is gone
                say(f"{entry}: cached build damaged ({err}), building it again", False)
                (entry / MARKER).unlink()
                bzimage = entry / "obj/arch/x86/boot/bzImage"
                if vmlinuz_problem(bzimage):  # make would keep a truncated file it thinks new
                    bzimage.unlink(missing_ok=True)
        _build_entry(spec, tree, fragments, entry, name, digest, quiet)
    return _entry_kernel(spec, entry)


def _build_entry(
    spec: Spec,
    tree: SourceTree,
    fragments: list[Path],
    entry: Path,
    name: str,
    digest: str,
    quiet: bool,
) -> None:
    # Built in place (not staged): kbuild records absolute paths. A failed build is resumed.
    entry.mkdir(parents=True, exist_ok=True)
    objdir, log = entry / "obj", entry / "build.log"
    with open(log, "a") as handle:  # a resumed build keeps the earlier attempts' log
        handle.write(f"# klp-harness: {spec.text} from {tree.path}\n")
    start = time.monotonic()
    say(f"configuring {name}: tinyconfig + {', '.join(p.name for p in fragments)}", quiet)
    configure(tree.path, objdir, fragments, log, quiet)
    say(f"building {name} with make -j{JOBS} (log: {log})", quiet)
    seconds = _build(objdir, log, name, quiet)
    say(f"built {name} in {seconds / 60:.1f} min", quiet)
    release = _make_output(["make", "-s", "-C", str(objdir), "kernelrelease"])
    modroot = entry / "modroot"
    run_logged(["make", "-C", str(objdir), f"INSTALL_MOD_PATH={modroot}", "modules_install"], log)
    (modroot / "lib/modules" / release).mkdir(parents=True, exist_ok=True)
    bzimage = objdir / "arch/x86/boot/bzImage"
    say(f"recovering the symbol table from {bzimage}", quiet)
    rec = kallsyms.recover(bzimage, entry / "kallsyms")
    differ = check_system_map(rec.path, objdir / "System.map")
    if differ:
        raise KernelError(
            f"{name}: the table recovered from bzImage and System.map count these names "
            f"differently: {', '.join(differ[:10])}"
        )
    say(f"{rec.count} symbols, duplicated names agree with System.map", quiet)
    meta = {
        "name": name,
        "release": release,
        "package_version": f"{tree.version or 'tree'}+{digest}",
        "packages": [f"{tree.package}={tree.version}"] if tree.package else [],
        "source": str(tree.path),
        "fragments": [str(p) for p in fragments],
        "build_seconds": round(seconds, 1),
        "total_seconds": round(time.monotonic() - start, 1),
        "symbols": rec.count,
    }
    atomic_write_text(entry / "kernel.json", json.dumps(meta, indent=1))
    (entry / MARKER).touch()


def cached_source_kernel(spec: Spec) -> Kernel | None:
    """The source kernel as last resolved and built, never fetching or building."""
    if spec.path is not None:
        return None
    tree = cached_source(spec.ref)
    try:
        fragments = fragment_paths(spec.config)
    except KernelError:
        return None
    if tree is None:
        return None
    digest = fragments_hash(fragments, RECIPE, f"{tree.package}={tree.version}")[:12]
    entry = cache_dir("source-builds") / f"source-{spec.ref}-{spec.config}-{digest}"
    if not (entry / MARKER).is_file():
        return None
    try:
        return _entry_kernel(spec, entry)
    except DamagedEntry as err:
        raise KernelError(
            f"{spec.text}: cached build {entry} damaged ({err}); "
            f"`klp-harness kernels fetch {spec.text}` builds it again"
        ) from None
