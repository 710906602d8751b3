"""Klp relocations to module objects in sections the kernel processes while the patch module
loads (__jump_table, .static_call_sites, alternatives, ...) are refused (exit 16): they would be
applied only when the patch is enabled or the target module loads, after static keys, static
calls and code patching have read them. Objects compiled by gcc the way kernel code makes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc

from harness.cli.main import main
from harness.errors import UnsafeRelocationError
from harness.klp import convert as convert_mod
from harness.klp.convert import convert_module
from harness.klp.elfread import ElfImage
from harness.klp.safety import UNSAFE_SECTIONS, check_safety
from harness.klp.symbols import SymbolTable

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")

TARGET_C = """
struct static_key { int enabled; };
struct static_key module_key;
int helper(int x) { return x + 1; }
void module_call(void) { }
"""

# A livepatch module's code as the kernel's static_branch_unlikely() and static_call() make it
# (arch/x86/include/asm/jump_label.h: a 5-byte NOP and a __jump_table entry {code, target, key}).
PATCH_C = r"""
struct static_key { int enabled; };
extern struct static_key KEY;
extern int helper(int);
static inline __attribute__((always_inline)) int branch(struct static_key *key)
{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t"
             ".pushsection __jump_table, \"aw\"\n\t.balign 8\n\t"
             ".long 1b - .\n\t.long %l[yes] - .\n\t.quad %c0 - .\n\t.popsection"
             : : "i"(key) : : yes);
    return 0;
yes:
    return 1;
}
int patched(int x) { return branch(&KEY) ? helper(x) : x; }
#ifdef STATIC_CALL
asm(".pushsection .static_call_sites, \"aw\"\n .long 0\n .long module_call - .\n .popsection\n");
#endif
static const char lp[] __attribute__((section(".modinfo"), used, aligned(1))) = "livepatch=Y";
static const char lic[] __attribute__((section(".modinfo"), used, aligned(1))) = "license=GPL";
"""


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    return compile_module(tmp_path, "target-mod", source=TARGET_C)


def _patch(tmp: Path, key: str, *defines: str) -> Path:
    name = f"patch_{key}_{'_'.join(defines).lower()}"
    return compile_module(tmp, name, (f"KEY={key}", *defines), PATCH_C)


def _convert(src: Path, target: Path, out: Path) -> None:
    convert_module(
        src,
        out,
        symtab=SymbolTable.load(KALLSYMS_EXCERPT),
        exports=set(),
        object_symbols={"target-mod": target},
    )


def test_a_static_key_of_a_module_is_refused(tmp_path: Path, target: Path) -> None:
    src = _patch(tmp_path, "module_key")
    out = tmp_path / "out.o"
    with pytest.raises(UnsafeRelocationError) as caught:
        _convert(src, target, out)
    message = str(caught.value)
    assert message.startswith(f"{src}: __jump_table: a klp relocation to 'module_key' ")
    assert "of module target_mod" in message and "static_key_enabled()" in message
    assert not out.exists()  # nothing half-written
    assert UnsafeRelocationError.exit_code == 16


def test_a_static_call_site_of_a_module_is_refused(tmp_path: Path, target: Path) -> None:
    src = _patch(tmp_path, "saved_command_line", "STATIC_CALL")
    with pytest.raises(UnsafeRelocationError, match=r"\.static_call_sites: .*'module_call'"):
        _convert(src, target, tmp_path / "out.o")


def test_a_vmlinux_key_and_module_code_are_fine(tmp_path: Path, target: Path) -> None:
    # vmlinux's klp relocations are applied at load (v5.8+), before static keys are set up;
    # a call to the module's function from .text waits for the patch like any klp relocation.
    src = _patch(tmp_path, "saved_command_line")
    out = tmp_path / "out.o"
    _convert(src, target, out)
    names = {s.name for s in ElfImage.load(out).sections}
    assert {".klp.rela.vmlinux.__jump_table", ".klp.rela.target_mod..text.patched"} <= names


def test_an_already_converted_module_section_is_refused(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _patch(tmp_path, "module_key")
    out = tmp_path / "unsafe.o"
    monkeypatch.setattr(convert_mod, "check_safety", lambda *args: None)
    _convert(src, target, out)  # as another tool might have written it
    img = ElfImage.load(out)
    assert ".klp.rela.target_mod.__jump_table" in {s.name for s in img.sections}
    with pytest.raises(UnsafeRelocationError, match=r"__jump_table: .*'\.klp\.sym\.target_mod"):
        check_safety(img, img.symbols(), img.strtab(), {})


def test_the_cli_exits_16(tmp_path: Path, target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _patch(tmp_path, "module_key")
    argv = ["convert", str(src), "-o", str(tmp_path / "cli.o"), "--symvers", "/dev/null"]
    argv[-1] = str(tmp_path / "Module.symvers")
    (tmp_path / "Module.symvers").write_text("0x00000000\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n")
    argv += ["--system-map", str(KALLSYMS_EXCERPT), "--object-symbols", f"target-mod={target}"]
    assert main(argv) == 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("klp-harness: ") and "__jump_table" in err[0]


def test_the_rule_covers_what_the_kernel_tooling_refuses() -> None:
    # objtool klp diff (v6.19) and kpatch-build refuse these two; the rest share the reason
    assert {"__jump_table", ".static_call_sites", ".altinstructions"} <= set(UNSAFE_SECTIONS)
