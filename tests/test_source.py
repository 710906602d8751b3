"""Kernels built from source: spec syntax, fragments, the survival check (synthetic and on the
real Kconfig of linux-source-6.1), and real builds and boots (marker source_kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import KernelError
from harness.kernels.kernel import parse_config, read_config
from harness.kernels.source import (
    evaluate,
    explain_lost,
    kconfig_depends,
    lost_options,
    requested,
)
from harness.kernels.spec import fragment_paths, load_declared, parse_spec
from harness.paths import CONFIGS_DIR


@pytest.mark.parametrize(
    ("text", "ref", "config"),
    [
        ("source:6.1:livepatch", "6.1", "livepatch"),
        ("source:7.3:no-kallsyms-all", "7.3", "no-kallsyms-all"),
        ("source:/src/linux:sig-force", "/src/linux", "sig-force"),
    ],
)
def test_source_specs(text: str, ref: str, config: str) -> None:
    spec = parse_spec(text)
    assert (spec.kind, spec.ref, spec.config, spec.text) == ("source", ref, config, text)
    assert (spec.path is not None) == ref.startswith("/")


def test_source_spec_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_spec("source:./linux:livepatch")
    assert spec.path == tmp_path / "linux" and spec.text == f"source:{tmp_path}/linux:livepatch"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("source:6.1", "expected source:X.Y:CONFIG"),
        ("source:6.1:", "expected source:X.Y:CONFIG"),
        ("source:v6.6:livepatch", "neither a version X.Y nor a path"),
        ("source:6.1.3:livepatch", "neither a version X.Y nor a path"),
    ],
)
def test_bad_source_specs(text: str, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        parse_spec(text)


def test_declared_source_kernels_have_fragments() -> None:
    decls = [d for d in load_declared() if d.spec.startswith("source:")]
    assert {parse_spec(d.spec).config for d in decls} >= {
        "livepatch", "no-livepatch", "sig-force", "no-kallsyms-all",
    }  # fmt: skip
    for decl in decls:
        spec = parse_spec(decl.spec)
        base, own = fragment_paths(spec.config, spec.arch)
        assert base.name == "base.config" and own.is_file()


def test_unknown_config_lists_known() -> None:
    with pytest.raises(KernelError, match=r"no config 'nope' .*known: .*livepatch"):
        fragment_paths("nope")
    with pytest.raises(KernelError, match="no config 'base'"):
        fragment_paths("base")


def test_requested_later_fragment_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text('CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_S="x y"\n# comment\n')
    b.write_text("CONFIG_B=n\nCONFIG_C=y\n")
    assert requested([a, b]) == {
        "CONFIG_A": "y",
        "CONFIG_B": "n",
        "CONFIG_C": "y",
        "CONFIG_S": "x y",
    }


def test_no_kallsyms_all_fragment_is_honest() -> None:
    want = requested(fragment_paths("no-kallsyms-all"))
    assert want["CONFIG_KALLSYMS_ALL"] == "n" and want["CONFIG_LIVEPATCH"] == "n"


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("A", 2), ("B", 0), ("!B", 2), ("A && B", 0), ("A || B", 2), ("M", 1),
        ("A && (B || !C)", 2), ("S = \"x\"", 2), ("S != \"x\"", 0), ("64BIT", 2),
    ],
)  # fmt: skip
def test_evaluate(expr: str, value: int) -> None:
    config = {
        "CONFIG_A": "y",
        "CONFIG_B": "n",
        "CONFIG_M": "m",
        "CONFIG_S": "x",
        "CONFIG_64BIT": "y",
    }
    assert evaluate(expr, config) == value


def test_explain_lost_names_unmet_dependency(tmp_path: Path) -> None:
    (tmp_path / "Kconfig").write_text(
        "config FEATURE\n\tbool \"f\"\n\tdepends on BASE && !OFF\n\tdepends on OTHER\n"
        "if OUTER\nconfig INNER\n\tbool\nendif\n"
    )  # fmt: skip
    assert kconfig_depends(tmp_path, "CONFIG_FEATURE") == ["BASE && !OFF", "OTHER"]
    assert kconfig_depends(tmp_path, "CONFIG_INNER") == ["OUTER"]
    final = {"CONFIG_BASE": "y", "CONFIG_OTHER": "n", "CONFIG_FEATURE": "n", "CONFIG_INNER": "n"}
    want = {"CONFIG_FEATURE": "y", "CONFIG_INNER": "y", "CONFIG_BASE": "y"}
    assert lost_options(want, final) == {"CONFIG_FEATURE": "n", "CONFIG_INNER": "n"}
    lines, ignored = explain_lost(tmp_path, {**want, "CONFIG_GONE": "y"}, final)
    assert ignored == [
        "CONFIG_GONE=y requested, final .config has CONFIG_GONE=n; "
        "not defined in this kernel's Kconfig, ignored"
    ]
    assert lines == [
        "CONFIG_FEATURE=y requested, final .config has CONFIG_FEATURE=n; unmet: depends on OTHER",
        "CONFIG_INNER=y requested, final .config has CONFIG_INNER=n; unmet: depends on OUTER",
    ]


# -- on the real source ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_61() -> Path:
    from harness.kernels.source import fetch_source

    return fetch_source("6.1").path


@pytest.mark.source_kernel
def test_real_kconfig_names_unmet_dependency(source_61: Path, tmp_path: Path) -> None:
    from harness.kernels.source import configure

    frag = tmp_path / "broken.config"
    # LIVEPATCH without KALLSYMS_ALL (what a naive no-kallsyms-all would ask for), and
    # MODULE_SIG_FORCE without MODULE_SIG.
    frag.write_text("CONFIG_KALLSYMS_ALL=n\nCONFIG_LIVEPATCH=y\nCONFIG_MODULE_SIG_FORCE=y\n")
    with pytest.raises(KernelError) as err:
        configure(
            source_61, tmp_path / "obj", [CONFIGS_DIR / "base.config", frag], tmp_path / "log"
        )
    text = str(err.value)
    assert "did not survive" in text
    assert "CONFIG_LIVEPATCH=y requested, final .config has CONFIG_LIVEPATCH=n" in text
    assert "unmet: depends on KALLSYMS_ALL" in text
    assert "CONFIG_MODULE_SIG_FORCE=y requested" in text and "depends on MODULE_SIG" in text
    # The shipped fragments themselves survive.
    final = configure(
        source_61, tmp_path / "ok", fragment_paths("no-kallsyms-all"), tmp_path / "log2"
    )
    assert final["CONFIG_KALLSYMS_ALL"] == "n" and final.get("CONFIG_LIVEPATCH", "n") == "n"
    assert read_config(tmp_path / "ok" / ".config")["CONFIG_9P_FS"] == "y"


@pytest.mark.source_kernel
@pytest.mark.vm
def test_build_and_boot_livepatch(tmp_path: Path) -> None:
    """source:6.1:livepatch builds (or comes from the cache), boots, and its offline symbol
    table is the guest's /proc/kallsyms (same names and order, one KASLR shift)."""
    from harness.kernels.acquire import acquire
    from harness.vm.boot import boot

    kernel = acquire("source:6.1:livepatch")
    assert kernel.name == "source-6.1-livepatch" and kernel.release.endswith("-klp-livepatch")
    assert kernel.config_value("LIVEPATCH") == "y" and kernel.symvers.is_file()
    assert kernel.modules_dir.is_dir() and kernel.vmlinuz.name == "bzImage"
    with boot(kernel, tmp_path / "console.log") as guest:
        assert guest.run("uname -r").output == f"{kernel.release}\n"
        assert guest.run("test -d /sys/kernel/livepatch").ok
        # vmlinux lines; kallsyms-finder leaves out the few "?" linker marks (__nosave_begin)
        guest_lines = [
            ln for ln in guest.kallsyms().splitlines() if "[" not in ln and ln.split()[1] != "?"
        ]
        offline = kernel.kallsyms.read_text().splitlines()
        assert [ln.split()[2] for ln in guest_lines] == [ln.split()[2] for ln in offline]
        shifts = {
            int(g.split()[0], 16) - int(o.split()[0], 16)
            for g, o in zip(guest_lines, offline, strict=True)
        }
        assert len(shifts) == 1


