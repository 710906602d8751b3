"""`convert` and `inspect` on modules as distributions ship them: compressed (.ko.xz, .ko.zst,
.ko.gz) and signed. Real Debian modules (tests/data/packaged/), checked with the real tools:
xz, zstd, gzip and kmod's modinfo."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from packaged_data import SIGNED_MODULE, TARGET_61, TARGET_612, XZ_MODULE

from harness import errors
from harness.build.sign import MAGIC, SignatureError, unsigned
from harness.cli.main import main
from harness.klp import compressed, elfread
from harness.klp.compressed import CompressionError, decompress
from harness.klp.elfread import ElfImage

TARGET = TARGET_612
CHECKS = {".xz": ["xz", "-t"], ".zst": ["zstd", "-q", "-t"], ".gz": ["gzip", "-t"]}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    out, err = capsys.readouterr()
    return status, out, err


def tool(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    if not shutil.which(str(argv[0])):
        pytest.skip(f"{argv[0]} is not installed")
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)


def kmod_reads(suffix: str) -> bool:
    """Whether this machine's kmod was built with the library for `suffix` (bookworm's kmod
    30: +ZSTD +XZ -ZLIB)."""
    feature = {".xz": "+XZ", ".zst": "+ZSTD", ".gz": "+ZLIB"}.get(suffix)
    return feature is None or feature in tool("kmod", "--version").stdout.split()


def plain(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(data).read()
    return data


@pytest.fixture
def xz_copy(tmp_path: Path) -> Path:
    return Path(shutil.copy(XZ_MODULE, tmp_path / "xsk_diag.ko.xz"))


def test_a_debian_ko_xz_is_read_as_its_elf(xz_copy: Path) -> None:
    img = ElfImage.load(xz_copy)
    assert img.data == lzma.decompress(XZ_MODULE.read_bytes())
    assert img.data.endswith(MAGIC)  # Debian signs, then compresses
    assert "description=XDP socket monitoring via SOCK_DIAG" in img.modinfo()


def test_inspect_reads_a_ko_xz(xz_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["inspect", str(xz_copy), *TARGET[:2]], capsys)
    assert (status, err) == (0, "")
    assert out.strip() == f"{xz_copy}: no klp relocations"


@pytest.mark.parametrize("suffix", [".zst", ".gz", ".xz", ""])
def test_ko_xz_converted_to_what_the_output_name_asks(
    xz_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    reference = tmp_path / "reference.ko"
    args = ["convert", str(xz_copy), "--strip-signature", *TARGET]
    assert run([*args, "-o", str(reference)], capsys)[0] == 0
    out = tmp_path / f"converted.ko{suffix}"
    status, text, err = run([*args, "-o", str(out)], capsys)
    assert status == 0, err
    kind = {".zst": "zstd", ".gz": "gzip", ".xz": "xz"}.get(suffix)
    assert text.strip().endswith(f", {kind}-compressed" if kind else ", signature stripped")
    assert "converted 16 symbols, 31 relocations" in text
    if suffix:
        check = tool(*CHECKS[suffix], out)
        assert check.returncode == 0, check.stderr
    # every compression holds the same converted module, without Debian's signature
    assert plain(out) == reference.read_bytes() and not plain(out).endswith(MAGIC)
    if kmod_reads(suffix):
        info = tool("modinfo", "-F", "description", out)
        assert info.stdout.strip() == "XDP socket monitoring via SOCK_DIAG", info.stderr
    status, listing, _ = run(["inspect", str(out), *TARGET[:2]], capsys)
    assert status == 0 and listing.count("vmlinux    mutex_lock") == 2


def test_xz_is_written_as_kbuild_writes_it(xz_copy: Path, tmp_path: Path) -> None:
    """CRC32 check and a 1 MiB dictionary (the kernel's xz decoder has no CRC64 by default;
    scripts/Makefile.modinst: --check=crc32 --lzma2=dict=1MiB)."""
    out = tmp_path / "x.ko.xz"
    assert main(["convert", str(xz_copy), "--strip-signature", *TARGET, "-o", str(out)]) == 0
    listing = tool("xz", "-lvv", out).stdout
    assert "Check:             CRC32" in listing and "--lzma2=dict=1MiB" in listing


def test_gzip_carries_no_name_and_no_time(xz_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ko.gz"
    assert main(["convert", str(xz_copy), "--strip-signature", *TARGET, "-o", str(out)]) == 0
    head = out.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] == 0 and head[4:8] == bytes(4)  # gzip -n


def test_in_place_keeps_the_compression(xz_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["convert", str(xz_copy), "--strip-signature", *TARGET, "-i"], capsys)
    assert status == 0, err
    assert xz_copy.read_bytes().startswith(b"\xfd7zXZ\x00")
    data = lzma.decompress(xz_copy.read_bytes())
    assert not data.endswith(MAGIC) and b".klp.rela.vmlinux..text" in data


@pytest.mark.parametrize("module", [XZ_MODULE, SIGNED_MODULE])
@pytest.mark.parametrize("in_place", [False, True])
def test_signed_input_is_refused_and_left_alone(
    module: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], in_place: bool
) -> None:
    src = Path(shutil.copy(module, tmp_path / module.name))
    out = tmp_path / "out.ko"
    target = TARGET if module == XZ_MODULE else TARGET_61
    where = ["-i"] if in_place else ["-o", str(out)]
    status, text, err = run(["convert", str(src), *target, *where], capsys)
    assert status == errors.UsageError.exit_code and not text
    assert err == (
        f"klp-harness: {src}: carries a module signature; converting would invalidate it: "
        "give --strip-signature to drop it (then sign again with --sign-key/--sign-cert)\n"
    )
    assert src.read_bytes() == module.read_bytes() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [module.name]


def test_signed_plain_ko_stripped_and_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tcp_vegas.ko"
    args = ["convert", str(SIGNED_MODULE), "--strip-signature", *TARGET_61, "-o", str(out)]
    status, text, err = run(args, capsys)
    assert status == 0, err
    assert text.strip().endswith("signature stripped")
    assert not out.read_bytes().endswith(MAGIC)
    assert tool("modinfo", "-F", "signer", out).stdout == ""


def test_signed_plain_ko_with_nothing_to_convert_is_stripped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every reference exported: the converter copies the module as it is, signature and
    all; the delivered copy is the module without its signature."""
    from harness.klp.convert import undefined_symbols

    symvers = tmp_path / "Module.symvers"
    names = [*sorted(undefined_symbols(SIGNED_MODULE)), "klp_enable_patch"]
    symvers.write_text("".join(f"0x00000001\t{n}\tvmlinux\tEXPORT_SYMBOL\t\n" for n in names))
    out = tmp_path / "tcp_vegas.ko"
    args = ["convert", str(SIGNED_MODULE), "--strip-signature", *TARGET_61, "-o", str(out)]
    status, _, err = run([*args, "--symvers", str(symvers)], capsys)
    assert status == 0, err
    assert out.read_bytes() == unsigned(SIGNED_MODULE.read_bytes(), "m")


