"""Per-machine facts of the klp relocation ABI, as data: the relocation types each machine's
module loader applies (apply_relocate_add) and the width of the field each writes.

Every machine here uses ELF64 little-endian with 24-byte Elf64_Rela entries, so reading, moving
and writing relocations is the same code; only these tables differ (and, on PPC64, a few
undefined names that are not kernel symbols: `ignored`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

EM_PPC64, EM_X86_64, EM_AARCH64 = 21, 62, 183


@dataclass(frozen=True)
class Machine:
    em: int
    label: str  # as messages show it
    names: Mapping[int, str]  # relocation type -> name (readelf's)
    loader: Mapping[int, int]  # types apply_relocate_add() applies -> field width in bytes
    unknown: str = "type "  # how a type without a name is shown (followed by its number)
    # undefined names that are no kernel symbol to convert (modpost ignores them too), as
    # exact names and as prefixes
    ignored: frozenset[str] = frozenset()
    ignored_prefixes: tuple[str, ...] = ()

    def ignores(self, name: str) -> bool:
        return name in self.ignored or name.startswith(self.ignored_prefixes)

    def reloc_name(self, rtype: int) -> str:
        return self.names.get(rtype, f"{self.unknown}{rtype}")

    def owns(self, name: str) -> bool:
        """Whether `name` is one of this machine's relocation type names."""
        return name.startswith(self.unknown) or name in self.names.values()

    @property
    def refused(self) -> str:
        return f"is refused by the {self.label} module loader"

    @property
    def accepted_names(self) -> frozenset[str]:
        return frozenset(self.reloc_name(rtype) for rtype in self.loader)


_X86_NAMES = {
    0: "R_X86_64_NONE",
    1: "R_X86_64_64",
    2: "R_X86_64_PC32",
    3: "R_X86_64_GOT32",
    4: "R_X86_64_PLT32",
    5: "R_X86_64_COPY",
    9: "R_X86_64_GOTPCREL",
    10: "R_X86_64_32",
    11: "R_X86_64_32S",
    12: "R_X86_64_16",
    13: "R_X86_64_PC16",
    14: "R_X86_64_8",
    15: "R_X86_64_PC8",
    24: "R_X86_64_PC64",
    41: "R_X86_64_GOTPCRELX",
    42: "R_X86_64_REX_GOTPCRELX",
}
# arch/x86/kernel/module.c __write_relocate_add(): NONE 64 PC32 PLT32 32 32S PC64
_X86_LOADER = {0: 0, 1: 8, 2: 4, 4: 4, 10: 4, 11: 4, 24: 8}

# arch/arm64/include/asm/elf.h; 0 is R_ARM_NONE, which the arm64 loader accepts as NONE
_A64_NAMES = {
    0: "R_ARM_NONE",
    256: "R_AARCH64_NONE",
    257: "R_AARCH64_ABS64",
    258: "R_AARCH64_ABS32",
    259: "R_AARCH64_ABS16",
    260: "R_AARCH64_PREL64",
    261: "R_AARCH64_PREL32",
    262: "R_AARCH64_PREL16",
    263: "R_AARCH64_MOVW_UABS_G0",
    264: "R_AARCH64_MOVW_UABS_G0_NC",
    265: "R_AARCH64_MOVW_UABS_G1",
    266: "R_AARCH64_MOVW_UABS_G1_NC",
    267: "R_AARCH64_MOVW_UABS_G2",
    268: "R_AARCH64_MOVW_UABS_G2_NC",
    269: "R_AARCH64_MOVW_UABS_G3",
    270: "R_AARCH64_MOVW_SABS_G0",
    271: "R_AARCH64_MOVW_SABS_G1",
    272: "R_AARCH64_MOVW_SABS_G2",
    273: "R_AARCH64_LD_PREL_LO19",
    274: "R_AARCH64_ADR_PREL_LO21",
    275: "R_AARCH64_ADR_PREL_PG_HI21",
    276: "R_AARCH64_ADR_PREL_PG_HI21_NC",
    277: "R_AARCH64_ADD_ABS_LO12_NC",
    278: "R_AARCH64_LDST8_ABS_LO12_NC",
    279: "R_AARCH64_TSTBR14",
    280: "R_AARCH64_CONDBR19",
    282: "R_AARCH64_JUMP26",
    283: "R_AARCH64_CALL26",
    284: "R_AARCH64_LDST16_ABS_LO12_NC",
    285: "R_AARCH64_LDST32_ABS_LO12_NC",
    286: "R_AARCH64_LDST64_ABS_LO12_NC",
    287: "R_AARCH64_MOVW_PREL_G0",
    288: "R_AARCH64_MOVW_PREL_G0_NC",
    289: "R_AARCH64_MOVW_PREL_G1",
    290: "R_AARCH64_MOVW_PREL_G1_NC",
    291: "R_AARCH64_MOVW_PREL_G2",
    292: "R_AARCH64_MOVW_PREL_G2_NC",
    293: "R_AARCH64_MOVW_PREL_G3",
    299: "R_AARCH64_LDST128_ABS_LO12_NC",
    # refused by the loader (GOT, TLS, dynamic): named for the messages
    309: "R_AARCH64_GOT_LD_PREL19",
    311: "R_AARCH64_ADR_GOT_PAGE",
    312: "R_AARCH64_LD64_GOT_LO12_NC",
    1024: "R_AARCH64_COPY",
    1025: "R_AARCH64_GLOB_DAT",
    1026: "R_AARCH64_JUMP_SLOT",
    1027: "R_AARCH64_RELATIVE",
}
# arch/arm64/kernel/module.c apply_relocate_add() (the same case labels in 6.1 and 7.3):
# the data relocations write 8/4/2 bytes, every instruction relocation one 4-byte word.
_A64_LOADER = {0: 0, 256: 0, 257: 8, 258: 4, 259: 2, 260: 8, 261: 4, 262: 2}
_A64_LOADER |= dict.fromkeys([*range(263, 281), *range(282, 294), 299], 4)

