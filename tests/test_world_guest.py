"""Convert the world, in a guest (markers `vm` and `world`): a handful of the kernel's own
modules, every reference to vmlinux made a klp relocation (exports treated as unexported, as
tests/oracle/world.py does it), loaded in one boot of that kernel, each klp relocation
verified in memory (harness.suite.memcheck through /proc/kcore), exercised from the shell,
with no splat, no taint beyond E (the converted .ko carries no signature) and a clean rmmod.
All are loaded first (in dependency order), then exercised, then unloaded in reverse.

The first run found three gaps in harness.suite.memcheck (per-cpu symbols shifted by KASLR,
keys in .static_call_sites and __jump_table rewritten at load); they are fixed there and their
records are kept as test data (KLP_WORLD_RECORDS, tests/test_memcheck_debian.py).

    pytest -q -s -m "vm and world" tests/test_world_guest.py
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from oracle.elf import SHN_UNDEF, Elf
from oracle.loader import KernelTable
from oracle.world import module_exports, module_files, read_module

from harness.kernels.kernel import Kernel
from harness.klp.convert import ConvertReport, convert_module
from harness.klp.elfread import ElfImage
from harness.klp.symbols import SymbolTable, load_symvers
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.memcheck import (
    MemoryRecord,
    MemoryVerdict,
    is_init,
    module_relocs,
    record_of,
    verify,
)
from harness.vm.boot import boot
from harness.vm.commands import LoggedResult
from harness.vm.dmesg import letters_mask, scan_splats, taint_letters
from harness.vm.kcore import KcoreReader

pytestmark = [pytest.mark.vm, pytest.mark.world]

ALLOWED_TAINT = letters_mask("E")  # unsigned module: the conversion drops the signature

DUMMY = """set -e
ip link add wg0 type dummy
ip link set wg0 up
ip addr add 10.77.0.1/24 dev wg0
ip -o addr show dev wg0 | grep -q 'inet 10.77.0.1/24'
ip -o link show dev wg0 | grep -q 'UP'
ip link del wg0
echo 'wg0: added, up, addressed, deleted'"""

BRD = """set -e
head -c 1048576 /dev/urandom > brd.in
dd if=brd.in of=/dev/ram0 bs=64k oflag=direct status=none
dd if=/dev/ram0 of=brd.out bs=64k count=16 iflag=direct status=none
cmp brd.in brd.out
md5sum brd.in brd.out | awk '{print $1}' | uniq | wc -l | grep -qx 1
rm -f brd.in brd.out
echo '/dev/ram0: 1 MiB written and read back (O_DIRECT), identical'"""

VEGAS = """set -e
f=/proc/sys/net/ipv4/tcp_congestion_control
old=$(cat $f)
grep -qw vegas /proc/sys/net/ipv4/tcp_available_congestion_control
echo vegas > $f
now=$(cat $f)
echo "$old" > $f
[ "$now" = vegas ]
echo "tcp_congestion_control: vegas set and read back, $old restored\""""


@dataclass(frozen=True)
class RealModule:
    file: str  # the .ko's name in the image package
    params: str = ""
    exercise: str = ""  # a script that exits 0 when the module works
    why_not: str = ""  # why there is no exercise


NLS = """set -e
trap 'umount mnt 2>/dev/null || true' EXIT
mkdosfs /dev/ram0 >/dev/null
mkdir -p mnt
mount -t vfat -o codepage=437,iocharset=cp437 /dev/ram0 mnt
echo 'h\xe9llo' > mnt/Caf\xe9.txt
umount mnt
mount -t vfat -o codepage=437,iocharset=cp437 /dev/ram0 mnt
[ -f mnt/Caf\xe9.txt ] || { echo 'Caf\xe9.txt: not found after remount'; ls mnt; exit 1; }
grep -qx 'h\xe9llo' mnt/Caf\xe9.txt || { echo 'Caf\xe9.txt: content differs'; exit 1; }
umount mnt
rmdir mnt
echo 'vfat (cp437) on /dev/ram0: a name with bytes over 0x7f written, remounted, read'"""

