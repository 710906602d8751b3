"""Checks of what the kernel cache holds: a .deb against the Size and SHA256 apt recorded, a
vmlinuz against its own boot header, and a Debian kernel entry against the manifest (size +
sha256) of the files the harness relies on, written into its kernel.json at install."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text, try_locked
from harness.errors import HarnessError, KernelError
from harness.fileio import read_regular
from harness.kernels.kernel import KernelMeta

MARKER = ".complete"
META = "kernel.json"
META_LIMIT = 1 << 20
# kernel.json of a Debian entry: key -> type; the paths are relative to the entry
DEBIAN_KEYS: dict[str, type] = {
    "abi": str,
    "version": str,
    "packages": list,
    "vmlinuz": str,
    "config": str,
    "modules_dir": str,
    "headers": str,
}


_KINDS = {str: "string", list: "list", int: "number", dict: "table"}


def debian_kernel(meta: dict[str, Any]) -> KernelMeta:
    """The kernel a Debian entry's kernel.json (checked against DEBIAN_KEYS) records."""
    kernel = KernelMeta(
        name=f"debian-{meta['abi']}",
        release=meta["abi"],
        package_version=meta["version"],
        packages=meta["packages"],
        vmlinuz=meta["vmlinuz"],
        modules_dir=meta["modules_dir"],
        config=meta["config"],
        headers=meta["headers"],
    )
    if isinstance(meta.get("arch"), str):  # a kernel of another architecture (arm64)
        kernel["arch"] = meta["arch"]
    return kernel


class DamagedEntry(KernelError):
    """A cache entry whose files are not what was installed."""


def digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, streamed."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        return size, hashlib.file_digest(handle, "sha256").hexdigest()


def deb_problem(path: Path, size: int, sha256: str, source: str = "apt's record") -> str:
    """What differs between a cached .deb and `source` ("" when it matches; a 0 size or an
    empty hash is not checked)."""
    try:
        have = path.stat().st_size
    except OSError as err:
        return err.strerror or "unreadable"
    if size and have != size:
        return f"size {have}, {source} says {size}"
    if sha256 and digest(path)[1] != sha256.lower():
        return f"sha256 differs from {source}"
    return ""