# arch/powerpc/include/uapi/asm/elf.h (readelf's R_PPC64_ spelling of the shared R_PPC_ values)
_PPC64_NAMES = {
    0: "R_PPC64_NONE",
    1: "R_PPC64_ADDR32",
    10: "R_PPC64_REL24",
    26: "R_PPC64_REL32",
    38: "R_PPC64_ADDR64",
    44: "R_PPC64_REL64",
    47: "R_PPC64_TOC16",
    48: "R_PPC64_TOC16_LO",
    50: "R_PPC64_TOC16_HA",
    51: "R_PPC64_TOC",
    63: "R_PPC64_TOC16_DS",
    64: "R_PPC64_TOC16_LO_DS",
    109: "R_PPC64_TOCSAVE",
    118: "R_PPC64_ENTRY",
    250: "R_PPC64_REL16_LO",
    252: "R_PPC64_REL16_HA",
    # refused by the loader of ordinary (TOC) kernels: named for the messages
    4: "R_PPC64_ADDR16_LO",
    6: "R_PPC64_ADDR16_HA",
    14: "R_PPC64_GOT16",
    20: "R_PPC64_GLOB_DAT",
    21: "R_PPC64_JMP_SLOT",
    22: "R_PPC64_RELATIVE",
    116: "R_PPC64_REL24_NOTOC",
    132: "R_PPC64_PCREL34",
    133: "R_PPC64_GOT_PCREL34",
}
# arch/powerpc/kernel/module_64.c apply_relocate_add() (7.3) of a kernel without
# PPC_KERNEL_PCREL (POWER10-only, off by default and in Debian): ADDR32 ADDR64 TOC TOC16*
# REL24 REL64 REL32 TOCSAVE ENTRY REL16_HA REL16_LO. The TOC16 ones write the low halfword
# of an instruction (at r_offset on little endian); ENTRY rewrites two instructions; TOCSAVE
# is a marker. NONE has no case there: the loader refuses it. A PCREL kernel accepts
# REL24_NOTOC, PCREL34 and GOT_PCREL34 instead of the TOC types: not supported here.
# REL24 against an undefined or SHN_LIVEPATCH symbol branches to a stub in .stubs and, after a
# `bl`, turns the following nop into `ld r2,24(r1)` (restore_r2): the word after the field
# is written too, but only for a link branch, so a sibling call at a section's end is fine.
_PPC64_LOADER = {1: 4, 38: 8, 51: 8, 47: 2, 48: 2, 63: 2, 64: 2, 50: 2, 10: 4, 44: 8, 26: 4}
_PPC64_LOADER |= {109: 0, 118: 8, 252: 2, 250: 2}

X86_64 = Machine(EM_X86_64, "x86-64", MappingProxyType(_X86_NAMES), MappingProxyType(_X86_LOADER))
AARCH64 = Machine(
    EM_AARCH64,
    "AArch64",
    MappingProxyType(_A64_NAMES),
    MappingProxyType(_A64_LOADER),
    "AArch64 type ",
)
PPC64 = Machine(
    EM_PPC64,
    "PPC64",
    MappingProxyType(_PPC64_NAMES),
    MappingProxyType(_PPC64_LOADER),
    "PPC64 type ",
    # .TOC. is the module's own TOC base (the loader defines it: dedotify, find_dot_toc);
    # the save/restore helpers are linked into every .ko (--save-restore-funcs); the
    # loader recognises calls to _mcount by name (is_mprofile_ftrace_call) and gives them
    # the ftrace stub, which a renamed klp symbol would not get (_mcount is exported).
    frozenset({".TOC.", "_mcount"}),
    (
        "_restgpr0_",
        "_savegpr0_",
        "_restgpr1_",
        "_savegpr1_",
        "_restfpr_",
        "_savefpr_",
        "_restvr_",
        "_savevr_",
    ),
)
MACHINES = MappingProxyType({m.em: m for m in (X86_64, AARCH64, PPC64)})
SUPPORTED = "only x86-64, AArch64 and ppc64le (ELF64 little-endian) are supported"

# Calls and tail calls: out of the ±128 MiB branch range the arm64 loader sends them through a
# module PLT entry, whose space module_frob_arch_sections() reserves by counting every SHT_RELA
# section whose target is executable, .klp.rela.* included (see the README).
AARCH64_BRANCHES = frozenset({282, 283})
# PPC64 REL24 to an undefined or klp symbol always goes through a .stubs entry, whose space
# get_stubs_size() reserves by counting the REL24 entries of every SHT_RELA section.
PPC64_BRANCHES = frozenset({10})


def machine_of(reloc_name: str) -> Machine:
    """The machine a relocation type name (as reloc_name() gives it) belongs to."""
    return next((m for m in (AARCH64, PPC64) if m.owns(reloc_name)), X86_64)
