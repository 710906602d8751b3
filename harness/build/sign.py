"""Module signatures: reading, stripping and making them with the kernel's scripts/sign-file.

A signed module is the ELF file, then the signature (PKCS#7), then a struct module_signature
(12 bytes: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len big-endian 32 bits),
then MAGIC. Any change to the ELF invalidates it: strip, change, sign again.

For other stages (`convert`, `make`):

    signer = signer_for(kernel, key, cert, sign_file)  # None: nothing to sign with
    if signer:
        sign(signer, ko)  # atomic: ko is either unsigned or correctly signed

`signer_for` takes the key and certificate given by the user, or else the build key of a
kernel that checks signatures (a source-built kernel's certs/signing_key.pem and .x509);
sign-file comes from the given path or the kernel's headers tree.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import BuildError, FileReadError, NotElfError, UsageError
from harness.fileio import printable, read_regular

if TYPE_CHECKING:  # `convert` imports this module on every run: no more than it needs
    from harness.kernels.kernel import Kernel

MAGIC = b"~Module signature appended~\n"
INFO_SIZE = 12  # struct module_signature
TRAILER = INFO_SIZE + len(MAGIC)  # what ends a signed module after the signature itself
PKEY_ID_PKCS7 = 2  # the only id_type kernels still accept
SIGNED_LIMIT = (1 << 30) + (1 << 20)  # a module (elfread.MODULE_LIMIT) and its signature
SIGN_TIMEOUT = 300  # seconds: an RSA-4096 signature of a 1 GiB module on a slow machine


class SignatureError(NotElfError):
    """A signature trailer that the kernel would reject as malformed (-EBADMSG)."""


class SignedModuleError(UsageError):
    """A signed module given where changing it would invalidate its signature."""


@dataclass(frozen=True)
class Signer:
    """What `scripts/sign-file` needs: the tool, a private key (PEM file or pkcs11: URI),
    the X.509 certificate (PEM or DER) and the hash algorithm."""

    sign_file: Path
    key: Path
    cert: Path
    hash: str = "sha256"


def is_signed(ko: Path) -> bool:
    with open(ko, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - len(MAGIC)))
        return handle.read() == MAGIC


def unsigned(data: bytes, label: str) -> bytes:
    """`data` without its appended signature (unchanged when it has none). The trailer is
    checked as the kernel's mod_check_sig checks it; a malformed one is a SignatureError."""
    if not data.endswith(MAGIC):
        return data
    return data[: unsigned_size(data[-TRAILER:], len(data), label)]


def unsigned_size(tail: bytes, size: int, label: str) -> int:
    """The size of a signed module of `size` bytes without its signature, from its last
    TRAILER bytes `tail` (so a large module need not be read whole to check it)."""
    end = size - TRAILER
    if end < 0 or len(tail) < TRAILER:
        raise SignatureError(f"{label}: module signature trailer truncated")
    info = tail[-TRAILER : -len(MAGIC)]
    sig_len = int.from_bytes(info[8:12], "big")
    if info[2] != PKEY_ID_PKCS7 or any(info[:2]) or any(info[3:8]):
        raise SignatureError(
            f"{label}: malformed module signature (id_type {info[2]}, expected PKCS#7 with "
            "zero algo/hash/signer/key-id fields)"
        )
    if not 0 < sig_len <= end:
        raise SignatureError(
            f"{label}: malformed module signature (signature length {sig_len} "
            f"for {end} bytes before it)"
        )
    return end - sig_len


def strip_signature(ko: Path, out: Path) -> None:
    """Write `ko` without its appended signature to `out`."""
    label = printable(ko)
    out.write_bytes(unsigned(read_regular(ko, SIGNED_LIMIT, what=label), label))


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


def kernel_hash(kernel: Kernel | None) -> str:
    algo = kernel.config_value("MODULE_SIG_HASH") if kernel else "n"
    return algo if algo != "n" else "sha256"


