"""The livepatch guard (harness.klp.guard): a converted module refuses to load on a kernel
without CONFIG_LIVEPATCH, and carries the target's CRC so modversions kernels stay silent.

The real module is kernel_clone built by kbuild against Debian 6.1's headers (modversions on);
its __versions is read back by kmod's own `modprobe --dump-modversions`. The VM proofs (the
refusal on source:6.1:no-livepatch, silence on the livepatch kernels) are the sample suite's
`LIVEPATCH = "n"` cases and tests/test_guard_vm.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from elfbuild import symbol_table
from elftools.elf.elffile import ELFFile

from harness.build.guard import require_livepatch
from harness.build.modules import BuiltModule
from harness.cli.main import main
from harness.errors import LivepatchGuardError, NoLivepatchError
from harness.kernels.kernel import Kernel
from harness.klp.convert import convert_module
from harness.klp.elfread import ElfImage
from harness.klp.guard import GUARD_SYMBOL, guard_of
from harness.klp.symbols import SymbolTable, load_symvers


def _versions(ko: Path) -> dict[str, int]:
    """`modprobe --dump-modversions`: kmod's reading of the module's __versions."""
    out = subprocess.run(
        ["modprobe", "--dump-modversions", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    return {name: int(crc, 16) for crc, name in (line.split("\t") for line in out.splitlines())}


def _undefined(ko: Path) -> list[str]:
    with open(ko, "rb") as handle:
        table = symbol_table(ELFFile(handle))
        return [s.name for s in table.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"]


def test_real_module_gets_the_guard_with_the_targets_crc(
    klp_kernel: Kernel, klp_module: Callable[[str], BuiltModule]
) -> None:
    built = klp_module("kernel_clone")
    crc = load_symvers(klp_kernel.symvers)[GUARD_SYMBOL]
    before, after = _versions(built.raw_ko), _versions(built.ko)
    assert GUARD_SYMBOL not in before
    assert after == {**before, GUARD_SYMBOL: crc}  # one entry more, kbuild's kept as they were
    kept = [n for n in _undefined(built.raw_ko) if n not in ("kernel_clone", "do_exit")]
    assert _undefined(built.ko) == [*kept, GUARD_SYMBOL]  # appended after kbuild's
    assert guard_of(ElfImage.load(built.ko)) and not guard_of(ElfImage.load(built.raw_ko))
    # readelf reads the result without a warning
    proc = subprocess.run(["readelf", "-a", "-W", str(built.ko)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Warning" not in proc.stderr


def _relicensed(raw: Path, out: Path, license_text: bytes) -> Path:
    """A copy of a real module with its MODULE_LICENSE string replaced (same length)."""
    data = raw.read_bytes()
    old = b"license=GPL\0"
    assert data.count(old) == 1
    new = b"license=" + license_text + b"\0"
    assert len(new) == len(old)
    out.write_bytes(data.replace(old, new))
    return out


def test_guard_refuses_a_proprietary_license_and_can_be_left_out(
    klp_kernel: Kernel, klp_module: Callable[[str], BuiltModule], tmp_path: Path
) -> None:
    built = klp_module("kernel_clone")
    table = SymbolTable.load(klp_kernel.kallsyms)
    exports = load_symvers(klp_kernel.symvers)
    closed = _relicensed(built.raw_ko, tmp_path / "closed.ko", b"BSD")
    with pytest.raises(LivepatchGuardError) as err:
        convert_module(closed, tmp_path / "o.ko", symtab=table, exports=exports, versions=exports)
    assert 'MODULE_LICENSE("BSD")' in str(err.value) and "--no-livepatch-guard" in str(err.value)
    assert not (tmp_path / "o.ko").exists()
    report = convert_module(
        closed, tmp_path / "o.ko", symtab=table, exports=exports, versions=exports, guard=False
    )
    assert report.guard is None and GUARD_SYMBOL not in _versions(tmp_path / "o.ko")
    assert GUARD_SYMBOL not in _undefined(tmp_path / "o.ko")


def test_versions_needs_the_crc_and_a_kernel_without_livepatch_gets_no_entry(
    klp_kernel: Kernel, klp_module: Callable[[str], BuiltModule], tmp_path: Path
) -> None:
    built = klp_module("kernel_clone")
    table = SymbolTable.load(klp_kernel.kallsyms)
    exports = load_symvers(klp_kernel.symvers)
    out = tmp_path / "o.ko"
    with pytest.raises(LivepatchGuardError, match=r"Module\.symvers"):
        convert_module(built.raw_ko, out, symtab=table, exports=exports)
    # a Module.symvers without klp_enable_patch is a kernel without livepatch: there the
    # symbol is not found before any version is compared, so no entry is written
    without = {k: v for k, v in exports.items() if k != GUARD_SYMBOL}
    report = convert_module(built.raw_ko, out, symtab=table, exports=without, versions=without)
    assert report.guard == GUARD_SYMBOL and GUARD_SYMBOL in _undefined(out)
    assert GUARD_SYMBOL not in _versions(out)
    # converting the output again converts nothing, the guard symbol least of all
    again = convert_module(out, tmp_path / "again.ko", symtab=table, exports=without)
    assert again.already_converted and not again.converted


def test_convert_cli_names_the_guard(
    klp_kernel: Kernel,
    klp_module: Callable[[str], BuiltModule],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    built = klp_module("kernel_clone")
    out = tmp_path / "kc.ko"
    assert main(["convert", str(built.raw_ko), "-o", str(out), "--kernel", klp_kernel.spec]) == 0
    assert "guarded by klp_enable_patch" in capsys.readouterr().out
    assert out.read_bytes() == built.ko.read_bytes()  # the CLI and the build agree
    assert main(["inspect", str(out), "--kernel", klp_kernel.spec]) == 0
    assert "livepatch guard: klp_enable_patch (refused at load" in capsys.readouterr().out
    assert main(["inspect", str(built.raw_ko)]) == 0
    assert "no klp relocations" in capsys.readouterr().out


def _kernel(tmp_path: Path, config: str) -> Kernel:
    (tmp_path / "config").write_text(config)
    return Kernel(
        spec="source:6.1:no-livepatch",
        name="source-6.1-no-livepatch",
        release="6.1.0",
        package_version="x",
        vmlinuz=tmp_path,
        modules_dir=tmp_path,
        config=tmp_path / "config",
        headers=tmp_path,
        symvers=tmp_path,
        kallsyms=tmp_path,
    )


def test_a_kernel_without_livepatch_is_refused_unless_insisted(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path, "# CONFIG_LIVEPATCH is not set\n")
    with pytest.raises(NoLivepatchError) as err:
        require_livepatch(kernel, allow=False)
    assert "CONFIG_LIVEPATCH is not set" in str(err.value)
    assert "--allow-no-livepatch" in str(err.value) and err.value.exit_code == 14
    require_livepatch(kernel, allow=True)
    require_livepatch(_kernel(tmp_path, "CONFIG_LIVEPATCH=y\n"), allow=False)


def test_a_missing_or_wrong_symbol_version_is_a_splat() -> None:
    """The loader's modversions complaints fail a step: the guard must not cause them."""
    from harness.vm.dmesg import scan_splats

    lines = [
        "klp_kernel_clone: no symbol version for klp_enable_patch",
        "klp_kernel_clone: disagrees about version of symbol klp_enable_patch",
        "klp_kernel_clone: Unknown symbol klp_enable_patch (err -2)",
    ]
    assert [s.kind for s in scan_splats(lines)] == ["symbol version", "symbol version"]


