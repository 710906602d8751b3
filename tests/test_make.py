"""`klp-harness make`: kbuild on a user's module directory, conversion in place.

The kbuild tests build tests/usermod (a Makefile, two C files, nr_processes,
saved_command_line and dmesg_restrict) for real against Debian's 6.1 headers fetched
through the harness, like tests/test_real_module.py. The target lookup of a host is tested
on that kernel's extracted package root, as if it were `/`.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from elfbuild import symbol_table
from elftools.elf.elffile import ELFFile

from harness.build.make import make_arguments, module_directory
from harness.build.modpost import undefined_by_module as modpost_undefined_by_module
from harness.build.target import Host, dir_target, host_target
from harness.cli.main import main
from harness.errors import BuildError, KernelError, NoLivepatchError, UsageError
from harness.kernels.acquire import acquire
from harness.kernels.kernel import Kernel
from harness.klp.inspect import inspect_module
from harness.klp.symbols import load_symvers
from harness.suite.transcript import load_transcript

USERMOD = Path(__file__).resolve().parent / "usermod"
UNEXPORTED = {"nr_processes", "saved_command_line", "dmesg_restrict"}
STRAY = """
extern int klp_harness_no_such_symbol(void);
int mymod_stray(void)
{
	return klp_harness_no_such_symbol();
}
"""


@pytest.fixture(scope="module")
def bookworm() -> Kernel:
    try:
        return acquire("debian:bookworm")
    except KernelError as err:
        pytest.fail(f"cannot get debian:bookworm: {err}", pytrace=False)


def _usermod(tmp_path: Path) -> Path:
    return Path(shutil.copytree(USERMOD, tmp_path / "usermod"))


def _versions(ko: Path) -> dict[str, int]:
    with open(ko, "rb") as handle:
        section = ELFFile(handle).get_section_by_name("__versions")
        data = section.data() if section is not None else b""
    out = {}
    for at in range(0, len(data), 64):  # struct modversion_info: u64 crc, char name[56]
        (crc,) = struct.unpack_from("<Q", data, at)
        out[data[at + 8 : at + 64].split(b"\0")[0].decode()] = crc
    return out


def _undefined(ko: Path) -> set[str]:
    with open(ko, "rb") as handle:
        symtab = symbol_table(ELFFile(handle))
        return {s.name for s in symtab.iter_symbols() if s["st_shndx"] == "SHN_UNDEF" and s.name}


# --- arguments and modpost's report ---------------------------------------------------------


@pytest.mark.parametrize("arg", ["M=/tmp/x", "-C", "-C/usr/src", "--directory=/x", "-fMakefile"])
def test_make_arguments_that_choose_the_build_are_refused(arg: str) -> None:
    with pytest.raises(UsageError, match="klp-harness sets -C"):
        make_arguments(["V=1", arg])


def test_make_arguments_pass_and_kcflags_are_merged() -> None:
    assert make_arguments(["V=1", "-j2", "KCFLAGS=-DX=1", "KCFLAGS=-g"]) == (
        ["V=1", "-j2"],
        ["-DX=1", "-g"],
    )


def test_modpost_reports_of_61_and_73_are_read_and_an_unknown_one_is_refused() -> None:
    log = (
        'WARNING: modpost: "nr_processes" [/tmp/m/mymod.ko] undefined!\n'
        "WARNING: modpost: mymod.ko: symbol 'saved_command_line' undefined!\n"
        "ERROR: modpost: sub/b.ko: symbol 'x' undefined!\n"
        "  MODPOST Module.symvers\n"
    )
    assert modpost_undefined_by_module(log) == {
        "/tmp/m/mymod.ko": ["nr_processes"],
        "mymod.ko": ["saved_command_line"],
        "sub/b.ko": ["x"],
    }
    with pytest.raises(BuildError, match="cannot read modpost's report"):
        modpost_undefined_by_module("WARNING: modpost: x.ko: 'y' is undefined!\n")


def test_module_directory_needs_a_plain_path_and_a_makefile(tmp_path: Path) -> None:
    spaced = tmp_path / "my module"
    spaced.mkdir()
    (spaced / "Makefile").write_text("obj-m += m.o\n")
    with pytest.raises(UsageError, match="kbuild needs a plain path"):
        module_directory(spaced)
    with pytest.raises(UsageError, match="no Kbuild or Makefile"):
        module_directory(tmp_path)


# --- the target: the host's kernel, a directory ---------------------------------------------


def test_no_headers_for_the_running_kernel_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "lib/modules/9.9.9-test").mkdir(parents=True)
    (tmp_path / "lib/modules/9.9.9-test/build").symlink_to("/usr/src/linux-headers-9.9.9")
    with pytest.raises(KernelError) as info:
        host_target(Host(root=tmp_path, running="9.9.9-test"))
    message = str(info.value)
    assert message.startswith("no headers for the running kernel 9.9.9-test: ")
    assert "/lib/modules/9.9.9-test/build -> /usr/src/linux-headers-9.9.9 (dangling)" in message
    assert "\n" not in message


def test_host_lookup_on_an_extracted_debian_root(
    bookworm: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's root as `/`: the absolute `build` link is followed inside the root, the
    placeholder System.map is skipped, and the table is recovered from /boot/vmlinuz-*
    into the (empty) cache: the same table the harness recovered when it fetched it."""
    root = bookworm.kallsyms.parent / "root"
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    host = Host(root=root, running=bookworm.release, proc_kallsyms=tmp_path / "none")
    target = host_target(host)
    assert target.kernel.headers == bookworm.headers.resolve()
    assert target.kernel.release == bookworm.release
    assert target.table.startswith(str(tmp_path / "cache" / "recovered"))
    assert Path(target.table).read_bytes() == bookworm.kallsyms.read_bytes()
    assert target.kernel.vmlinuz == bookworm.vmlinuz


