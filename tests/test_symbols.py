"""Symbol tables and Module.symvers, against a real (trimmed) Debian 6.1 kallsyms."""

from __future__ import annotations

from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT

from harness.errors import FileReadError, SymbolFileError
from harness.klp.symbols import KallsymsLine, SymbolTable, kallsyms_lines, load_symvers, resolve


@pytest.fixture(scope="module")
def real() -> SymbolTable:
    return SymbolTable.load(KALLSYMS_EXCERPT)


def test_unique_names_resolve(real: SymbolTable) -> None:
    assert real.candidates("kernel_clone")[0].address == 0xFFFFFFFF810A0A60
    res = real.resolve("saved_command_line", 0)
    assert res.ok and res.address == 0xFFFFFFFF83317008
    assert real.resolve("do_exit", 1).ok  # position 1 of a unique name is fine too


def test_duplicates_keep_file_order(real: SymbolTable) -> None:
    cands = real.candidates("active_show")
    assert [(c.position, c.address, c.type) for c in cands] == [
        (1, 0xFFFFFFFF810A2AC0, "t"),
        (2, 0xFFFFFFFF816C71A0, "t"),
    ]
    assert len(real.candidates("jhash")) == 17
    amb = real.resolve("jhash", 0)
    assert amb.status == "ambiguous" and "17 candidates" in amb.message
    assert real.resolve("jhash", 17).ok
    assert real.resolve("jhash", 18).status == "position-too-large"


def test_not_found_and_address_zero(real: SymbolTable) -> None:
    assert real.resolve("no_such_symbol", 0).status == "not-found"
    # the kernel treats a match at address 0 as "not found" (klp_find_object_symbol)
    zero = real.resolve("fixed_percpu_data", 0)
    assert zero.status == "not-found" and "address 0" in zero.message


def test_equal_addresses_keep_order() -> None:
    text = "ffffffff81000000 t dup\nffffffff81000000 T other\nffffffff80000000 t dup\n"
    table = SymbolTable.parse(text, "x")
    assert [c.address for c in table.candidates("dup")] == [0xFFFFFFFF81000000, 0xFFFFFFFF80000000]


def test_module_column_is_not_vmlinux() -> None:
    text = (
        "ffffffff81000000 T core\nffffffffc0000000 t helper\t[mymod]\n"
        "ffffffffc0001000 t helper\t[mymod]\n"
    )
    table = SymbolTable.parse(text, "kallsyms")
    assert table.candidates("helper") == []
    assert len(table.candidates("helper", "mymod")) == 2
    assert table.objects_with("helper") == ["mymod"]


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
            ":1:",
        ),
        ("ffffffff81000000 T ok\nzzzz T bad\n", ":2:"),
        ("ffffffff81000000 TT name\n", ":1:"),
        ("ffffffff81000000 T a b c\n", ":1:"),
        ("", "no symbols"),
        ("0000000000000000 T a\n0000000000000000 T b\n", "zero"),
    ],
)
def test_malformed_symbol_tables(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "System.map"
    path.write_text(text)
    with pytest.raises(SymbolFileError) as err:
        SymbolTable.load(path)
    assert str(path) in str(err.value) and where in str(err.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileReadError):
        SymbolTable.load(tmp_path / "nope")
    with pytest.raises(FileReadError):
        load_symvers(tmp_path / "nope")


def test_symvers(tmp_path: Path) -> None:
    path = tmp_path / "Module.symvers"
    path.write_text(
        "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x2\tfoo\tdrivers/x\tEXPORT_SYMBOL_GPL\tNS\n0x3\told\tvmlinux\tEXPORT_SYMBOL\n"
    )
    assert load_symvers(path) == {"printk": 1, "foo": 2, "old": 3}
    for bad in (
        "printk vmlinux EXPORT_SYMBOL\n",
        "0xZZ\tp\tvmlinux\tEXPORT_SYMBOL\n",
        "0x1\tp\tvmlinux\tWHATEVER\n",
    ):
        path.write_text("0x1\tok\tvmlinux\tEXPORT_SYMBOL\n" + bad)
        with pytest.raises(SymbolFileError, match=r"Module.symvers:2:"):
            load_symvers(path)


def test_resolve_mirrors_kernel_stop_rule() -> None:
    table = SymbolTable.parse("ffffffff81000000 t f\n0000000000000000 t f\n", "x")
    # sympos 1 stops at the first match (non-zero): resolves
    assert table.resolve("f", 1).ok
    # sympos 2 ends on address 0: the kernel says "not found"
    assert table.resolve("f", 2).status == "not-found"
    assert resolve([], "f", 0, "vmlinux").status == "not-found"


def test_kallsyms_lines_fields_and_order() -> None:
    text = (
        "ffffffff81000000 T _text\n\n"
        "ffffffffc0000000 t helper\t[mymod]\n"
        "0000000000000000 A fixed_percpu_data\n"
    )
    assert list(kallsyms_lines(text, "k")) == [
        KallsymsLine(0xFFFFFFFF81000000, "T", "_text", None, "ffffffff81000000 T _text"),
        KallsymsLine(
            0xFFFFFFFFC0000000, "t", "helper", "mymod", "ffffffffc0000000 t helper\t[mymod]"
        ),
        KallsymsLine(0, "A", "fixed_percpu_data", None, "0000000000000000 A fixed_percpu_data"),
    ]
    # empty text and zero addresses are the caller's business (SymbolTable refuses them)
    assert list(kallsyms_lines("", "k")) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("ffffffff81000000 T ok\nnot kallsyms\n", "src:2: not a System.map/kallsyms line"),
        ("ffffffff81000000 TT name\n", "src:1: not a System.map/kallsyms line"),
        ("ffffffff81000000 T a b c\n", "src:1: not a System.map/kallsyms line"),
        ("ffffffff81000000 T a mod\n", "src:1: not a System.map/kallsyms line"),
        ("zzzz T bad\n", "src:1: bad address 'zzzz'"),
        ("1" + "0" * 16 + " T wide\n", "src:1: address wider than 64 bits"),
        (
            "ffffffffffffffff B The real System.map is in the linux-image-dbg package\n",
            "placeholder System.map",
        ),
    ],
)
def test_kallsyms_lines_refuses(text: str, message: str) -> None:
    with pytest.raises(SymbolFileError) as err:
        list(kallsyms_lines(text, "src"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_kallsyms_lines_source_is_printable() -> None:
    with pytest.raises(SymbolFileError, match=r"^evil\\x1b\[2J:1: "):
        list(kallsyms_lines("junk\n", "evil\x1b[2J"))