def test_strip_gives_back_the_unsigned_module() -> None:
    """The trailer's lengths, read as the kernel's mod_check_sig reads them: what is left
    ends where the ELF ends (its section header table is last in a kbuild .ko)."""
    data = SIGNED_MODULE.read_bytes()
    body = unsigned(data, "m")
    img = ElfImage(Path("m"), body)
    assert len(body) == img.shoff + img.shnum * 64
    assert unsigned(body, "m") == body


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d[-30:], "trailer truncated"),
        (lambda d: d[:-32] + b"\x7f\xff\xff\xff" + d[-28:], "signature length 2147483647"),
        (lambda d: d[:-38] + b"\x01" + d[-37:], "id_type 1"),
        (lambda d: d[:-40] + b"\x05" + d[-39:], "id_type 2"),  # a nonzero algo byte
    ],
)
def test_malformed_signature_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[bytes], bytes], words: str
) -> None:
    src = tmp_path / "m.ko"
    src.write_bytes(edit(SIGNED_MODULE.read_bytes()))
    with pytest.raises(SignatureError, match=words):
        unsigned(src.read_bytes(), "m.ko")
    out = tmp_path / "out.ko"
    args = ["convert", str(src), "--strip-signature", *TARGET_61, "-o", str(out)]
    status, _, err = run(args, capsys)
    assert status == errors.NotElfError.exit_code and err.count("\n") == 1 and words in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "m.ko",
            "xz",
            "xz-compressed, but the name does not end in .xz (kmod and the kernel choose by "
            "the name)",
        ),
        ("m.ko.zst", "plain", "named .zst but the content is not compressed"),
        ("m.ko.gz", "xz", "named .gz but the content is xz-compressed"),
        ("m.ko.xz", "zstd", "named .xz but the content is zstd-compressed"),
    ],
)
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_name_and_content_must_agree(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str,
    message: str,
    command: str,
) -> None:
    elf = lzma.decompress(XZ_MODULE.read_bytes())
    data = {
        "xz": XZ_MODULE.read_bytes(),
        "plain": elf,
        "zstd": zstandard.ZstdCompressor().compress(elf),
    }[content]
    src = tmp_path / name
    src.write_bytes(data)
    extra = ["--strip-signature", *TARGET, "-o", str(tmp_path / "o.ko")]
    status, _, err = run([command, str(src), *(extra if command == "convert" else [])], capsys)
    assert status == errors.NotElfError.exit_code
    assert err == f"klp-harness: {src}: {message}\n"
    assert not (tmp_path / "o.ko").exists()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _streams() -> dict[str, bytes]:
    elf = lzma.decompress(XZ_MODULE.read_bytes())
    return {
        ".xz": XZ_MODULE.read_bytes(),
        ".zst": zstandard.ZstdCompressor(write_checksum=True).compress(elf),
        ".gz": gzip.compress(elf),
    }


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".gz"])
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: _flip(d, len(d) - 12), "corrupt"),  # the check value / CRC / checksum
        (lambda d: d + b"garbage", "other data after the"),
    ],
)
def test_corrupt_stream_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    damage: Callable[[bytes], bytes],
    words: str,
) -> None:
    src = tmp_path / f"m.ko{suffix}"
    src.write_bytes(damage(_streams()[suffix]))
    for command in (["inspect", str(src)], ["convert", str(src), *TARGET, "-i"]):
        status, _, err = run(command, capsys)
        assert status == errors.NotElfError.exit_code, err
        assert err.count("\n") == 1 and err.startswith(f"klp-harness: {src}: ")
        assert "internal error" not in err
        if words != "corrupt":
            assert words in err
    assert src.read_bytes() == damage(_streams()[suffix])


