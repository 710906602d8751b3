"""Errors a user can cause, each with its own exit status.

The CLI prints `klp-harness: <message>` and exits with `exit_code`; nothing else
(no traceback) reaches the user for these.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every expected failure; the message names the file and the problem."""

    exit_code = 1


class UsageError(HarnessError):
    exit_code = 2


class FileReadError(HarnessError):
    """A file is missing or unreadable."""

    exit_code = 3


class NotElfError(HarnessError):
    """Not ELF, truncated or structurally malformed ELF."""

    exit_code = 4


class UnsupportedElfError(HarnessError):
    """Valid ELF we do not handle: class, endianness, machine, type."""

    exit_code = 5


class NoSymtabError(HarnessError):
    exit_code = 6


class SymbolNotFoundError(HarnessError):
    exit_code = 7


class AmbiguousSymbolError(HarnessError):
    exit_code = 8


class SymposRangeError(HarnessError):
    exit_code = 9


class ModuleTargetError(HarnessError):
    """A module-object target in a module that is not a livepatch module."""

    exit_code = 10


class RelocationTypeError(HarnessError):
    exit_code = 11


class SymbolFileError(HarnessError):
    """A malformed System.map, kallsyms or Module.symvers."""

    exit_code = 12


class LivepatchGuardError(HarnessError):
    """The livepatch guard cannot be added (a module license the kernel deems proprietary)."""

    exit_code = 13


class NoLivepatchError(HarnessError):
    """The target kernel lacks CONFIG_LIVEPATCH: it would skip every klp relocation."""

    exit_code = 14


class AnnotationUseError(HarnessError):
    """A loaded section uses a KLP_MODULE_RELOC array, which the converter consumes."""

    exit_code = 15


class KernelError(HarnessError):
    """Kernel spec, package resolution, download or extraction failed."""

    exit_code = 20


class ToolchainError(HarnessError):
    exit_code = 21


class BuildError(HarnessError):
    exit_code = 22


class BootError(HarnessError):
    exit_code = 23


class ExpectationError(HarnessError):
    """A malformed expectation or kernel declaration data file."""

    exit_code = 24


class ReportError(HarnessError):
    """A results file that is not valid JSON or breaks the results schema."""

    exit_code = 25


class UnsafeRelocationError(HarnessError):
    """A klp relocation to a module object in a section the kernel processes at load
    (__jump_table, .static_call_sites, alternatives, ...): it would be applied too late."""

    exit_code = 16


class SourceFileChoiceError(HarnessError):
    """A sympos chosen by source file (`--sympos NAME@FILE`, KLP_SYMPOS_FILE) that the target's
    vmlinux does not resolve to one symbol: no such file holds the name, or it holds two."""

    exit_code = 17