def vmlinuz_problem(path: Path) -> str:
    """What is wrong with a bzImage by the x86 boot protocol ("" when plausible): the 0xAA55
    boot flag, the 'HdrS' magic at 0x202, and a size of at least the setup sectors plus the
    protected-mode part its header declares (a truncated file is shorter)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(0x264)
    except OSError as err:
        return f"{path.name}: {err.strerror}"
    if len(head) < 0x264:
        return f"{path.name}: {size} bytes, too short for a kernel image"
    if head[0x202:0x206] != b"HdrS" or head[0x1FE:0x200] != b"\x55\xaa":
        return f"{path.name}: no x86 boot header (no 'HdrS' magic at 0x202)"
    setup_sects = head[0x1F1] or 4
    (syssize,) = struct.unpack_from("<I", head, 0x1F4)
    want = (setup_sects + 1) * 512 + syssize * 16
    if size < want:
        return f"{path.name}: truncated, {size} bytes where its boot header says {want}"
    return ""


def image_problem(path: Path, arch: str) -> str:
    """What is wrong with a boot image of `arch` ("" when plausible): a bzImage by the x86
    boot protocol, an arm64 Image by its header's magic (a truncated Image is caught by the
    size its build recorded), an ELF vmlinux by its ELF magic."""
    if arch == "x86_64":
        return vmlinuz_problem(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as err:
        return f"{path.name}: {err.strerror}"
    if arch == "arm64":
        good = len(head) == 64 and head[0x38:0x3C] == b"ARM\x64"
        return "" if good else f"{path.name}: no arm64 Image header (no 'ARM\\x64' at 0x38)"
    return "" if head[:4] == b"\x7fELF" else f"{path.name}: not an ELF kernel image"


def _inside(entry: Path, rel: object, what: str) -> Path:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise DamagedEntry(f"{META}: {what} is not a path inside the entry")
    return entry / rel


def read_meta(entry: Path, keys: dict[str, type]) -> dict[str, Any]:
    """An entry's kernel.json, with every key of `keys` of its type; DamagedEntry else."""
    try:
        meta = json.loads(read_regular(entry / META, META_LIMIT, follow=False))
    except HarnessError as err:
        raise DamagedEntry(str(err).replace(str(entry / META), META)) from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedEntry(f"{META}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise DamagedEntry(f"{META}: not a JSON object")
    for key, kind in keys.items():
        if not isinstance(meta.get(key), kind):
            raise DamagedEntry(f"{META}: {key!r} missing or not a {_KINDS[kind]}")
    if "packages" in keys and not all(isinstance(p, str) for p in meta["packages"]):
        raise DamagedEntry(f"{META}: 'packages' is not a list of strings")
    return meta


def record(entry: Path, rels: Iterable[str]) -> dict[str, list[int | str]]:
    """The manifest of the regular files `rels` (relative to `entry`): {rel: [size, sha256]}."""
    out: dict[str, list[int | str]] = {}
    for rel in rels:
        path = entry / rel
        if path.is_file() and not path.is_symlink():
            size, sha = digest(path)
            out[rel] = [size, sha]
    return out


def files_problem(entry: Path, files: object) -> str:
    """The first recorded file that is missing or differs ("" when all match)."""
    if not isinstance(files, dict) or not files:
        return f"{META}: no file manifest"
    for rel, want in files.items():
        path = _inside(entry, rel, f"manifest entry {rel!r}")
        if not (isinstance(want, list) and [type(w) for w in want] == [int, str]):
            return f"{META}: bad manifest entry for {rel}"
        try:
            info = os.lstat(path)
        except OSError:
            return f"{rel}: missing"
        if not stat.S_ISREG(info.st_mode):
            return f"{rel}: not a regular file"
        if info.st_size != want[0]:
            return f"{rel}: {info.st_size} bytes, {want[0]} when installed"
        if digest(path)[1] != want[1]:
            return f"{rel}: sha256 differs from the one recorded at install"
    return ""


def _debian_paths(entry: Path, meta: dict[str, Any]) -> dict[str, Path]:
    keys = ("vmlinuz", "config", "headers", "modules_dir")
    return {k: _inside(entry, meta[k], repr(k)) for k in keys}


def debian_rels(entry: Path, meta: dict[str, Any]) -> list[str]:
    """The files of a Debian entry the harness relies on, relative to the entry: vmlinuz,
    config, the recovered table, the headers' Makefiles, Module.symvers and .config, the
    kbuild tools modules build with, and the modules tree's index files."""
    paths = _debian_paths(entry, meta)
    headers, modules = paths["headers"], paths["modules_dir"]
    wanted = [paths["vmlinuz"], paths["config"], entry / "kallsyms"]
    wanted += sorted(headers.parent.glob("linux-headers-*/Makefile"))
    wanted += [headers / "Module.symvers", headers / ".config"]
    wanted += [headers / "scripts" / t for t in ("basic/fixdep", "mod/modpost")]
    wanted += [modules / "modules.order", modules / "modules.builtin"]
    root = entry.resolve()
    rels = []
    for path in wanted:
        real = path.resolve()  # the kbuild tools are reached through the `scripts` link
        if real.is_relative_to(root):
            rels.append(str(real.relative_to(root)))
    return list(dict.fromkeys(rels))


def _legacy_problem(entry: Path, meta: dict[str, Any]) -> str:
    """Checks for an entry installed before manifests existed (each file there, the vmlinuz
    whole by its header, the table of the recorded length)."""
    paths = _debian_paths(entry, meta)
    for key in ("config", "vmlinuz"):
        if not paths[key].is_file():
            return f"{meta[key]}: missing"
    for need in ("Makefile", "Module.symvers"):
        if not (paths["headers"] / need).is_file():
            return f"{meta['headers']}/{need}: missing"
    if problem := image_problem(paths["vmlinuz"], meta.get("arch", "x86_64")):
        return problem
    try:
        with open(entry / "kallsyms", "rb") as handle:
            lines = sum(1 for _ in handle)
    except OSError:
        return "kallsyms: missing"
    if lines != meta.get("symbols", lines):
        return f"kallsyms: {lines} lines, {meta.get('symbols')} when installed"
    return ""


def debian_entry(entry: Path) -> dict[str, Any] | None:
    """The kernel.json of a complete, sound Debian entry; None when there is none (never
    installed, or interrupted before its marker); DamagedEntry naming what differs.

    An entry from before manifests passes the checks it can and gets its manifest recorded
    now (only when its lock is free: an install in progress is never written into).
    """
    if not (entry / MARKER).is_file():
        return None
    meta = read_meta(entry, DEBIAN_KEYS)
    if "files" not in meta:
        if problem := _legacy_problem(entry, meta):
            raise DamagedEntry(problem)
        with try_locked(entry) as mine:
            if mine:
                meta["files"] = record(entry, debian_rels(entry, meta))
                atomic_write_text(entry / META, json.dumps(meta, indent=1))
            else:
                return meta
    if problem := files_problem(entry, meta["files"]):
        raise DamagedEntry(problem)
    arch = meta.get("arch", "x86_64")
    if problem := image_problem(_debian_paths(entry, meta)["vmlinuz"], arch):
        raise DamagedEntry(problem)
    if not (_debian_paths(entry, meta)["headers"] / "scripts").resolve().is_dir():
        raise DamagedEntry(f"{meta['headers']}/scripts: does not resolve")
    return meta


def debs_problem(debs: Path, meta: dict[str, Any]) -> str:
    """The first cached .deb of an entry that differs from its record (a .deb no longer in
    the cache is no damage: it is fetched again when needed)."""
    recorded = meta.get("debs", {})
    if not isinstance(recorded, dict):
        return f"{META}: bad 'debs'"
    for name, want in recorded.items():
        if "/" in name or not (isinstance(want, list) and [type(w) for w in want] == [int, str]):
            return f"{META}: bad 'debs' entry {name!r}"
        path = debs / name
        if path.is_file() and (
            problem := deb_problem(path, want[0], want[1], "the install's record")
        ):
            return f"{path}: {problem}"
    return ""
