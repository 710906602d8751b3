"""A conversion as a module is shipped: decompress, strip the old signature (when asked),
convert, sign, compress as the output name says, and rename into place.

The converter (harness.klp) reads compressed modules itself; what it does not do is sign
(sign-file is a kernel tool) or decide about signatures. Here a signed input is refused
unless the caller strips its signature, so that a module is never left with a signature
that no longer matches it; an output is only ever renamed into place complete (signed when
a signer is given, compressed when its name ends in .xz, .zst or .gz).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.build.sign import (
    MAGIC,
    SIGNED_LIMIT,
    TRAILER,
    SignedModuleError,
    Signer,
    is_signed,
    sign,
    unsigned,
    unsigned_size,
)
from harness.errors import FileReadError
from harness.fileio import printable, read_regular
from harness.klp.compressed import (
    kind_of_data,
    kind_of_name,
    plain_name,
    read_module,
    write_module,
)
from harness.klp.convert import ConvertReport
from harness.klp.elfread import MODULE_LIMIT

if TYPE_CHECKING:
    from harness.kernels.kernel import Kernel

# convert(src, dst): harness.klp.convert.convert_module with the target bound in
Convert = Callable[[Path, Path], ConvertReport]


@dataclass(frozen=True)
class Delivered:
    report: ConvertReport  # report.output is the delivered file
    compression: str | None  # "xz", "zstd", "gzip" or None (plain)
    signer: Signer | None  # what signed it, None when unsigned
    stripped: bool  # the input's signature was dropped


def deliver(
    src: Path,
    dst: Path,
    convert: Convert,
    *,
    signer: Signer | None = None,
    strip_signature: bool = False,
) -> Delivered:
    """Convert `src` into `dst` (the same path rewrites it in place, keeping its
    compression). See the module docstring."""
    label = printable(src)
    if signer is None and kind_of_name(dst) is None and (peek := _peek(src)) is not None:
        return _plain(src, dst, convert, peek, label, strip_signature)
    try:
        data, kind = read_module(src, MODULE_LIMIT)
    except FileReadError:  # missing, unreadable, not a regular file: the converter says so
        return Delivered(convert(src, dst), None, None, False)
    signed = data.endswith(MAGIC)
    if signed and not strip_signature:
        raise SignedModuleError(
            f"{label}: carries a module signature; converting would invalidate it: give "
            "--strip-signature to drop it (then sign again with --sign-key/--sign-cert)"
        )
    if signed:
        unsigned(data, label)  # a malformed trailer is refused before anything is written
    del data  # the converter reads the input itself: no second copy held meanwhile
    compression = kind_of_name(dst)
    if not signed and kind is None and compression is None and signer is None:
        return Delivered(convert(src, dst), None, None, False)  # a plain .ko: nothing around
    mode = os.stat(src).st_mode & 0o777
    with tempfile.TemporaryDirectory(prefix="klp-harness-deliver.") as tmp:
        plain = Path(tmp) / plain_name(dst)
        report = convert(src, plain)
        body = read_regular(plain, SIGNED_LIMIT)
        if body.endswith(MAGIC):  # nothing to convert: a copy of the input, signature and all
            body = unsigned(body, label)
            plain.write_bytes(body)
        if signer is not None:
            sign(signer, plain, printable(dst))
            body = read_regular(plain, SIGNED_LIMIT)
        write_module(dst, [body], mode)
    return Delivered(replace(report, output=dst), compression, signer, signed)


def _peek(src: Path) -> tuple[bytes, int] | None:
    """The last TRAILER bytes and the size of a plain (uncompressed, by name and content)
    regular file; None for anything else, which the full path handles and judges."""
    if kind_of_name(src) is not None:
        return None
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MODULE_LIMIT:
            return None
        if kind_of_data(os.pread(fd, 6, 0)) is not None:
            return None
        tail = os.pread(fd, TRAILER, max(0, info.st_size - TRAILER))
        return tail, info.st_size
    finally:
        os.close(fd)


def _plain(
    src: Path, dst: Path, convert: Convert, peek: tuple[bytes, int], label: str, strip: bool
) -> Delivered:
    """A plain module to a plain output, unsigned: converted straight into `dst` without
    reading it whole here (the converter drops a signature when it rewrites the ELF)."""
    tail, size = peek
    signed = tail.endswith(MAGIC)
    if signed and not strip:
        raise SignedModuleError(
            f"{label}: carries a module signature; converting would invalidate it: give "
            "--strip-signature to drop it (then sign again with --sign-key/--sign-cert)"
        )
    if signed:
        unsigned_size(tail, size, label)  # a malformed trailer is refused before writing
    report = convert(src, dst)
    if signed and is_signed(dst):  # nothing to convert: a copy of the input, signature and all
        body = read_regular(dst, SIGNED_LIMIT)
        write_module(dst, [unsigned(body, label)], os.stat(dst).st_mode & 0o777)
    return Delivered(report, None, None, signed)


def unsigned_warning(kernel: Kernel | None) -> str | None:
    """A warning for an unsigned module meant for `kernel`: a kernel with
    CONFIG_MODULE_SIG_FORCE refuses it at load ("Key was rejected by service")."""
    if kernel is None or kernel.config_value("MODULE_SIG_FORCE") != "y":
        return None
    return (
        f"{kernel.name} refuses unsigned modules (CONFIG_MODULE_SIG_FORCE) and no signing key "
        "was given or found: sign the output (--sign-key KEY --sign-cert CERT) before loading it"
    )