# In load order (vfat needs fat; the vfat exercise needs brd); unloaded in reverse.
MODULES = (
    RealModule("crc-itu-t.ko", why_not="a library with no user interface"),
    RealModule("dummy.ko", exercise=DUMMY),
    RealModule("brd.ko", params="rd_nr=1 rd_size=4096", exercise=BRD),
    RealModule("fat.ko", why_not="exercised by nls_cp437's vfat mount"),
    RealModule("vfat.ko", why_not="exercised by nls_cp437's vfat mount"),
    RealModule("nls_cp437.ko", exercise=NLS),
    RealModule("tcp_vegas.ko", exercise=VEGAS),
)


@dataclass
class Row:
    module: str
    report: ConvertReport
    ko: Path
    verdict: MemoryVerdict | None = None
    exercise: str = ""


def test_converted_real_modules_load_verify_and_work(
    klp_kernel: Kernel, klp_results_dir: Path, tmp_path: Path
) -> None:
    exposed = tmp_path / "modules"
    exposed.mkdir()
    rows = [_convert(klp_kernel, exposed, m) for m in MODULES]
    table_text = _table_text(klp_kernel)
    log = klp_results_dir / f"console-{klp_kernel.name}-world-guest.log"
    problems: list[str] = []
    with boot(klp_kernel, log, modules=exposed) as guest:
        kallsyms = parse_kallsyms(guest.kallsyms(), "guest /proc/kallsyms")
        reader = KcoreReader(guest)
        baseline = guest.tainted()

        def logged(row: Row, what: str, cmd: str) -> bool:
            done = guest.run_logged(cmd, f"world {what} {row.module}")
            problems.extend(_kernel_problems(row.module, what, done, baseline))
            if not done.result.ok:
                output = done.result.output.strip()
                problems.append(f"{row.module}: {what} exit {done.result.status}: {output}")
            lines = done.result.output.strip().splitlines()[-1:] or [""]
            row.exercise = ("ok: " if done.result.ok else "FAILED: ") + lines[0]
            return done.result.ok

        loaded: list[Row] = []
        for spec, row in zip(MODULES, rows, strict=True):  # in dependency order
            if not guest.run(f"[ ! -e /sys/module/{row.module} ]").ok:
                problems.append(f"{row.module}: loaded already in the guest: not ours")
                break
            insmod = f"insmod {shlex.quote(guest.path(row.ko))} {spec.params}".strip()
            if not logged(row, "insmod", insmod):
                break
            loaded.append(row)
            row.verdict = _memory(reader, row, kallsyms, table_text)
        for spec, row in zip(MODULES, loaded, strict=False):
            row.exercise = f"skipped: {spec.why_not}"
            if spec.exercise:
                logged(row, "exercise", spec.exercise)
        for row in reversed(loaded):
            exercise = row.exercise
            if logged(row, "rmmod", f"rmmod {row.module}"):
                row.exercise = exercise
            if not guest.run(f"[ ! -e /sys/module/{row.module} ]").ok:
                problems.append(f"{row.module}: still in /sys/module after rmmod")
        final = guest.tainted()
    _print_table(klp_kernel, rows)
    print(
        f"  taint: {taint_letters(baseline) or '-'} at boot, {taint_letters(final) or '-'} at end"
    )
    for row in rows:
        verdict = row.verdict
        if verdict is None:  # not loaded: a problem already
            continue
        assert verdict.total == row.report.relocations, f"{row.module}: {verdict.summary}"
        assert verdict.verified + verdict.init + verdict.patched + len(verdict.mismatches) == (
            verdict.total
        ), f"{row.module}: {verdict.summary}"
        problems += [f"{row.module}: {verdict.summary}"] if verdict.error else []
        problems += [f"{row.module}: mismatch: {m}" for m in verdict.mismatches]
    # crc-itu-t's only reference is its __fentry__ call: ftrace's NOP, patched by the kernel
    assert sum(r.verdict.verified for r in rows if r.verdict) > 0
    assert not problems, "\n".join(problems)