def test_running_kernels_kallsyms_is_the_last_resort(
    bookworm: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))  # not a cached kernel
    root = tmp_path / "root"
    (root / f"lib/modules/{bookworm.release}").mkdir(parents=True)
    (root / f"lib/modules/{bookworm.release}/build").symlink_to(bookworm.headers)
    zeroed = tmp_path / "kallsyms-zeroed"
    zeroed.write_text("0000000000000000 T _text\n0000000000000000 T nr_processes\n")
    host = Host(root=root, running=bookworm.release, proc_kallsyms=zeroed)
    with pytest.raises(KernelError) as info:
        dir_target(bookworm.headers, host=host)
    message = str(info.value)
    assert message.startswith(f"no symbol table for {bookworm.release}: tried ")
    assert f"{bookworm.headers}/System.map (missing)" in message
    assert f"{root}/boot/vmlinuz-{bookworm.release} (missing)" in message
    assert f"{zeroed} (addresses zeroed" in message and "\n" not in message
    real = tmp_path / "kallsyms"
    shutil.copyfile(bookworm.kallsyms, real)
    host = Host(root=root, running=bookworm.release, proc_kallsyms=real)
    assert dir_target(bookworm.headers, host=host).table == str(real)
    other = Host(root=root, running="6.18.0-other", proc_kallsyms=real)
    with pytest.raises(KernelError, match=r"\(the running kernel is 6.18.0-other\)"):
        dir_target(bookworm.headers, host=other)


def test_a_cached_kernels_headers_use_its_recovered_table(bookworm: Kernel) -> None:
    target = dir_target(bookworm.headers, host=Host(running="none"))
    assert Path(target.table) == bookworm.kallsyms
    assert target.kernel.symvers == bookworm.headers / "Module.symvers"


def test_a_directory_that_is_not_a_build_tree_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all:\n")
    with pytest.raises(KernelError, match=r"not a kernel headers/build directory: no \.config, "):
        dir_target(tmp_path)


