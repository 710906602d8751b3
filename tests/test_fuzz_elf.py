"""Truncated and byte-mutated ELF files: only the clean error path (HarnessError) is allowed."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import struct
import traceback
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, write_symvers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli.main import INTERNAL_ERROR, main
from harness.errors import HarnessError
from harness.klp.convert import convert_module, undefined_symbols
from harness.klp.inspect import inspect_module, verdicts
from harness.klp.symbols import SymbolTable

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    out = {
        n: compile_module(tmp, n, d).read_bytes()
        for n, d in (
            ("plain", ()),
            ("ann", ("ANNOTATE",)),
            ("lp", ("LIVEPATCH",)),
            ("anngrp", ("ANNOTATE", "GROUP")),  # sections renumbered, a group among them
        )
    }
    table = SymbolTable.load(KALLSYMS_EXCERPT)
    conv = tmp / "conv.o"
    convert_module(
        tmp / "plain.o",
        conv,
        symtab=table,
        exports={"_printk", "init_task"},
        sympos={"active_show": 2},
    )
    out["converted"] = conv.read_bytes()
    return out


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.load(KALLSYMS_EXCERPT)


def _hot_offsets(data: bytes) -> list[int]:
    """Header and section-header bytes: where a flipped byte changes structure."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    return list(range(64)) + list(range(shoff, shoff + shnum * 64))


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    kind = draw(st.sampled_from(["truncate", "bytes", "header", "both"]))
    if kind in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data) - 1))]
    if kind in ("bytes", "header", "both") and data:
        hot = [o for o in _hot_offsets(bytes(data)) if o < len(data)] if len(data) >= 64 else []
        for _ in range(draw(st.integers(1, 8))):
            if kind == "header" and hot:
                pos = draw(st.sampled_from(hot))
            else:
                pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


def _check(data: bytes, workdir: Path, table: SymbolTable) -> None:
    src, dst = workdir / "in.o", workdir / "out.o"
    src.write_bytes(data)
    dst.unlink(missing_ok=True)
    try:
        convert_module(
            src, dst, symtab=table, exports={"_printk", "init_task"}, sympos={"active_show": 2}
        )
    except HarnessError:
        assert not dst.exists()
    else:
        inspect_module(dst)  # whatever we wrote must read back cleanly
    with contextlib.suppress(HarnessError):  # any verdict is fine; only no crash matters
        verdicts(inspect_module(src), table)
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def _run(seeds: dict[str, bytes], table: SymbolTable, workdir: Path, examples: int) -> None:
    @settings(max_examples=examples, **SETTINGS)  # type: ignore[arg-type]
    @given(mutated(seeds))
    def inner(data: bytes) -> None:
        _check(data, workdir, table)

    inner()


def test_fuzz_default(seeds: dict[str, bytes], table: SymbolTable, tmp_path: Path) -> None:
    _run(seeds, table, tmp_path, 300)


@pytest.mark.long
def test_fuzz_long(seeds: dict[str, bytes], table: SymbolTable, tmp_path: Path) -> None:
    _run(seeds, table, tmp_path, 6000)