def _convert(kernel: Kernel, exposed: Path, spec: RealModule) -> Row:
    """The module converted with all its vmlinux references as klp relocations."""
    found = [p for p in module_files(kernel) if p.name.split(".ko")[0] + ".ko" == spec.file]
    if len(found) != 1:
        pytest.skip(f"{kernel.name}: {len(found)} files named {spec.file} in its modules")
    src = found[0]
    data = read_module(src)
    if src.suffix != ".ko":  # compressed
        src = exposed / f"orig-{spec.file}"
        src.write_bytes(data)
    exports = module_exports(kernel.symvers)
    table = _kernel_table(kernel)
    undefined = {s.name for s in Elf(data, spec.file).symbols if s.shndx == SHN_UNDEF}
    # a name with several vmlinux entries: the export is the global one
    sympos = {
        n: pos for n in undefined - exports if (pos := table.exported_position(n)) is not None
    }
    dst = exposed / spec.file
    report = convert_module(
        src,
        dst,
        symtab=_symtab(kernel),
        exports=exports,
        sympos=sympos,
        versions=load_symvers(kernel.symvers),  # the guard's CRC: the kernel must not complain
    )
    assert report.relocations > 0, f"{spec.file}: nothing converted"
    # other modules' exports (vfat's calls into fat) stay ordinary relocations
    return Row(spec.file.removesuffix(".ko").replace("-", "_"), report, dst)


_TABLES: dict[str, tuple[SymbolTable, KernelTable]] = {}


def _tables(kernel: Kernel) -> tuple[SymbolTable, KernelTable]:
    if kernel.name not in _TABLES:
        text = kernel.kallsyms.read_text(errors="surrogateescape")
        _TABLES[kernel.name] = (SymbolTable.load(kernel.kallsyms), KernelTable(text))
    return _TABLES[kernel.name]


def _symtab(kernel: Kernel) -> SymbolTable:
    return _tables(kernel)[0]


def _kernel_table(kernel: Kernel) -> KernelTable:
    return _tables(kernel)[1]


def _table_text(kernel: Kernel) -> int | None:
    found = _symtab(kernel).candidates("_text")
    return found[0].address if len(found) == 1 else None


def _memory(
    reader: KcoreReader, row: Row, kallsyms: KallsymsIndex, table_text: int | None
) -> MemoryVerdict:
    """As harness.suite.steps reads it after insmod, then harness.suite.memcheck.verify."""
    found = module_relocs(ElfImage.load(row.ko))
    fields = [(r.section, r.offset, r.width) for r in found.relocs if not is_init(r.section)]
    read = reader.read(row.module, fields)
    predicted = tuple((f"{c.obj}.{c.name},{c.sympos}", c.address) for c in row.report.converted)
    record = record_of(found, read.bases, read.fields, read.error, predicted, table_text)
    _save(row.module, record, kallsyms)
    return verify(record, kallsyms)


def _save(module: str, record: MemoryRecord, kallsyms: KallsymsIndex) -> None:
    """With KLP_WORLD_RECORDS=DIR, keep what was read (the memory record and the guest's
    kallsyms lines it needs) as test data for tests/test_memcheck.py."""
    where = os.environ.get("KLP_WORLD_RECORDS")
    if not where:
        return
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{module}.json").write_text(json.dumps(record.to_json(), indent=1) + "\n")
    names = {"_text"} | {r.name for r in record.relocs if r.obj == "vmlinux"}
    lines = [e.raw for name in sorted(names) for e in kallsyms.vmlinux.get(name, [])]
    (out / f"{module}.kallsyms").write_text("\n".join(lines) + "\n")


def _kernel_problems(module: str, what: str, logged: LoggedResult, baseline: int) -> list[str]:
    out = [
        f"{module}: {what}: {s.kind}: {logged.lines[s.index]}" for s in scan_splats(logged.lines)
    ]
    new = logged.taint_after & ~baseline & ~ALLOWED_TAINT
    if new:
        out.append(f"{module}: {what}: new taint {taint_letters(new)}")
    return out


def _print_table(kernel: Kernel, rows: list[Row]) -> None:
    head = ("module", "klp relocs", "verified", "init", "patched", "mismatch", "exercise")
    lines = [head]
    for row in rows:
        v = row.verdict or MemoryVerdict(error="not read")
        lines.append(
            (row.module, str(row.report.relocations), str(v.verified), str(v.init),
             str(v.patched), str(len(v.mismatches)), row.exercise)
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    print(f"\n{kernel.name}: converted real modules in a guest")
    for line in lines:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1])
    for row in rows:
        if row.verdict is not None:
            print(f"  {row.module}: {row.verdict.summary}")