def test_a_kernel_without_livepatch_is_refused_before_kbuild(
    bookworm: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "build"
    (tree / "include/generated").mkdir(parents=True)
    (tree / "Makefile").write_text("$(error kbuild must not run)\n")
    config = bookworm.config.read_text().replace(
        "CONFIG_LIVEPATCH=y", "# CONFIG_LIVEPATCH is not set"
    )
    (tree / ".config").write_text(config)
    shutil.copyfile(bookworm.symvers, tree / "Module.symvers")
    shutil.copyfile(bookworm.kallsyms, tree / "System.map")
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-nolp"\n')
    mod = _usermod(tmp_path)
    argv = ["make", "-C", str(mod), "--kernel-dir", str(tree)]
    assert main(argv) == NoLivepatchError.exit_code
    err = capsys.readouterr().err
    assert "CONFIG_LIVEPATCH is not set" in err and "--allow-no-livepatch" in err
    assert not (mod / "mymod.ko").exists()


# --- real kbuild ----------------------------------------------------------------------------


def test_make_builds_converts_and_guards_usermod(
    bookworm: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _usermod(tmp_path)
    assert main(["make", "-C", str(mod), "--kernel", "debian:bookworm", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "mymod.ko: converted 3 symbols, 4 relocations "
        f"(guarded by klp_enable_patch, for {bookworm.release})\n"
    ), out
    ko, raw = mod / "mymod.ko", mod / "mymod.ko.unconverted"
    assert {r.name for r in inspect_module(ko)} == UNEXPORTED
    assert all(r.livepatch_symbol and r.sympos == 0 for r in inspect_module(ko))
    assert inspect_module(raw) == [] and _undefined(raw) >= UNEXPORTED
    # the guard: klp_enable_patch undefined, its CRC the one Module.symvers gives
    assert "klp_enable_patch" in _undefined(ko) and not UNEXPORTED & _undefined(ko)
    crc = load_symvers(bookworm.symvers)["klp_enable_patch"]
    assert _versions(ko)["klp_enable_patch"] == crc and "klp_enable_patch" not in _versions(raw)

    # Again, nothing changed: kbuild links nothing, the raw output is converted again.
    converted = ko.read_bytes()
    assert main(["make", "-C", str(mod), "--kernel", "debian:bookworm", "-q", "--", "V=1"]) == 0
    assert ko.read_bytes() == converted

    # --sympos reaches the converter; a name no module converts is said, not silently dropped.
    argv = ["make", "-C", str(mod), "--kernel", "debian:bookworm", "-q"]
    assert main([*argv, "--sympos", "nr_processes=1", "--sympos", "nope=2"]) == 0
    assert {(r.name, r.sympos) for r in inspect_module(ko) if r.name == "nr_processes"} == {
        ("nr_processes", 1)
    }
    assert "--sympos nope: no module built here converts it; ignored" in capsys.readouterr().err

    # A stray reference: the build fails naming it, and no unloadable mymod.ko is left.
    with open(mod / "mymod_data.c", "a") as handle:
        handle.write(STRAY)
    assert main(["make", "-C", str(mod), "--kernel", "debian:bookworm", "-q"]) == 22
    err = capsys.readouterr().err.strip()
    assert err == (
        "klp-harness: mymod.ko: klp_harness_no_such_symbol: undefined, neither exported by "
        f"{bookworm.name} nor in its symbol table, so not convertible "
        "(kbuild's output kept as mymod.ko.unconverted)"
    )
    assert not ko.exists() and "klp_harness_no_such_symbol" in _undefined(raw)


def test_make_shows_the_tail_of_a_failed_kbuild(
    bookworm: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _usermod(tmp_path)
    (mod / "mymod_data.c").write_text("this is not C;\n")
    assert main(["make", "-C", str(mod), "--kernel", "debian:bookworm", "-q"]) == 22
    err = capsys.readouterr().err
    assert err.startswith(f"klp-harness: kbuild failed for {mod} on {bookworm.name} (exit 2")
    assert "mymod_data.c:1" in err and "error:" in err


def test_make_refuses_m_in_make_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make", "-C", str(USERMOD), "--kernel", "debian:bookworm", "--", "M=/x"]) == 2
    assert "klp-harness sets -C" in capsys.readouterr().err


@pytest.mark.slow_build
def test_make_for_debian_7x_in_its_build_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trixie-backports (7.3): gcc-14 from a trixie build root, no MODVERSIONS, modpost's
    newer `mod.ko: symbol 'x' undefined!` report."""
    kernel = acquire("debian:trixie-backports")
    mod = _usermod(tmp_path)
    assert main(["make", "-C", str(mod), "--kernel", "debian:trixie-backports", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "mymod.ko: converted 3 symbols, 4 relocations "
        f"(guarded by klp_enable_patch, for {kernel.release})\n"
    ), out
    assert {r.name for r in inspect_module(mod / "mymod.ko")} == UNEXPORTED
    assert "klp_enable_patch" in _undefined(mod / "mymod.ko")


# --- in a guest -----------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.parametrize(
    "spec",
    [
        "debian:bookworm",
        pytest.param("debian:trixie-backports", marks=pytest.mark.slow_build),
    ],
)
def test_the_module_make_leaves_loads_and_passes_in_a_guest(spec: str, tmp_path: Path) -> None:
    """What `klp-harness make` left in the directory, loaded as it is and judged like any
    module (no splat, no taint beyond O/E, every klp relocation checked in the guest's
    memory, clean unload)."""
    kernel = acquire(spec)
    mod = _usermod(tmp_path)
    assert main(["make", "-C", str(mod), "--kernel", spec, "-q"]) == 0
    results = tmp_path / "results"
    argv = ["run", "--kernel", spec, "--module", str(mod), "--prebuilt", str(mod / "mymod.ko")]
    assert main([*argv, "--results", str(results), "-q"]) == 0
    (run_dir,) = results.glob("run-*")
    (kernel_result,) = json.loads((run_dir / "results.json").read_text())["kernels"]
    (module,) = kernel_result["modules"]
    assert (module["outcome"], module["reason"]) == ("pass", "")
    assert module["memory"].startswith("3 of 4 klp relocations verified in memory")
    assert module["toolchain"].startswith("prebuilt ")
    transcript = load_transcript(run_dir / "transcripts" / kernel.name / f"{mod.name}.json")
    loaded = " ".join(line for c in transcript.commands for line in c.kernel)
    assert "mymod: " in loaded and " processes, command line of " in loaded


HOST_SCRIPT = """exec >{out} 2>&1
set -x
# The guest's /usr is a writable overlay of the host's: install the headers as the package would.
mkdir -p /usr/src
ln -s {headers} /usr/src/linux-headers-$(uname -r)
readlink /lib/modules/$(uname -r)/build
cd {mod}
KLP_HARNESS_CACHE={cache} {harness} make -v
echo "make: $?"
{harness} inspect mymod.ko --system-map /proc/kallsyms
echo "inspect: $?"
insmod mymod.ko
echo "insmod: $?"
rmmod mymod
echo "rmmod: $?"
dmesg | grep 'mymod:'
echo "tainted: $(cat /proc/sys/kernel/tainted)"
"""


@pytest.mark.vm
@pytest.mark.slow_build
def test_make_for_the_running_kernel_inside_a_debian_61_guest(tmp_path: Path) -> None:
    """The host path for real: Debian's 6.1 booted on this machine's root (virtme-ng's default:
    read-only with writable overlays), its headers installed at /usr/src, and `klp-harness
    make` with no target option run there: /lib/modules/$(uname -r)/build, the symbol table
    from /proc/kallsyms (an empty cache: no recovered table to find), then insmod. Needs a
    host root whose gcc is the kernel's (gcc-12: a Debian bookworm host)."""
    import subprocess
    import sys

    from harness.build.toolchain import select
    from harness.vm.accel import Accel, choose_accel
    from harness.vm.boot import bootable_image, find_vng, vng_environment

    kernel = acquire("debian:bookworm")
    if select(kernel).kind != "host":
        pytest.fail("the host root has no gcc-12: the guest builds with the host's compiler")
    work = tmp_path / "work"
    mod = _usermod(work)
    out = work / "guest.out"
    harness = Path(sys.executable).parent / "klp-harness"
    script = work / "run.sh"
    script.write_text(
        HOST_SCRIPT.format(
            out=out, headers=kernel.headers, mod=mod, cache=work / "cache", harness=harness
        )
    )
    vng = find_vng()
    cmd = [vng, "--run", str(bootable_image(kernel)), "--force-9p", "--rwdir", str(work)]
    cmd += ["--exec", f"sh {script}"]
    if choose_accel(kernel.vmlinuz).accel == Accel.TCG:
        cmd.append("--disable-kvm")
    subprocess.run(
        cmd, env=vng_environment(vng), stdin=subprocess.DEVNULL, capture_output=True, timeout=900
    )
    text = out.read_text()
    assert "klp-harness: symbol table: /proc/kallsyms" in text, text
    assert "mymod.ko: converted 3 symbols, 4 relocations (guarded by klp_enable_patch, " in text
    for status in ("make: 0", "inspect: 0", "insmod: 0", "rmmod: 0"):
        assert status in text, text
    assert " processes, command line of " in text and "tainted: 12288" in text, text  # O, E


@pytest.mark.slow_build
def test_make_converts_an_export_restricted_to_other_modules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """7.3 exports kptr_restrict only to printf_kunit (EXPORT_SYMBOL_FOR_MODULES): modpost
    names it in a namespace warning, not `undefined!`; make converts it all the same."""
    mod = tmp_path / "restricted"
    shutil.copytree(Path(__file__).parent.parent / "modules" / "restricted_export", mod)
    (mod / "expect.toml").unlink()
    argv = ["make", "-C", str(mod), "--kernel", "debian:trixie-backports", "-q"]
    assert main(argv) == 0
    assert "klp_restricted_export.ko: converted 1 symbols" in capsys.readouterr().out
    converted = inspect_module(mod / "klp_restricted_export.ko")
    assert {r.name for r in converted} == {"kptr_restrict"}
