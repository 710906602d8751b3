"""A module built elsewhere (by DKMS, by `klp-harness make`, by a user's own build) taken
through the same guest step and verdict as the harness's own builds.

The guest sees only the kernel's builds directory, so the file is copied there; its klp
symbols are read back from the file and placed by the kernel's table, for the in-memory
check of every klp relocation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from harness.build.guard import require_livepatch
from harness.build.modules import BuiltModule, builds_dir
from harness.cache import locked
from harness.errors import BuildError
from harness.fileio import atomic_write_bytes, printable, read_regular
from harness.kernels.kernel import Kernel
from harness.klp.compressed import kind_of_name
from harness.klp.elfread import MODULE_LIMIT
from harness.klp.inspect import inspect_module, verdicts
from harness.klp.symbols import SymbolTable
from harness.suite.samples import Sample


def prebuilt_module(kernel: Kernel, sample: Sample, ko: Path) -> BuiltModule:
    """`ko` (plain or compressed) as a guest step of `sample` takes it on `kernel`."""
    start = time.monotonic()
    data = read_regular(ko, MODULE_LIMIT, what="module")
    digest = hashlib.sha256(data).hexdigest()[:12]
    shown = printable(ko)
    stem = ko.name.removesuffix(f".{kind_of_name(ko)}") if kind_of_name(ko) else ko.name
    if stem != f"{sample.module}.ko":
        raise BuildError(f"{shown}: not a build of {sample.module} (expected {sample.module}.ko)")
    table = SymbolTable.load(kernel.kallsyms)
    found = verdicts(inspect_module(ko, table), table)
    if not found:
        raise BuildError(f"{shown}: no klp relocations: convert it first (klp-harness make)")
    where = builds_dir(kernel) / f"prebuilt-{sample.name}-{digest}"
    copy = where / ko.name
    with locked(where):
        if not copy.is_file():
            where.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(copy, data, 0o644)
    names = tuple(f"{v.object}.{v.name},{v.sympos}" for v in found)
    text = table.candidates("_text")
    return BuiltModule(
        sample=sample.name,
        module=sample.module,
        ko=copy,
        raw_ko=copy,
        log=ko,
        toolchain=f"prebuilt {shown}",
        converted=names,
        left_alone=(),
        cached=True,
        seconds=time.monotonic() - start,
        fingerprint=digest,
        predicted=tuple(zip(names, (v.address for v in found), strict=True)),
        table_text=text[0].address if len(text) == 1 else None,
    )


@dataclass(frozen=True)
class Prebuilt:
    """A runner Builder (harness.suite.runner.Backend.build) that builds nothing: each
    sample's module is the given file."""

    ko: Path

    def __call__(
        self, kernel: Kernel, sample: Sample, /, *, allow_no_livepatch: bool = False
    ) -> tuple[BuiltModule, tuple[BuiltModule, ...]]:
        require_livepatch(kernel, allow_no_livepatch)
        if sample.requires:
            raise BuildError(f"{sample.name}: requires other modules; not with a prebuilt module")
        return prebuilt_module(kernel, sample, self.ko), ()