def test_every_truncation(seeds: dict[str, bytes], table: SymbolTable, tmp_path: Path) -> None:
    data = seeds["plain"]
    for cut in range(0, len(data), max(1, len(data) // 400)):
        _check(data[:cut], tmp_path, table)


# -- through the CLI: convert and inspect, as a user runs them ----------------------------------
#
# Deterministic (case i uses random.Random(i)), so any failure is replayed by its number.
# Seeds: the compiled modules above, plus every .ko under $KLP_FUZZ_SEEDS (real kbuild output,
# Debian's own modules) when set. `-m long` runs $KLP_FUZZ_CASES cases (default 20,000).

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFF20, 0xFFF1, 0xFFFF_FFFF, 1 << 31, 1 << 63]


def _sections(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset, size) of each section header that lies inside `data`."""
    if len(data) < 64:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    out = []
    for i in range(1, shnum):
        at = shoff + i * 64
        if at + 64 > len(data):
            break
        stype, _, _, off, size = struct.unpack_from("<IIQQQQ", data, at)[1:6]
        if off + size <= len(data):
            out.append((stype, off, size))
    return out


def cli_mutation(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        secs = _sections(bytes(data))
        kind = rng.choice(["truncate", "byte", "header", "field", "name", "name"])
        if kind == "truncate" or not data:
            data = data[: rng.randrange(len(data) + 1)]
            continue
        if kind == "header" and len(data) >= 64:
            hot = [o for o in _hot_offsets(bytes(data)) if o < len(data)]
            data[rng.choice(hot)] = rng.randrange(256)
        elif kind in ("field", "name") and secs:
            # inside a section: symbols, relocations, string tables (st_name, r_info, names)
            wanted = (2, 4, 17) if kind == "field" else (3,)
            pool = [s for s in secs if s[0] in wanted and s[2]] or secs
            _, off, size = rng.choice(pool)
            if not size:
                continue
            pos = off + rng.randrange(size)
            if kind == "field":
                width = rng.choice([1, 2, 4, 8])
                value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
                if pos + width <= len(data):
                    data[pos : pos + width] = value.to_bytes(width, "little")
            else:
                data[pos] = rng.choice(b"\x1b\r\n\x9b\x00,.[" + bytes([rng.randrange(256)]))
        else:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _call(argv: list[str]) -> tuple[int | None, str, str, str]:
    """(exit status, stdout, stderr, traceback or "") of one in-process CLI call."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc: int | None = main(argv)
    except Exception:  # KLP_HARNESS_DEBUG=1: a bug of ours surfaces here, not as exit 70
        return None, out.getvalue(), err.getvalue(), traceback.format_exc()
    return rc, out.getvalue(), err.getvalue(), ""


def _judge(what: str, rc: int | None, out: str, err: str, tb: str) -> str:
    """ "" when the call behaved: exit 0/1, or one `klp-harness:` line with a HarnessError
    status; never a traceback, an internal error (70) or a control character."""
    if tb:
        return f"{what}: traceback: {tb.strip().splitlines()[-1]}"
    if rc == INTERNAL_ERROR:
        return f"{what}: internal error: {err.strip()}"
    if CONTROL.search(out + err):
        return f"{what}: control character in the output"
    lines = err.splitlines()
    if rc not in (0, 1) and not (len(lines) == 1 and lines[0].startswith("klp-harness: ")):
        return f"{what}: exit {rc} without one error line: {err!r}"
    return ""


def cli_case(i: int, seeds: list[tuple[str, bytes]], work: Path, target: list[str]) -> str:
    """Run case `i`; "" when convert and inspect both behaved, else what went wrong."""
    rng = random.Random(i)
    name, seed = seeds[i % len(seeds)]
    data = cli_mutation(seed, rng)
    src, dst = work / "in.ko", work / "out" / "out.ko"
    src.write_bytes(data)
    dst.parent.mkdir(exist_ok=True)
    dst.unlink(missing_ok=True)
    extra = ["--sympos", "active_show=2"] if rng.random() < 0.5 else []
    rc, out, err, tb = _call(["convert", str(src), "-o", str(dst), *target, *extra])
    problem = _judge("convert", rc, out, err, tb)
    left = [p.name for p in dst.parent.iterdir() if p.name != "out.ko" or rc not in (0, None)]
    if not problem and left:
        problem = f"convert: left {left} after exit {rc}"
    if not problem and rc == 0:
        rc2, out, err, tb = _call(["inspect", str(dst), *target[:2]])
        problem = _judge("inspect of the output", rc2, out, err, tb)
        if not problem and rc2 not in (0, 1):
            problem = f"inspect cannot read what convert wrote: {err.strip()}"
    if not problem:
        args = ["inspect", str(src), *target[:2]] + (["--json"] if rng.random() < 0.3 else [])
        problem = _judge("inspect", *_call(args))
    return f"case {i} (seed {name}): {problem}" if problem else ""


@pytest.fixture(scope="module")
def cli_work(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[tuple[str, bytes]], Path, list[str]]:
    work = tmp_path_factory.mktemp("cli-fuzz")
    extra = (
        sorted(Path(os.environ["KLP_FUZZ_SEEDS"]).rglob("*.ko"))
        if os.environ.get("KLP_FUZZ_SEEDS")
        else []
    )
    pool = sorted(seeds.items()) + [(str(p), p.read_bytes()) for p in extra]
    # every undefined name of every seed gets one address, so conversion gets to the rewrite
    table = KALLSYMS_EXCERPT.read_text()
    known = {line.split()[2] for line in table.splitlines() if line.strip()}
    names: set[str] = set()
    for path in [work / "seed.ko"]:
        for _, data in pool:
            path.write_bytes(data)
            with contextlib.suppress(HarnessError):
                names.update(undefined_symbols(path))
    lines = [
        f"{0xFFFFFFFF82000000 + 16 * n:016x} T {s}\n" for n, s in enumerate(sorted(names - known))
    ]
    (work / "map").write_text(table + "".join(lines))
    write_symvers(work)
    target = ["--system-map", str(work / "map"), "--symvers", str(work / "Module.symvers")]
    return pool, work, target


def _cli_fuzz(
    cli_work: tuple[list[tuple[str, bytes]], Path, list[str]],
    cases: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLP_HARNESS_DEBUG", "1")
    pool, work, target = cli_work
    start = int(os.environ.get("KLP_FUZZ_START", "0"))
    problems = [p for i in range(start, start + cases) if (p := cli_case(i, pool, work, target))]
    print(
        f"\ncli fuzz: {cases} cases from {len(pool)} seeds ({start}..{start + cases - 1}): "
        f"{len(problems)} failures (tracebacks, internal errors, bad output)"
    )
    assert problems == [], "\n".join(problems[:20])


def test_cli_fuzz(
    cli_work: tuple[list[tuple[str, bytes]], Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_fuzz(cli_work, 200, monkeypatch)


@pytest.mark.long
def test_cli_fuzz_long(
    cli_work: tuple[list[tuple[str, bytes]], Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_fuzz(cli_work, int(os.environ.get("KLP_FUZZ_CASES", "20000")), monkeypatch)
