"""Compressed modules: `.ko.xz`, `.ko.zst` and `.ko.gz`, read by their magic bytes and
written the way kbuild's scripts/Makefile.modinst writes them, so that kmod and the kernel's
own decompressor (CONFIG_MODULE_DECOMPRESS) accept them:

- xz: `xz --check=crc32 --lzma2=dict=1MiB` (the kernel's xz decoder checks CRC32 only);
- zstd: `zstd` at its default level 3, one frame with a content checksum;
- gzip: `gzip -n` (no file name, no time stamp).

Decompression is bounded: never more than `limit` bytes out (plus one read step), the xz
decoder's memory is capped and zstd's window is libzstd's default limit (128 MiB); a corrupt,
truncated or oversized stream is one CompressionError line.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable

from harness.errors import NotElfError
from harness.klp.files import StrPath, atomic_write_chunks, printable, read_regular

XZ, ZSTD, GZIP = "xz", "zstd", "gzip"
SUFFIXES = {".xz": XZ, ".zst": ZSTD, ".gz": GZIP}
SUFFIX_OF = {kind: suffix for suffix, kind in SUFFIXES.items()}
MAGICS = {b"\xfd7zXZ\x00": XZ, b"\x28\xb5\x2f\xfd": ZSTD, b"\x1f\x8b": GZIP}

XZ_MEMLIMIT = 1 << 28  # xz -9 needs 65 MiB; a header asking for more is refused, not obeyed
FEED = 1 << 10  # compressed bytes per zstd step: at most ~32 MiB out of each (RLE blocks)
ZSTD_LEVEL = 3  # the zstd tool's default, which kbuild uses
GZIP_LEVEL = 6  # the gzip tool's default, which kbuild uses


class CompressionError(NotElfError):
    """A corrupt, truncated or oversized compressed module, or a name that says another kind."""


def kind_of_name(path: StrPath) -> str | None:
    """The compression a file name asks for ("x.ko.zst" -> "zstd"), None for a plain name."""
    return SUFFIXES.get(os.path.splitext(os.fspath(path))[1])


def kind_of_data(data: bytes | bytearray | memoryview) -> str | None:
    head = bytes(data[:6])
    return next((kind for magic, kind in MAGICS.items() if head.startswith(magic)), None)


def plain_name(path: StrPath) -> str:
    """The file name without its compression suffix ("x.ko.xz" -> "x.ko")."""
    name = os.path.basename(os.fspath(path))
    return name[: -len(SUFFIX_OF[kind])] if (kind := kind_of_name(name)) else name


def read_module(path: StrPath, limit: int) -> tuple[bytes, str | None]:
    """The content of module file `path` (at most `limit` bytes, compressed or not) and the
    compression it was stored with. The content decides; a name whose suffix says another
    kind (kmod and the kernel go by the name) is refused."""
    label = printable(os.fspath(path))
    data = read_regular(path, limit, what=f"{label}: cannot read")
    named, found = kind_of_name(path), kind_of_data(data)
    if named != found:
        if named is None:
            raise CompressionError(
                f"{label}: {found}-compressed, but the name does not end in "
                f"{SUFFIX_OF[str(found)]} (kmod and the kernel choose by the name)"
            )
        content = f"{found}-compressed" if found else "not compressed"
        raise CompressionError(f"{label}: named {SUFFIX_OF[named]} but the content is {content}")
    if found is None:
        return data, None
    return decompress(data, found, label, limit), found


def decompress(data: bytes, kind: str, label: str, limit: int) -> bytes:
    """`data` decompressed; CompressionError when corrupt, truncated, followed by other
    data, or larger than `limit` bytes."""
    errors = _stream_errors(kind)
    try:
        if kind == XZ:
            return _xz(data, label, limit)
        if kind == GZIP:
            return _gzip(data, label, limit)
        return _zstd(data, label, limit)
    except errors as err:  # a bad header, check value, or an xz dictionary past XZ_MEMLIMIT
        raise CompressionError(f"{label}: corrupt or unsupported {kind} stream: {err}") from None
    except MemoryError:
        raise CompressionError(f"{label}: {kind} stream needs too much memory") from None


def _stream_errors(kind: str) -> tuple[type[Exception], ...]:
    """The decoder's error; lzma and zstandard are imported only for their own kind (the
    converter's start-up counts)."""
    if kind == XZ:
        import lzma

        return (lzma.LZMAError,)
    if kind == ZSTD:
        import zstandard

        return (zstandard.ZstdError,)
    return (zlib.error,)


def _check(label: str, kind: str, out: bytes, limit: int, eof: bool, rest: bytes) -> bytes:
    if len(out) > limit:
        raise CompressionError(f"{label}: decompresses to more than the {limit} bytes allowed")
    if not eof:
        raise CompressionError(f"{label}: truncated {kind} stream")
    if rest.strip(b"\0"):  # xz allows zero padding after a stream; nothing else may follow
        raise CompressionError(f"{label}: {len(rest)} bytes of other data after the {kind} stream")
    return out


def _xz(data: bytes, label: str, limit: int) -> bytes:
    import lzma

    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    out = dec.decompress(data, max_length=limit + 1)
    return _check(label, XZ, out, limit, dec.eof, dec.unused_data)


def _gzip(data: bytes, label: str, limit: int) -> bytes:
    dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = dec.decompress(data, limit + 1)
    return _check(label, GZIP, out, limit, dec.eof, dec.unused_data)


def _zstd(data: bytes, label: str, limit: int) -> bytes:
    import zstandard  # only for .zst modules: importing it costs start-up time

    dec = zstandard.ZstdDecompressor().decompressobj()
    parts: list[bytes] = []
    total = pos = 0
    while pos < len(data) and not dec.eof:
        part = dec.decompress(data[pos : pos + FEED])
        pos += FEED
        parts.append(part)
        total += len(part)
        if total > limit:
            raise CompressionError(f"{label}: decompresses to more than the {limit} bytes allowed")
    rest = dec.unused_data + data[pos:] if dec.eof else b""
    return _check(label, ZSTD, b"".join(parts), limit, dec.eof, rest)


def compress(chunks: Iterable[bytes | bytearray | memoryview], kind: str) -> list[bytes]:
    """`chunks` compressed as kbuild compresses modules (see the module docstring)."""
    if kind == XZ:
        import lzma

        filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]
        enc = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
        return [*(enc.compress(c) for c in chunks), enc.flush()]
    if kind == GZIP:
        # gzip's header with mtime 0 and no name (gzip -n), its CRC32 and size trailer
        body = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return [*(body.compress(c) for c in chunks), body.flush()]
    if kind == ZSTD:
        import zstandard

        data = b"".join(chunks)  # one frame that records its size, as the zstd tool writes
        zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        return [zstd.compress(data)]
    raise ValueError(f"unknown compression {kind!r}")


def write_module(
    path: StrPath, chunks: Iterable[bytes | bytearray | memoryview], mode: int | None = None
) -> None:
    """Write a module atomically, compressed as its name asks (plain for `x.ko`)."""
    kind = kind_of_name(path)
    atomic_write_chunks(path, compress(chunks, kind) if kind else chunks, mode)
