"""Per-machine facts of the klp relocation ABI, as data: the relocation types each machine's
module loader applies (apply_relocate_add) and the width of the field each writes.

Both machines use ELF64 little-endian with 24-byte Elf64_Rela entries, so reading, moving and
writing relocations is the same code; only these tables differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

EM_X86_64, EM_AARCH64 = 62, 183


@dataclass(frozen=True)
class Machine:
    em: int
    label: str  # as messages show it
    names: Mapping[int, str]  # relocation type -> name (readelf's)
    loader: Mapping[int, int]  # types apply_relocate_add() applies -> field width in bytes
    unknown: str = "type "  # how a type without a name is shown (followed by its number)

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

X86_64 = Machine(EM_X86_64, "x86-64", MappingProxyType(_X86_NAMES), MappingProxyType(_X86_LOADER))
AARCH64 = Machine(
    EM_AARCH64,
    "AArch64",
    MappingProxyType(_A64_NAMES),
    MappingProxyType(_A64_LOADER),
    "AArch64 type ",
)
MACHINES = MappingProxyType({m.em: m for m in (X86_64, AARCH64)})
SUPPORTED = "only x86-64 and AArch64 (ELF64 little-endian) are supported"

# Calls and tail calls: out of the ±128 MiB branch range the arm64 loader sends them through a
# module PLT entry, whose space module_frob_arch_sections() reserves by counting every SHT_RELA
# section whose target is executable, .klp.rela.* included (see the README).
AARCH64_BRANCHES = frozenset({282, 283})


def machine_of(reloc_name: str) -> Machine:
    """The machine a relocation type name (as reloc_name() gives it) belongs to."""
    return AARCH64 if AARCH64.owns(reloc_name) else X86_64