@pytest.mark.source_kernel
@pytest.mark.vm
def test_sig_force_refuses_unsigned_loads_signed(tmp_path: Path) -> None:
    """source:6.1:sig-force: the built (converted, signed) module loads; the same module
    unsigned (kbuild's raw .ko is not signed: no MODULE_SIG_ALL for M= builds) is refused."""
    from harness.build.modules import build_module, builds_dir
    from harness.build.sign import is_signed, strip_signature
    from harness.kernels.acquire import acquire
    from harness.suite.samples import load_sample
    from harness.vm.boot import boot

    kernel = acquire("source:6.1:sig-force")
    assert kernel.config_value("MODULE_SIG_FORCE") == "y"
    built = build_module(kernel, load_sample(Path(__file__).parent.parent / "modules/kernel_clone"))
    assert is_signed(built.ko)
    with boot(kernel, tmp_path / "console.log", modules=builds_dir(kernel)) as guest:
        # The guest sees its shared dir at /klp/share: put the unsigned copy there.
        unsigned = guest.share_dir / built.ko.name
        strip_signature(built.ko, unsigned)
        assert not is_signed(unsigned)
        refused = guest.run(f"insmod /klp/share/{built.ko.name}")
        assert refused.status != 0 and "Key was rejected" in refused.output
        assert "Loading of unsigned module is rejected" in guest.run("dmesg").output
        assert guest.run(f"insmod {guest.path(built.ko)}").ok
        assert guest.run(f"rmmod {built.module}").ok