def signer_for(
    kernel: Kernel | None,
    key: Path | None = None,
    cert: Path | None = None,
    sign_file: Path | None = None,
    hash: str | None = None,
) -> Signer | None:
    """The Signer to use, or None when there is nothing to sign with.

    `key` and `cert` (both or neither) are the user's; without them, a `kernel` with
    CONFIG_MODULE_SIG whose build key is at hand (source builds) gives its own. sign-file is
    `sign_file`, else the kernel headers' scripts/sign-file. Missing files are errors."""
    if (key is None) != (cert is None):
        raise UsageError("give both --sign-key and --sign-cert (or neither)")
    if key is None or cert is None:
        if kernel is None or kernel.config_value("MODULE_SIG") != "y":
            return None
        tool, pem, x509 = signing_files(kernel)
        if not (pem.is_file() and x509.is_file()):
            return None  # a distro kernel: its key stays with the distribution
        key, cert = pem, x509
        sign_file = sign_file or tool
    if sign_file is None:
        if kernel is None:
            raise UsageError("signing needs scripts/sign-file: give --sign-file PATH or --kernel")
        sign_file = kernel.headers / "scripts/sign-file"
    for what, path in (("signing key", key), ("certificate", cert), ("sign-file", sign_file)):
        if what == "signing key" and str(path).startswith("pkcs11:"):
            continue
        if not path.is_file():
            raise FileReadError(f"{printable(path)}: {what} not found (or not a regular file)")
    if not os.access(sign_file, os.X_OK):
        raise FileReadError(f"{printable(sign_file)}: sign-file is not executable")
    return Signer(sign_file, key, cert, hash or kernel_hash(kernel))


def sign(signer: Signer, ko: Path, label: str | None = None) -> None:
    """Sign `ko` in place, atomically: sign-file writes a signed copy beside it, which is
    checked (the module's bytes, then a well-formed signature) and renamed over `ko`.
    Messages name `label` (default: `ko`)."""
    import subprocess  # only when signing: its import costs every conversion 15 ms

    label = label or printable(ko)
    data = read_regular(ko, SIGNED_LIMIT, what=label)
    if data.endswith(MAGIC):
        raise SignedModuleError(f"{label}: already signed; strip the signature before signing")
    fd, name = tempfile.mkstemp(prefix=f".{ko.name}.", suffix=".signed", dir=ko.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        argv = [signer.sign_file, signer.hash, signer.key, signer.cert, ko, tmp]
        try:
            proc = subprocess.run(
                [str(a) for a in argv],
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                timeout=SIGN_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BuildError(f"{label}: cannot run {printable(signer.sign_file)}: {err}") from None
        if proc.returncode != 0:
            raise BuildError(f"{label}: sign-file failed: {_reason(proc.stderr)}")
        signed = read_regular(tmp, SIGNED_LIMIT, what=printable(tmp))
        if not signed.startswith(data) or unsigned(signed, label) != data:
            raise BuildError(f"{label}: sign-file did not append a well-formed signature")
        os.chmod(tmp, os.stat(ko).st_mode & 0o7777)
        os.replace(tmp, ko)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _reason(stderr: str) -> str:
    """sign-file's last line ("sign-file: key.pem") and OpenSSL's last reason, one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no message"
    ssl = [ln.removeprefix("- ").split(": ../")[0] for ln in lines if ln.startswith("- SSL")]
    return printable(lines[-1][-200:] + (f" ({ssl[-1][-200:]})" if ssl else ""))


def sign_module(kernel: Kernel, ko: Path) -> bool:
    """Sign `ko` in place when `kernel` checks signatures and its build key is at hand.

    True when signed now. Without CONFIG_MODULE_SIG, or without the key (a distro kernel)
    and not forced, nothing is done; a forced kernel without its key is a BuildError.
    """
    if kernel.config_value("MODULE_SIG") != "y" or is_signed(ko):
        return False
    tool, pem, x509 = signing_files(kernel)
    missing = [str(p) for p in (tool, pem, x509) if not p.is_file()]
    if missing:
        if kernel.config_value("MODULE_SIG_FORCE") == "y":
            raise BuildError(
                f"{kernel.name} refuses unsigned modules and its signing files are missing: "
                + ", ".join(missing)
            )
        return False
    sign(Signer(tool, pem, x509, kernel_hash(kernel)), ko)
    return True
