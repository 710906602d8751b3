"""Truncated and byte-mutated ELF files: only the clean error path (HarnessError) is allowed."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.convert import convert_module
from harness.errors import HarnessError
from harness.inspect_klp import inspect_module, verdicts
from harness.symbols import SymbolTable

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    out = {n: compile_module(tmp, n, d).read_bytes()
           for n, d in (("plain", ()), ("ann", ("ANNOTATE",)))}
    table = SymbolTable.load(KALLSYMS_EXCERPT)
    conv = tmp / "conv.o"
    convert_module(tmp / "plain.o", conv, symtab=table, exports={"_printk", "init_task"},
                   sympos={"active_show": 2})
    out["converted"] = conv.read_bytes()
    return out


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.load(KALLSYMS_EXCERPT)


def _hot_offsets(data: bytes) -> list[int]:
    """Header and section-header bytes: where a flipped byte changes structure."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, = struct.unpack_from("<H", data, 0x3C)
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
        convert_module(src, dst, symtab=table, exports={"_printk", "init_task"},
                       sympos={"active_show": 2})
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