@pytest.mark.source_kernel
@pytest.mark.vm
def test_the_guard_refuses_what_would_oops_without_livepatch(tmp_path: Path) -> None:
    """source:6.1:no-livepatch: the user's module (no address checks of its own), converted
    with the guard, is refused at insmod with the loader's line; the same module converted
    without it loads with its klp relocations left at 0 and oopses in its init."""
    from harness.build.modules import build_module, builds_dir
    from harness.kernels.acquire import acquire
    from harness.suite.samples import find_sample
    from harness.vm.boot import boot
    from harness.vm.dmesg import messages, scan_splats

    kernel = acquire("source:6.1:no-livepatch")
    assert kernel.config_value("LIVEPATCH") == "n"
    usermod = Path(__file__).parent / "usermod"
    built = build_module(kernel, find_sample(str(usermod)), allow_no_livepatch=True)
    exports = load_symvers(kernel.symvers)
    assert GUARD_SYMBOL not in exports
    with boot(kernel, tmp_path / "console.log", modules=builds_dir(kernel)) as guest:
        bare = guest.share_dir / "mymod.ko"
        table = SymbolTable.load(kernel.kallsyms)
        convert_module(built.raw_ko, bare, symtab=table, exports=exports, guard=False)
        refused = guest.run(f"insmod {guest.path(built.ko)}")
        assert refused.status != 0 and "unknown symbol in module" in refused.output
        lines = messages(guest.run("dmesg").output)
        assert "mymod: Unknown symbol klp_enable_patch (err -2)" in lines
        assert not scan_splats(lines)
        crashed = guest.run("dmesg -C; insmod /klp/share/mymod.ko", timeout=60)
        assert crashed.status != 0
        splats = scan_splats(messages(guest.run("dmesg").output))
        assert {"general protection fault", "Oops"} & {s.kind for s in splats}, splats


def test_the_oracle_accepts_exactly_the_guard_entry(
    klp_kernel: Kernel, klp_module: Callable[[str], BuiltModule]
) -> None:
    """The independent loader simulation (tests/oracle) loads the real converted module with
    the guard's __versions entry; a wrong CRC in it is a difference."""
    from oracle.compare import SECTIONS, compare
    from oracle.loader import KernelTable

    built = klp_module("kernel_clone")
    table = KernelTable(klp_kernel.kallsyms.read_text())
    crc = load_symvers(klp_kernel.symvers)[GUARD_SYMBOL]
    exports = frozenset(load_symvers(klp_kernel.symvers)) - {"kernel_clone", "do_exit"}
    original, converted = built.raw_ko.read_bytes(), built.ko.read_bytes()
    verdict = compare(original, converted, table, exports, 7, guard_crc=crc)
    assert verdict.identical, verdict.differences
    assert verdict.klp_relocations == 4
    wrong = compare(original, converted, table, exports, 7, guard_crc=crc ^ 1)
    assert [d.kind for d in wrong.differences] == [SECTIONS]
