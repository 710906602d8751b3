"""Module signing for kernels that check signatures (CONFIG_MODULE_SIG, _FORCE): the tree's
scripts/sign-file with the build's own key (certs/signing_key.pem, .x509)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.errors import BuildError
from harness.kernels.kernel import Kernel

MAGIC = b"~Module signature appended~\n"


def is_signed(ko: Path) -> bool:
    with open(ko, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - len(MAGIC)))
        return handle.read() == MAGIC


def signing_files(kernel: Kernel) -> tuple[Path, Path, Path]:
    """(sign-file, private key, certificate) of a built tree."""
    tree = kernel.headers
    key = kernel.config_value("MODULE_SIG_KEY")
    pem = (
        Path(key)
        if key.startswith("/")
        else tree / (key if key != "n" else "certs/signing_key.pem")
    )
    return tree / "scripts/sign-file", pem, tree / "certs/signing_key.x509"


def sign_module(kernel: Kernel, ko: Path) -> bool:
    """Sign `ko` in place when `kernel` checks signatures and its build key is at hand.

    True when signed now. Without CONFIG_MODULE_SIG, or without the key (a distro kernel)
    and not forced, nothing is done; a forced kernel without its key is a BuildError.
    """
    if kernel.config_value("MODULE_SIG") != "y" or is_signed(ko):
        return False
    sign_file, pem, x509 = signing_files(kernel)
    missing = [str(p) for p in (sign_file, pem, x509) if not p.is_file()]
    if missing:
        if kernel.config_value("MODULE_SIG_FORCE") == "y":
            raise BuildError(
                f"{kernel.name} refuses unsigned modules and its signing files are missing: "
                + ", ".join(missing)
            )
        return False
    algo = kernel.config_value("MODULE_SIG_HASH")
    argv = [str(sign_file), algo if algo != "n" else "sha256", str(pem), str(x509), str(ko)]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not is_signed(ko):
        raise BuildError(f"signing {ko} failed: {proc.stderr.strip()[-300:] or 'no signature'}")
    return True


def strip_signature(ko: Path, out: Path) -> None:
    """Write `ko` without its appended signature (struct module_signature + MAGIC) to `out`."""
    data = ko.read_bytes()
    if data.endswith(MAGIC):
        info = data[-len(MAGIC) - 12 : -len(MAGIC)]  # algo, hash, id_type, signer, key_id, pad, len
        size = 12 + len(MAGIC) + int.from_bytes(info[8:12], "big") + info[3] + info[4]
        data = data[:-size]
    out.write_bytes(data)