def test_failed_build_reports_last_error_lines(tmp_path: Path) -> None:
    from harness.kernels.source import error_tail, run_logged

    log = tmp_path / "build.log"
    log.write_text("  CC      a.o\n")
    script = (
        "echo '  CC      b.o'; echo 'b.c:3:1: error: expected ;' >&2; "
        "echo 'make: *** [b.o] Error 1'; exit 2"
    )
    with pytest.raises(KernelError) as err:
        run_logged(["sh", "-c", script], log)
    assert f"(log: {log})" in str(err.value)
    assert str(err.value).endswith("b.c:3:1: error: expected ;\nmake: *** [b.o] Error 1")
    assert "  CC      a.o" in log.read_text()  # the log is kept, appended to
    assert error_tail(log, 1) == "make: *** [b.o] Error 1"


def test_check_system_map_counts_like_kinds(tmp_path: Path) -> None:
    from harness.kernels.source_build import check_system_map

    table = tmp_path / "kallsyms"
    table.write_text(
        "ffffffff81000000 t serial_in\nffffffff81000010 t serial_in\nffffffff81000020 T f\n"
    )
    smap = tmp_path / "System.map"
    # Without KALLSYMS_ALL the data symbol of the same name is in System.map only: not counted.
    smap.write_text(table.read_text() + "ffffffff82000000 d serial_in\n")
    assert check_system_map(table, smap) == []
    smap.write_text(table.read_text() + "ffffffff81000030 t serial_in\n")
    assert check_system_map(table, smap) == ["serial_in"]


def test_one_config_parser_for_fragments_and_configs(tmp_path: Path) -> None:
    """A fragment and a final .config are read by the same rule (kernel.parse_config)."""
    text = (
        '  CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_CC_VERSION_TEXT="gcc-12 (Debian) 12.2.0"\n'
        'CONFIG_EMPTY=""\nCONFIG_HEX=0x10\n# comment\nCONFIG_A=m\n'
    )
    path = tmp_path / "x.config"
    path.write_text(text)
    want = {
        "CONFIG_A": "m",
        "CONFIG_B": "n",
        "CONFIG_CC_VERSION_TEXT": "gcc-12 (Debian) 12.2.0",
        "CONFIG_EMPTY": "",
        "CONFIG_HEX": "0x10",
    }
    assert parse_config(text) == read_config(path) == requested([path]) == want
