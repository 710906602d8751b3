"""Offline verdicts, mirroring the kernel's klp resolver, against a real Debian 6.1 table."""

from __future__ import annotations

import pytest
from elfbuild import KALLSYMS_EXCERPT

from harness.klp.abi import LOADER_RELOCS, parse_klp_symbol
from harness.klp.elfread import RELOC_NAMES, reloc_name
from harness.klp.inspect import KlpReloc, verdicts
from harness.klp.symbols import SymbolTable


def rel(
    symbol: str,
    *,
    section: str = ".klp.rela.vmlinux..text",
    rtype: str = "R_X86_64_PC32",
    marked: bool = True,
) -> KlpReloc:
    parsed = parse_klp_symbol(symbol)
    return KlpReloc(
        section,
        section.split(".")[3],
        ".text",
        symbol,
        parsed.obj if parsed else "",
        parsed.name if parsed else symbol,
        parsed.sympos if parsed else 0,
        rtype,
        0x10,
        -4,
        marked,
    )


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.load(KALLSYMS_EXCERPT)


@pytest.mark.parametrize(
    "symbol, status, text",
    [
        (".klp.sym.vmlinux.kernel_clone,0", "resolves", "0xffffffff810a0a60"),
        (".klp.sym.vmlinux.jhash,0", "ambiguous", "17 candidates"),
        (".klp.sym.vmlinux.jhash,17", "resolves", "resolves to"),
        (".klp.sym.vmlinux.active_show,3", "position-too-large", "symbol position 3"),
        (".klp.sym.vmlinux.no_such_thing,0", "not-found", "not found in symbol table"),
        (".klp.sym.vmlinux.fixed_percpu_data,0", "not-found", "address 0"),
        (".klp.sym.vmlinux.kernel_clone", "malformed", "incorrectly formatted"),
    ],
)
def test_vmlinux_verdicts(table: SymbolTable, symbol: str, status: str, text: str) -> None:
    (v,) = verdicts([rel(symbol)], table)
    assert v.status == status and text in v.message


def test_kernel_refusals(table: SymbolTable) -> None:
    (v,) = verdicts([rel(".klp.sym.vmlinux.do_exit,0", marked=False)], table)
    assert v.status == "not-livepatch-symbol"
    (v,) = verdicts([rel(".klp.sym.vmlinux.do_exit,0", rtype="R_X86_64_GOTPCREL")], table)
    assert v.status == "bad-type"


def test_module_objects(table: SymbolTable) -> None:
    r = rel(".klp.sym.nfsd.helper,1", section=".klp.rela.nfsd..text")
    assert verdicts([r], table, livepatch=False)[0].status == "skipped"
    assert verdicts([r], table, livepatch=True)[0].status == "deferred"
    assert verdicts([r], None, livepatch=True)[0].status == "unchecked"


def test_one_verdict_per_symbol(table: SymbolTable) -> None:
    relocs = [
        rel(".klp.sym.vmlinux.kernel_clone,0"),
        rel(".klp.sym.vmlinux.kernel_clone,0"),
        rel(".klp.sym.vmlinux.do_exit,0"),
    ]
    judged = verdicts(relocs, table)
    assert [(v.name, v.relocations) for v in judged] == [("kernel_clone", 2), ("do_exit", 1)]


def test_kernel_name_parser() -> None:
    assert parse_klp_symbol(".klp.sym.vmlinux.a.b.c,12") is not None
    assert parse_klp_symbol(".klp.sym.vmlinux.name,x") is None
    assert parse_klp_symbol(".klp.sym." + "m" * 56 + ".x,0") is None  # %55[^.]


@pytest.mark.parametrize("rtype", [*RELOC_NAMES, 99])
def test_relocation_types_follow_the_loader(table: SymbolTable, rtype: int) -> None:
    """inspect judges types by the one table convert refuses them by (abi.LOADER_RELOCS): the
    types arch/x86/kernel/module.c applies."""
    (v,) = verdicts([rel(".klp.sym.vmlinux.kernel_clone,0", rtype=reloc_name(rtype))], table)
    accepted = {"R_X86_64_NONE", "R_X86_64_64", "R_X86_64_PC32", "R_X86_64_PLT32"}
    accepted |= {"R_X86_64_32", "R_X86_64_32S", "R_X86_64_PC64"}
    assert {reloc_name(t) for t in LOADER_RELOCS} == accepted
    if reloc_name(rtype) in accepted:
        assert v.status == "resolves"
    else:
        assert v.status == "bad-type" and "refused by the x86-64 module loader" in v.message
