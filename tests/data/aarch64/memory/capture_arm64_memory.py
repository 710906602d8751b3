"""Capture what harness.vm.kcore reads from a real arm64 guest, for tests/test_memcheck_aarch64.py.

Boots a scratch arm64 kernel by direct qemu (initramfs with a static busybox, 9p share),
insmods the converted samples one after the other and, after each, reads its memory with the
real KcoreReader (the commands the harness's step runs), through a console adapter that keeps
every command, its output and every file the reader fetched. Then /proc/kallsyms, filtered on
the host to the names the modules' klp symbols need (and `_text`).

    capture_arm64_memory.py KERNEL_DIR KO_DIR OUT_DIR

(see README.md; run as root, takes ~15 s under TCG)
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pexpect

from harness.klp.elfread import ElfImage
from harness.klp.symbols import kallsyms_lines
from harness.suite.memcheck import VMLINUX, module_relocs, reads
from harness.vm.commands import CommandResult
from harness.vm.kcore import KcoreReader

INITRAMFS = Path("/tmp/arm64/initramfs.cpio.gz")
# (module file, module name), loaded in this order
MODULES = [
    ("klp_kernel_clone.klp.ko", "klp_kernel_clone"),
    ("klp_kallsyms_lookup_name.klp.ko", "klp_kallsyms_lookup_name"),
    ("klp_unexported_data.klp.ko", "klp_unexported_data"),
    ("klp_address_taken.klp.ko", "klp_address_taken"),
    ("klp_livepatch_target.ko", "klp_livepatch_target"),
    ("klp_livepatch.klp.ko", "klp_livepatch"),
    ("klp_relocs_a64.klp.ko", "klp_relocs_a64"),
]


class Console:
    """A KcoreGuest over the serial console: each command runs from a script in the share,
    its output goes to a file there; every exchange is kept."""

    def __init__(self, child: pexpect.spawn, share: Path) -> None:
        self.child, self.share = child, share
        self.seq = 0
        self.runs: list[list[Any]] = []
        self.files: dict[str, str] = {}

    def shell(self, cmd: str, timeout: float = 60) -> CommandResult:
        self.seq += 1
        (self.share / f"cmd.{self.seq}.sh").write_text(cmd + "\n")
        self.child.sendline(
            f"cd /mnt/host; sh cmd.{self.seq}.sh > out.{self.seq} 2>&1; "
            f"printf '@@%s-%d:%d@@\\n' DONE {self.seq} $?"
        )
        self.child.expect(rf"@@DONE-{self.seq}:(\d+)@@", timeout=timeout)
        status = int(self.child.match.group(1))
        output = (self.share / f"out.{self.seq}").read_text(errors="replace")
        return CommandResult(cmd, output, status, 0.0)

    def run(self, cmd: str, timeout: float = 60, note: str | None = None) -> CommandResult:
        result = self.shell(cmd, timeout)
        self.runs.append([cmd, result.output, result.status])
        return result

    def read_file(self, name: str, limit: int = 16 << 20) -> bytes:
        data = (self.share / name).read_bytes()[:limit]
        self.files[name] = data.hex()
        return data


def predicted(ko: Path, system_map: Path) -> tuple[list[list[Any]], int]:
    table: dict[str, list[int]] = {}
    for line in kallsyms_lines(system_map.read_text(), str(system_map)):
        table.setdefault(line.name, []).append(line.address)
    found = module_relocs(ElfImage.load(ko))
    out: dict[str, int | None] = {}
    for r in found.relocs:
        entries = table.get(r.name, []) if r.obj == VMLINUX else []
        pos = r.sympos
        pick = entries[0] if pos == 0 and len(entries) == 1 else None
        if pos and pos <= len(entries):
            pick = entries[pos - 1]
        out[r.symbol] = pick
    (text,) = table["_text"]
    return [[k, v] for k, v in out.items()], text


def main() -> None:
    kernel, ko_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    share = Path(tempfile.mkdtemp(prefix="memcap-"))
    for name, _ in MODULES:
        shutil.copy(ko_dir / name, share / name)
    qemu = (
        "qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 2 -m 512 -nographic -no-reboot "
        f"-kernel {kernel}/arch/arm64/boot/Image -initrd {INITRAMFS} "
        '-append "console=ttyAMA0 panic=-1 rdinit=/init" '
        f"-fsdev local,id=fs0,path={share},security_model=none "
        "-device virtio-9p-pci,fsdev=fs0,mount_tag=host"
    )
    start = time.monotonic()
    child = pexpect.spawn("/bin/sh", ["-c", qemu], encoding="utf-8", timeout=120)
    child.logfile_read = open(out / "console.log", "w")  # noqa: SIM115
    child.expect("KLP-ARM64-READY (\\S+)")
    release = child.match.group(1)
    console = Console(child, share)
    console.shell("stty -echo 2>/dev/null; true")
    boot = console.shell("dmesg | grep -E 'KASLR|module region|pages in range|Linux version'")
    reader = KcoreReader(console)
    modules = []
    for file, module in MODULES:
        ko = share / file
        insmod = console.shell(f"insmod ./{file}")
        sections = console.shell(
            f"cd /sys/module/{module}/sections && for n in .* *; do "
            '[ -f "$n" ] && echo "$n $(cat "$n")"; done'
        )
        entry: dict[str, Any] = {
            "module": module,
            "ko": file,
            "insmod": [insmod.status, insmod.output],
            "sections": sections.output,
            "runs_from": len(console.runs),
        }
        found = module_relocs(ElfImage.load(ko))
        if found.relocs and insmod.status == 0:
            objects = sorted({r.obj for r in found.relocs} - {VMLINUX})
            memory = reader.read(module, reads(found), objects)
            entry["error"] = memory.error
            entry["objects"] = objects
            entry["predicted"], entry["table_text"] = predicted(ko, kernel / "System.map")
        entry["runs_to"] = len(console.runs)
        modules.append(entry)
    kallsyms = console.shell("cat /proc/kallsyms > kallsyms; echo done")
    assert kallsyms.status == 0
    child.sendline("poweroff -f")
    child.expect(pexpect.EOF, timeout=60)
    seconds = time.monotonic() - start
    need = {"_text"} | {
        r.name for f, _ in MODULES for r in module_relocs(ElfImage.load(share / f)).relocs
    }
    lines = [
        line
        for line in (share / "kallsyms").read_text().splitlines()
        if (m := re.fullmatch(r"[0-9a-f]{16} \S (\S+)", line)) and m.group(1) in need
    ]
    (out / "kallsyms.excerpt").write_text("\n".join(lines) + "\n")
    record = {
        "kernel": release,
        "boot_dmesg": boot.output.splitlines(),
        "seconds": round(seconds, 1),
        "modules": modules,
        "runs": console.runs,
        "files": console.files,
    }
    (out / "capture.json.xz").write_bytes(lzma.compress(json.dumps(record, indent=1).encode()))
    for file, _ in MODULES:
        (out / f"{file}.xz").write_bytes(lzma.compress((share / file).read_bytes()))
    shutil.rmtree(share)
    print(f"{out}: {release}, {len(console.runs)} reader commands, {seconds:.1f} s")


if __name__ == "__main__":
    main()
