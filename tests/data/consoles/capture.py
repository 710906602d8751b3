"""Re-capture the console fixtures in this directory from real boots (see README.md).

usage: python capture.py <extracted linux-image root> <dir with goodmod.ko and oopsmod.ko> <out>
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness.errors import BootError
from harness.kernels.kernel import Kernel
from harness.vm.boot import boot


def kernel_at(root: Path) -> Kernel:
    vmlinuz = next(root.glob("boot/vmlinuz-*"))
    release = vmlinuz.name.removeprefix("vmlinuz-")
    none = Path("/nonexistent")
    return Kernel(
        spec=f"local:{root}", name=f"debian-{release}", release=release,
        package_version="local", vmlinuz=vmlinuz, modules_dir=root / "lib/modules" / release,
        config=root / f"boot/config-{release}", headers=none, symvers=none, kallsyms=none,
    )  # fmt: skip


def main() -> None:
    root, mods, out = (Path(arg).absolute() for arg in sys.argv[1:4])
    kernel = kernel_at(root)
    facts: dict[str, object] = {}
    with boot(kernel, out / "boot-commands.console.log") as guest:
        facts["boot_seconds"] = guest.boot_seconds
        for cmd in ("uname -r", "false", "exit 3", "printf 'a\\nb\\nc\\n'", "echo err >&2"):
            guest.run(cmd)
    start = time.monotonic()
    try:
        with boot(kernel, out / "oops-then-panic.console.log") as guest:
            taints = [guest.tainted()]
            for name in ("goodmod", "oopsmod"):
                canary = guest.kmsg_canary(name)
                guest.run(f"insmod {mods}/{name}.ko")
                (out / f"{name}.dmesg").write_text("\n".join(guest.dmesg_since(canary)) + "\n")
                taints.append(guest.tainted())
            facts["taints"] = taints
            (out / "kallsyms.txt").write_text(guest.kallsyms())
            start = time.monotonic()
            guest.run("echo c > /proc/sysrq-trigger")
    except BootError as err:
        facts["panic_error"] = str(err).splitlines()[0]
        facts["panic_seconds"] = time.monotonic() - start
    print(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()
