"""The converter on objects compiled here with kernel-like flags, checked field by field."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elfbuild import (
    KALLSYMS_EXCERPT,
    compile_module,
    have_gcc,
    readelf,
    symbol_table,
    write_symvers,
)
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from harness.errors import (
    AmbiguousSymbolError,
    AnnotationUseError,
    ModuleTargetError,
    NotElfError,
    RelocationTypeError,
    SymbolNotFoundError,
    SymposRangeError,
    UnsupportedElfError,
    UsageError,
)
from harness.klp.convert import convert_module, undefined_symbols
from harness.klp.inspect import inspect_module, verdicts
from harness.klp.symbols import SymbolTable, load_symvers

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")
SHN_LIVEPATCH = 0xFF20
KLP_FLAGS = 0x00100000 | 0x2 | 0x40
UNEXPORTED = {"kernel_clone", "do_exit", "saved_command_line", "active_show"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mods")
    for name, defines in (
        ("plain", ()),
        ("ann", ("ANNOTATE",)),
        ("bad", ("BAD_RELOC",)),
        ("lp", ("LIVEPATCH",)),
        ("nodup", ("NO_DUP",)),
        ("anngrp", ("ANNOTATE", "GROUP")),
    ):
        compile_module(tmp, name, defines)
    compile_module(tmp, "anndbg", ("ANNOTATE",), flags=("-g",))
    compile_module(tmp, "annuse", ("ANNOTATE", "USE_RELOCS"), flags=("-g",))
    compile_module(tmp, "unlinked", (), link=False)
    write_symvers(tmp)
    return tmp


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.load(KALLSYMS_EXCERPT)


def _relocs(path: Path) -> dict[str, list[tuple[int, int, int, str, int]]]:
    """{rela section: [(offset, type, addend, symbol name, symbol shndx)]} via pyelftools."""
    out: dict[str, list[tuple[int, int, int, str, int]]] = {}
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        symtab = symbol_table(elf)
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                rows = []
                for rel in sec.iter_relocations():
                    sym = symtab.get_symbol(rel["r_info_sym"])
                    shndx = sym["st_shndx"]
                    rows.append(
                        (
                            rel["r_offset"],
                            rel["r_info_type"],
                            rel["r_addend"],
                            sym.name,
                            shndx if isinstance(shndx, int) else -1,
                        )
                    )
                out[sec.name] = rows
    return out


def _convert(built: Path, table: SymbolTable, src: str, **kw: object) -> tuple[Path, object]:
    dst = built / f"out-{src}-{len(list(built.iterdir()))}.o"
    kw.setdefault("exports", load_symvers(built / "Module.symvers"))
    report = convert_module(built / f"{src}.o", dst, symtab=table, **kw)  # type: ignore[arg-type]
    return dst, report


@pytest.mark.parametrize("src", ["plain", "unlinked"])
def test_every_reference_moves(built: Path, table: SymbolTable, src: str) -> None:
    before = built / f"{src}.o"
    if src == "unlinked":
        shutil.copy(built / "unlinked.part.o", before)
    original = before.read_bytes()
    dst, report = _convert(built, table, src, sympos={"active_show": 2})
    assert before.read_bytes() == original  # input untouched
    assert {c.name for c in report.converted} == UNEXPORTED  # type: ignore[attr-defined]
    assert set(report.left_alone) == {"_printk", "init_task"}  # type: ignore[attr-defined]
    old, new = _relocs(before), _relocs(dst)
    assert sum(map(len, old.values())) == sum(map(len, new.values()))  # count preserved
    moved = 0
    for name, rows in new.items():
        if name.startswith(".klp.rela."):
            assert all(r[4] == SHN_LIVEPATCH and r[3].startswith(".klp.sym.vmlinux.") for r in rows)
            moved += len(rows)
        else:
            assert all(r[4] != SHN_LIVEPATCH for r in rows), name
    assert moved == report.relocations == 15  # type: ignore[attr-defined]
    # each moved relocation keeps offset/type/addend, under the target's klp section
    for name, rows in old.items():
        target = name[len(".rela") :]
        for off, rtype, add, sym, _ in rows:
            if sym in UNEXPORTED:
                pos = 2 if sym == "active_show" else 0
                assert (off, rtype, add, f".klp.sym.vmlinux.{sym},{pos}", SHN_LIVEPATCH) in new[
                    f".klp.rela.vmlinux.{target}"
                ]
            else:
                assert (off, rtype, add, sym) in [r[:4] for r in new[name]]


def test_sections_symbols_and_content(built: Path, table: SymbolTable) -> None:
    dst, _ = _convert(built, table, "plain", sympos={"active_show": 2})
    with open(built / "plain.o", "rb") as a, open(dst, "rb") as b:
        ea, eb = ELFFile(a), ELFFile(b)
        assert eb.num_sections() == ea.num_sections() + 12  # new klp sections appended
        for i in range(ea.num_sections()):
            sa, sb = ea.get_section(i), eb.get_section(i)
            assert sa.name == sb.name and sa["sh_type"] == sb["sh_type"]
            if sa["sh_type"] not in ("SHT_RELA", "SHT_SYMTAB", "SHT_STRTAB"):
                assert sa.data() == sb.data(), sa.name  # untouched content
        names = {eb.get_section(i).name: eb.get_section(i) for i in range(eb.num_sections())}
        for name, sec in names.items():
            if name.startswith(".klp.rela."):
                assert sec["sh_flags"] == KLP_FLAGS
                assert sec["sh_link"] == eb.get_section_index(".symtab")
                target = eb.get_section(sec["sh_info"]).name
                assert name == f".klp.rela.vmlinux.{target}"
        syma, symb = symbol_table(ea), symbol_table(eb)
        # one symbol more: the livepatch guard's undefined klp_enable_patch, appended
        assert symb.num_symbols() == syma.num_symbols() + 1
        guard = symb.get_symbol(symb.num_symbols() - 1)
        assert guard.name == "klp_enable_patch" and guard["st_shndx"] == "SHN_UNDEF"
        assert guard["st_info"]["bind"] == "STB_GLOBAL"
        assert syma["sh_info"] == symb["sh_info"]
        for i in range(syma.num_symbols()):
            x, y = syma.get_symbol(i), symb.get_symbol(i)
            assert x["st_info"] == y["st_info"] and x["st_value"] == y["st_value"]
            if x.name in UNEXPORTED:
                assert y["st_shndx"] == SHN_LIVEPATCH
                assert re.fullmatch(rf"\.klp\.sym\.vmlinux\.{x.name},[02]", y.name)
            else:
                assert x.name == y.name and x["st_shndx"] == y["st_shndx"]


def test_readelf_agrees(built: Path, table: SymbolTable) -> None:
    dst, _ = _convert(built, table, "plain", sympos={"active_show": 2})
    sections = readelf("-S", str(dst))
    assert re.search(r"\.klp\.rela\.vmlinux\.\.text\.use_clone\s+RELA\s.*\sAIo\s", sections)
    symbols = readelf("-s", str(dst))
    assert re.search(r"GLOBAL DEFAULT\s+OS \[0xff20\] \.klp\.sym\.vmlinux\.kernel_clone,0", symbols)
    relocs = readelf("-r", str(dst))
    counts = [int(n) for n in re.findall(r"contains (\d+) entr", relocs)]
    before = readelf("-r", str(built / "plain.o"))
    orig = [int(n) for n in re.findall(r"contains (\d+) entr", before)]
    assert sum(counts) == sum(orig)
    assert "R_X86_64_PC64" in relocs and ".klp.sym.vmlinux.active_show,2 - 4" in relocs


def test_annotation_consumed(built: Path, table: SymbolTable) -> None:
    dst, report = _convert(built, table, "ann")
    pairs = {(c.name, c.sympos) for c in report.converted}  # type: ignore[attr-defined]
    assert ("active_show", 2) in pairs
    out = readelf("-S", str(dst)) + readelf("-s", str(dst))
    assert ".klp.module_relocs" not in out and "my_relocs" not in out
    relocs = _relocs(dst)
    for name, rows in relocs.items():
        assert (
            all(r[4] == SHN_LIVEPATCH for r in rows)
            if name.startswith(".klp.rela.")
            else all(r[4] != SHN_LIVEPATCH for r in rows)
        )
    # same relocations as the plain object apart from the annotation entry
    assert sum(map(len, relocs.values())) == sum(map(len, _relocs(built / "plain.o").values()))
    judged = verdicts(inspect_module(dst), table)
    assert all(v.ok for v in judged) and len(judged) == 4


def test_annotation_with_debug_info(built: Path, table: SymbolTable, tmp_path: Path) -> None:
    """With -g the debug info refers to the annotation array: those relocations are dropped
    with it (the kernel applies only loaded sections' relocations); a use of the array by a
    loaded section (code reading it) is refused with its own status."""
    assert any(r[3] == "my_relocs" for r in _relocs(built / "anndbg.o")[".rela.debug_info"])
    dst, report = _convert(built, table, "anndbg")
    assert ("active_show", 2) in {(c.name, c.sympos) for c in report.converted}  # type: ignore[attr-defined]
    after = _relocs(dst)
    assert all(r[3] != "my_relocs" for rows in after.values() for r in rows)
    before = _relocs(built / "anndbg.o")
    stale = sum(r[3] == "my_relocs" for r in before[".rela.debug_info"])
    dropped = sum(len(before[n]) for n in before if n.startswith(".rela.klp.module_relocs"))
    assert sum(map(len, after.values())) == sum(map(len, before.values())) - stale - dropped
    proc = subprocess.run(["readelf", "-a", "-W", str(dst)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Warning" not in proc.stderr
    with pytest.raises(AnnotationUseError) as err:
        _convert(built, table, "annuse")
    assert err.value.exit_code == 15
    assert ".rela.text" in str(err.value) and "'my_relocs'" in str(err.value)


def _groups(path: Path) -> tuple[str, list[str]]:
    """(signature symbol, member section names) of the object's one section group."""
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        group = next(s for s in elf.iter_sections() if s["sh_type"] == "SHT_GROUP")
        signature = symbol_table(elf).get_symbol(group["sh_info"]).name
        words = struct.unpack(f"<{group.data_size // 4}I", group.data())
        return signature, [elf.get_section(i).name for i in words[1:]]


def test_annotation_renumbers_a_group(built: Path, table: SymbolTable) -> None:
    """Consuming the annotation drops sections and symbols: a section group's members and
    signature symbol are renumbered with them."""
    dst, report = _convert(built, table, "anngrp")
    assert report.relocations == 17  # type: ignore[attr-defined]
    assert (
        _groups(dst)
        == _groups(built / "anngrp.o")
        == (
            "grpsig",
            [".text.grp", ".rela.text.grp", ".data.grp", ".rela.data.grp"],
        )
    )
    moved = {n: rows for n, rows in _relocs(dst).items() if n.startswith(".klp.rela.")}
    assert [r[3] for r in moved[".klp.rela.vmlinux..text.grp"]] == [
        ".klp.sym.vmlinux.kernel_clone,0"
    ]


def _header(data: bytearray, stype: int) -> int:
    """The file offset of the first section header of type `stype`."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    return next(
        int(shoff) + 64 * i
        for i in range(shnum)
        if struct.unpack_from("<I", data, shoff + 64 * i + 4)[0] == stype
    )


@pytest.mark.parametrize(
    "at, value", [(44, 99999), (32, 6), (32, 0)], ids=["signature", "size", "empty"]
)
def test_malformed_group_is_refused(
    built: Path, table: SymbolTable, tmp_path: Path, at: int, value: int
) -> None:
    """A group whose signature symbol is past the table, or whose size is not whole words
    (or nothing), in a module whose sections are renumbered: one clean error, no output
    (numpy raised IndexError / ValueError here)."""
    data = bytearray((built / "anngrp.o").read_bytes())
    header = _header(data, 17)  # SHT_GROUP
    struct.pack_into("<I" if at == 44 else "<Q", data, header + at, value)
    src, dst = tmp_path / "g.o", tmp_path / "out.o"
    src.write_bytes(data)
    with pytest.raises(UnsupportedElfError, match="section group 1 is malformed"):
        convert_module(src, dst, symtab=table, exports=load_symvers(built / "Module.symvers"))
    assert not dst.exists()


def test_relocation_offset_does_not_wrap(built: Path, table: SymbolTable, tmp_path: Path) -> None:
    """A field at offset 2**64 - 4 is outside any section, though offset + width wraps to 4
    in 64 bits (the numpy version let it through)."""
    data = bytearray((built / "plain.o").read_bytes())
    (offset, size) = struct.unpack_from("<QQ", data, _header(data, 4) + 24)  # first SHT_RELA
    for entry in range(offset, offset + size, 24):
        struct.pack_into("<Q", data, entry, (1 << 64) - 4)
    src = tmp_path / "wrap.o"
    src.write_bytes(data)
    exports = load_symvers(built / "Module.symvers")
    with pytest.raises(NotElfError, match=r"a relocation in \.rela\.\S+ is outside"):
        convert_module(
            src, tmp_path / "o.o", symtab=table, exports=exports, sympos={"active_show": 2}
        )


def test_errors(built: Path, table: SymbolTable) -> None:
    with pytest.raises(AmbiguousSymbolError, match=r"1 \(t 0xffffffff810a2ac0\), 2 \(t"):
        _convert(built, table, "plain")
    with pytest.raises(SymposRangeError):
        _convert(built, table, "plain", sympos={"active_show": 3})
    with pytest.raises(RelocationTypeError, match="R_X86_64_16"):
        _convert(built, table, "bad", sympos={"active_show": 1})
    small = SymbolTable.parse("ffffffff81000000 T kernel_clone\n", "small")
    with pytest.raises(SymbolNotFoundError, match=r"do_exit|saved_command_line|active_show"):
        _convert(built, small, "nodup")
    with pytest.raises(SymbolNotFoundError, match="no undefined symbol"):
        _convert(built, table, "plain", symbols=["nope"])
    with pytest.raises(UsageError):
        _convert(built, table, "plain", exports=None)
    assert not list(built.glob(".*tmp"))


def test_force_and_sympos_zero(built: Path, table: SymbolTable) -> None:
    _, report = _convert(built, table, "plain", sympos={"active_show": 0})
    assert any("refuse it as ambiguous" in w for w in report.warnings)  # type: ignore[attr-defined]
    small = SymbolTable.parse(
        "ffffffff81000000 T kernel_clone\nffffffff81000010 t active_show\n", "small"
    )
    dst, report = _convert(
        built,
        small,
        "plain",
        exports=None,
        symbols=["do_exit", "active_show"],
        sympos={"active_show": 5},
        force=True,
    )
    assert {(c.name, c.sympos) for c in report.converted} == {("do_exit", 0), ("active_show", 5)}  # type: ignore[attr-defined]
    judged = {v.name: v.status for v in verdicts(inspect_module(dst), small)}
    assert judged == {"do_exit": "not-found", "active_show": "position-too-large"}


USER_C = """
extern int helper(int);
int call(void) { return helper(1); }
#ifdef LIVEPATCH
static const char lp[] __attribute__((section(".modinfo"), used, aligned(1))) = "livepatch=Y";
#endif
"""


def test_module_target_needs_livepatch(table: SymbolTable, tmp_path: Path) -> None:
    lib = compile_module(tmp_path, "my-provider", source="int helper(int x) { return x; }\n")
    plain = compile_module(tmp_path, "user", source=USER_C)
    live = compile_module(tmp_path, "live", ("LIVEPATCH",), source=USER_C)
    with pytest.raises(ModuleTargetError, match="not a livepatch module"):
        convert_module(
            plain,
            tmp_path / "o1.o",
            symtab=table,
            exports=set(),
            object_symbols={"my-provider": lib},
        )
    assert not (tmp_path / "o1.o").exists()
    report = convert_module(
        live, tmp_path / "o2.o", symtab=table, exports=set(), object_symbols={"my-provider": lib}
    )
    assert report.livepatch and report.converted[0].klp_name == ".klp.sym.my_provider.helper,0"
    assert table.objects_with("helper") == []  # the caller's table is not changed
    relocs = inspect_module(tmp_path / "o2.o")
    assert relocs[0].section == ".klp.rela.my_provider..text.call"
    assert verdicts(relocs, table, livepatch=True)[0].status == "deferred"
    assert verdicts(relocs, table, livepatch=False)[0].status == "skipped"
    # a module object that is not given at all
    with pytest.raises(SymbolNotFoundError):
        convert_module(live, tmp_path / "o3.o", symtab=table, exports=set())


def test_undefined_and_already_converted(built: Path, table: SymbolTable) -> None:
    assert set(undefined_symbols(built / "plain.o")) == UNEXPORTED | {"_printk", "init_task"}
    dst, _ = _convert(built, table, "plain", sympos={"active_show": 2})
    again = built / "again.o"
    exports = load_symvers(built / "Module.symvers")
    report = convert_module(dst, again, symtab=table, exports=exports)
    assert report.already_converted and again.read_bytes() == dst.read_bytes()


def test_in_place(built: Path, table: SymbolTable, tmp_path: Path) -> None:
    src = tmp_path / "m.o"
    shutil.copy(built / "nodup.o", src)
    convert_module(src, src, symtab=table, exports=load_symvers(built / "Module.symvers"))
    assert "klp.sym.vmlinux.do_exit,0" in readelf("-s", str(src))
    assert [p.name for p in tmp_path.iterdir()] == ["m.o"]