@pytest.mark.parametrize("kind", ["xz", "zstd", "gzip"])
def test_decompression_stops_at_the_limit(kind: str) -> None:
    """A small file that inflates to far more than allowed: refused after `limit` bytes."""
    bomb = compressed.compress([bytes(64 << 20)], kind)
    assert sum(map(len, bomb)) < 100_000
    with pytest.raises(CompressionError, match="more than the 1048576 bytes allowed"):
        decompress(b"".join(bomb), kind, "bomb", 1 << 20)


def test_module_limit_applies_to_the_decompressed_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(elfread, "MODULE_LIMIT", 10_000)  # the module is 15,112 bytes
    status, _, err = run(["inspect", str(XZ_MODULE)], capsys)
    assert status == errors.NotElfError.exit_code
    assert err == f"klp-harness: {XZ_MODULE}: decompresses to more than the 10000 bytes allowed\n"


@pytest.mark.parametrize("kind", ["xz", "zstd", "gzip"])
def test_compress_round_trips(kind: str) -> None:
    data = lzma.decompress(XZ_MODULE.read_bytes())
    packed = b"".join(compressed.compress([data[:100], memoryview(data)[100:]], kind))
    assert compressed.kind_of_data(packed) == kind
    assert decompress(packed, kind, "x", len(data)) == data


def test_xz_dictionary_past_the_memory_limit_is_refused() -> None:
    """An xz block header that asks for a 4 GiB dictionary (a few bytes can): refused by the
    decoder's memory limit, not allocated."""
    data = b"".join(compressed.compress([b"hello" * 1000], "xz"))
    size = (data[12] + 1) * 4  # the block header after the 12-byte stream header
    header = bytearray(data[12 : 12 + size])
    at = header.find(b"\x21\x01")  # the LZMA2 filter and its one property byte
    header[at + 2] = 40  # dictionary 4 GiB - 1
    header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
    with pytest.raises(CompressionError, match="Memory usage limit"):
        decompress(data[:12] + bytes(header) + data[12 + size :], "xz", "x", 1 << 20)
