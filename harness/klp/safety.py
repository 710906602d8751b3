"""Refuse klp relocations the kernel would apply too late: to module objects in sections it
processes while the livepatch module loads.

The module loader applies `.klp.rela.vmlinux.*` at load (apply_relocations(), v5.8+), but a
`.klp.rela.<module>.*` section only when the patch is enabled or that module loads
(klp_init_object_loaded() / klp_module_coming()). Sections that the loader and its notifiers
read during the load itself would see such fields still 0: static keys and static calls
(jump_label_module_notify(), static_call_module_notify() at MODULE_STATE_COMING: "code
corruption", as the kernel's own `objtool klp diff` puts it when it refuses klp relocations to
module symbols in __jump_table and .static_call_sites; kpatch-build refuses the same), and
the code patching of module_finalize() (alternatives, paravirt, retpoline/return/call sites,
IBT sealing), ftrace's call sites, the exception and bug tables, module parameters (parsed at
load) and constructors.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.errors import UnsafeRelocationError
from harness.klp.abi import is_klp_rela, parse_klp_rela
from harness.klp.elfread import SHT_RELA, ElfImage, cstring
from harness.klp.files import printable
from harness.klp.symbols import VMLINUX
from harness.klp.tables import Symbols

_STATIC_KEY = "static keys are set up from it at load; use static_key_enabled() instead"
_STATIC_CALL = "static calls are set up from it at load; call through a pointer instead"
_PATCHED = "the loader patches code from it at load (module_finalize)"
# target section -> when the kernel reads it, for the message
UNSAFE_SECTIONS: dict[str, str] = {
    "__jump_table": _STATIC_KEY,
    ".static_call_sites": _STATIC_CALL,
    ".altinstructions": _PATCHED,
    ".altinstr_replacement": "alternatives copy it into the code at load (module_finalize)",
    ".altinstr_aux": _PATCHED,
    ".parainstructions": _PATCHED,
    ".smp_locks": _PATCHED,
    ".retpoline_sites": _PATCHED,
    ".return_sites": _PATCHED,
    ".call_sites": _PATCHED,
    ".ibt_endbr_seal": _PATCHED,
    "__mcount_loc": "ftrace records its call sites at load",
    "__patchable_function_entries": "ftrace records its call sites at load",
    "__ex_table": "the exception table is sorted at load",
    "__bug_table": "the bug table is registered at load",
    "__param": "module parameters are parsed at load",
    ".init_array": "constructors run at load",
    ".ctors": "constructors run at load",
}


def check_safety(
    img: ElfImage, syms: Symbols, strtab: bytes | bytearray, targets: Mapping[int, str]
) -> None:
    """Raise UnsafeRelocationError for the first relocation into an UNSAFE_SECTIONS section
    that is, or will be made by this conversion (`targets`: symbol index -> object), a klp
    relocation to a module object (anything but vmlinux)."""
    modules = {idx: obj for idx, obj in targets.items() if obj != VMLINUX}
    count = len(img.sections)
    for sec in img.sections:
        if sec.type != SHT_RELA or sec.link != img.symtab_index or not 0 < sec.info < count:
            continue
        target = img.sections[sec.info].name
        why = UNSAFE_SECTIONS.get(target)
        if why is None:
            continue
        klp = is_klp_rela(img, sec.index)
        obj = parse_klp_rela(sec.name) if klp else None
        if klp and (obj is None or obj == VMLINUX):
            continue
        if not klp and not modules:
            continue
        for symbol in img.relas(sec.index).symbols():
            if klp or symbol in modules:
                name = cstring(strtab, syms.names[symbol]) if symbol < len(syms.names) else "?"
                where = obj if klp else modules[symbol]
                raise UnsafeRelocationError(
                    f"{img.label}: {printable(target)}: a klp relocation to '{printable(name)}' "
                    f"of module {printable(str(where))} would be applied only when the patch is "
                    f"enabled or that module loads, but {why}; the kernel's own klp tooling "
                    "(objtool klp diff) and kpatch-build refuse this too"
                )
