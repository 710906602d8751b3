"""Test helpers: compile module-like objects with the host gcc, and small target tables."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

import harness

INCLUDE = Path(harness.__file__).parent / "include"
DATA = Path(__file__).parent / "data"
KALLSYMS_EXCERPT = DATA / "kallsyms-debian-6.1.0-56-amd64.excerpt"

KERNEL_CFLAGS = [
    "-O2",
    "-mcmodel=kernel",
    "-fno-pic",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-common",
    "-mno-red-zone",
    "-fno-asynchronous-unwind-tables",
    "-fno-stack-protector",
    "-nostdinc",
    "-ffreestanding",
    "-Wall",
    "-Werror",
]

# Unexported (in the excerpt, not in SYMVERS): kernel_clone, do_exit, saved_command_line,
# active_show (2 copies: ambiguous). Exported: _printk, init_task.
MODULE_C = r"""
#include "klp_convert.h"
extern int kernel_clone(void *args);
extern void do_exit(long code) __attribute__((noreturn));
extern char *saved_command_line;
extern int _printk(const char *fmt, ...);
extern char init_task[];
extern int active_show(int);

struct ops { int (*fn)(void *); char **cmdline; };
const struct ops my_ops = { kernel_clone, &saved_command_line };  /* .rodata: R_X86_64_64 */
void *table[] = { (void *)kernel_clone, (void *)do_exit };        /* .data: R_X86_64_64 */
char **ro_after __attribute__((section(".data..ro_after_init"))) = &saved_command_line;
void *const param_ptr __attribute__((section("__param"), used)) = &saved_command_line;

int use_clone(void *a) { return kernel_clone(a) + 1; }                   /* PLT32 */
char first_char(void) { return saved_command_line[0] + init_task[0]; }  /* PC32 */
unsigned long addr32s(void) { return (unsigned long)&saved_command_line; }  /* 32S */
#ifndef NO_DUP
int use_dup(int x) { return active_show(x); }
#endif
__attribute__((section(".init.text"))) int my_init(void) { _printk("x"); return kernel_clone(0); }
__attribute__((section(".exit.text"))) void my_exit(void) { _printk("%s", saved_command_line); }
__attribute__((noreturn)) void bye(void) { do_exit(0); }

/* R_X86_64_32 and R_X86_64_PC64 are rare from C: written out in assembly */
asm(".pushsection .data.asm,\"aw\"\n"
    ".long saved_command_line\n"
    ".quad kernel_clone - .\n"
#ifdef BAD_RELOC
    ".word do_exit\n"
#endif
    ".popsection\n");
#ifdef LIVEPATCH
static const char modinfo_lp[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "livepatch=Y";
#endif
static const char modinfo_lic[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "license=GPL";
#ifdef GROUP
/* a COMDAT section group (as C++ inline functions make): renumbered when sections drop */
asm(".section .text.grp,\"axG\",@progbits,grpsig,comdat\n"
    ".globl grpsig\ngrpsig: call kernel_clone\n ret\n"
    ".section .data.grp,\"awG\",@progbits,grpsig,comdat\n .quad saved_command_line\n"
    ".previous\n");
#endif
#ifdef ANNOTATE
KLP_MODULE_RELOC(vmlinux) my_relocs[] = {
    KLP_SYMPOS(active_show, 2),
};
#ifdef USE_RELOCS
unsigned int first_position(void) { return my_relocs[0].sympos; }
#endif
#endif
"""

SYMVERS = (
    "0x12345678\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x9abcdef0\tinit_task\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x0badcafe\tjiffies\tvmlinux\tEXPORT_SYMBOL\t\n"
)


def have_gcc() -> bool:
    return shutil.which("gcc") is not None and shutil.which("ld") is not None


def compile_module(
    tmp: Path,
    name: str = "mod",
    defines: tuple[str, ...] = (),
    source: str = MODULE_C,
    link: bool = True,
    flags: tuple[str, ...] = (),
) -> Path:
    """Compile (and `ld -r`, like kbuild's <mod>.o) a module-like object; returns its path.
    `flags`: more gcc options, e.g. -g (kbuild's on a CONFIG_DEBUG_INFO kernel)."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    obj = tmp / f"{name}.part.o"
    cmd = [
        "gcc",
        *KERNEL_CFLAGS,
        f"-I{INCLUDE}",
        *(f"-D{d}" for d in defines),
        *flags,
        "-c",
        str(src),
        "-o",
        str(obj),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    if not link:
        return obj
    out = tmp / f"{name}.o"
    subprocess.run(["ld", "-r", "-o", str(out), str(obj)], check=True, capture_output=True)
    return out


def write_symvers(tmp: Path, text: str = SYMVERS) -> Path:
    path = tmp / "Module.symvers"
    path.write_text(text)
    return path


def readelf(*args: str) -> str:
    return subprocess.run(
        ["readelf", "-W", *args], check=True, capture_output=True, text=True
    ).stdout


def symbol_table(elf: ELFFile) -> SymbolTableSection:
    """The .symtab of an object read with pyelftools (the independent reader of the tests)."""
    section = elf.get_section_by_name(".symtab")
    assert isinstance(section, SymbolTableSection), "no .symtab"
    return section
