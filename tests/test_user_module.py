"""A user's module as it is: a Makefile or Kbuild with obj-m, several C files, no expect.toml.

Unit tests (no VM): obj-m parsing, the default expectation, `init-expect`'s file. The `vm`
tests run tests/usermod (a Makefile, two C files, an unexported function and unexported data,
no expect.toml) through `klp-harness run --module` and through the pytest fixtures.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.build.modules import build_name
from harness.cli.init_expect import Seen, line_regex, render
from harness.cli.main import main
from harness.errors import ExpectationError
from harness.kernels.kernel import Kernel
from harness.suite.kbuild import kbuild_modules, parse_obj_m
from harness.suite.results import NA, PASS, KernelResult, ModuleResult, Outcome, RunResults
from harness.suite.samples import default_samples, find_sample, find_samples, load_sample
from harness.suite.transcript import Command, Transcript, transcript_file

USERMOD = Path(__file__).resolve().parent / "usermod"
INSMOD_LINES = (
    "mymod: loading out-of-tree module taints kernel.",
    "mymod: module verification failed: signature and/or required key missing - tainting kernel",
    "mymod: 57 processes, command line of 656 characters, dmesg_restrict=1",
)


def fake_kernel(tmp_path: Path, release: str, config: str) -> Kernel:
    cfg = tmp_path / f"config-{release}"
    cfg.write_text(config)
    p = tmp_path
    return Kernel("t", f"t-{release}", release, "0", p, p, cfg, p, p, p)


def module_dir(parent: Path, name: str, makefile: str, kbuild: str | None = None) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    (d / "Makefile").write_text(makefile)
    if kbuild is not None:
        (d / "Kbuild").write_text(kbuild)
    (d / "a.c").write_text("/* a */\n")
    return d


# --- obj-m ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "modules"),
    [
        ("obj-m += mymod.o\nmymod-objs := a.o b.o\n", ("mymod",)),
        ("obj-m := x.o\nx-y := a.o b.o\n", ("x",)),
        ("obj-m = one.o two-dash.o\n", ("one", "two-dash")),
        ("obj-m += a.o \\\n\tb.o # and c.o\nobj-m += a.o\n", ("a", "b")),
        ("obj-m := old.o\nobj-m := new.o\n", ("new",)),
        ("MODULE := drv\nobj-m := $(MODULE).o\n", ("drv",)),
        ("NAME = drv2\nobj-m += ${NAME}.o\n", ("drv2",)),
        (
            "ifneq ($(KERNELRELEASE),)\nobj-m := k.o\nelse\nKDIR ?= /lib/modules/$(shell "
            "uname -r)/build\nall:\n\t$(MAKE) -C $(KDIR) M=$(PWD) modules\nendif\n",
            ("k",),
        ),
    ],
)
def test_obj_m_as_out_of_tree_modules_write_it(text: str, modules: tuple[str, ...]) -> None:
    assert parse_obj_m(text, "Makefile") == modules


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("obj-m += $(shell touch PWNED).o\n", "obj-m lists '$(shell'"),
        ("obj-m += sub/x.o\n", "obj-m lists 'sub/x.o'"),
        ("obj-m += $(UNSET).o\n", "obj-m lists '$(UNSET).o'"),
        ("obj-y += x.o\n", "no `obj-m += <name>.o` line"),
    ],
)
def test_obj_m_we_cannot_read_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ExpectationError) as info:
        parse_obj_m(text, "dir/Makefile")
    assert str(info.value).startswith("dir/Makefile: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_kbuild_is_read_before_the_makefile(tmp_path: Path) -> None:
    d = module_dir(tmp_path, "m", "obj-m += from_makefile.o\n", kbuild="obj-m := from_kbuild.o\n")
    assert kbuild_modules(d) == ("from_kbuild",)
    assert kbuild_modules(USERMOD) == ("mymod",)


def test_a_directory_without_kbuild_or_makefile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExpectationError, match=r"empty: no expect.toml, Kbuild or Makefile"):
        find_samples(str(tmp_path / "empty"))


# --- the default expectation ----------------------------------------------------------------


def test_usermod_gets_the_default_expectation(tmp_path: Path) -> None:
    (sample,) = find_samples(str(USERMOD))
    assert (sample.name, sample.module, sample.path) == ("usermod", "mymod", USERMOD)
    on_61 = sample.expectation(fake_kernel(tmp_path, "6.1.0", "CONFIG_LIVEPATCH=y\n"))
    assert (on_61.outcome, on_61.taint, on_61.checks, on_61.dmesg) == ("pass", "", (), ())
    no_lp_config = "CONFIG_KALLSYMS_ALL=y\n# CONFIG_LIVEPATCH is not set\n"
    no_lp = sample.expectation(fake_kernel(tmp_path, "6.1.0", no_lp_config))
    # without livepatch: the guard's refusal, named by the loader's own line
    assert no_lp.outcome == "refused" and "CONFIG_LIVEPATCH" in no_lp.reason
    assert no_lp.dmesg == (r"mymod: Unknown symbol klp_enable_patch \(err -2\)",)
    # without KALLSYMS_ALL (so without LIVEPATCH): kallsyms has no data to convert against
    no_all = sample.expectation(
        fake_kernel(tmp_path, "6.1.0", "# CONFIG_KALLSYMS_ALL is not set\n")
    )
    assert no_all.outcome == "not-applicable" and "CONFIG_KALLSYMS_ALL" in no_all.reason
    old = sample.expectation(fake_kernel(tmp_path, "5.4.0", "CONFIG_LIVEPATCH=y\n"))
    assert old.outcome == "not-applicable" and "5.8" in old.reason
    assert find_sample(str(USERMOD)) == sample


def test_dot_is_named_after_the_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(USERMOD)
    assert [s.name for s in find_samples(".")] == ["usermod"]


def test_a_livepatch_module_may_taint_k_and_is_disabled_before_rmmod(tmp_path: Path) -> None:
    d = module_dir(tmp_path, "lp", "obj-m := my-patch.o\n")
    (d / "a.c").write_text('MODULE_INFO(livepatch, "Y");\n')
    (sample,) = default_samples(d)
    exp = sample.expectation(fake_kernel(tmp_path, "5.4.0", "CONFIG_LIVEPATCH=y\n"))
    assert exp.outcome == "pass" and exp.taint == "K"
    assert "/sys/kernel/livepatch/my_patch" in exp.checks[-1].cmd
    assert "echo 0 > $p/enabled" in exp.checks[-1].cmd


def test_several_modules_are_one_sample_each(tmp_path: Path) -> None:
    d = module_dir(tmp_path, "two", "obj-m += a.o\nobj-m += b.o\n")
    assert [(s.name, s.module) for s in find_samples(str(d))] == [("two.a", "a"), ("two.b", "b")]
    with pytest.raises(ExpectationError, match=r"builds 2 modules \(a, b\)"):
        find_sample(str(d))


def test_expect_toml_still_wins_and_module_comes_from_obj_m(tmp_path: Path) -> None:
    d = module_dir(tmp_path, "m", "obj-m := only.o\n")
    (d / "expect.toml").write_text('[[expect]]\noutcome = "refused"\n')
    (sample,) = find_samples(str(d))
    assert sample.module == "only" and sample.cases[0][1].outcome == "refused"


def test_a_users_directory_never_shares_a_samples_build_dir(tmp_path: Path) -> None:
    """`kernel_clone/` of a user once built into the sample kernel_clone's build directory:
    one run with both loaded whichever was built last for both."""
    theirs = tmp_path / "kernel_clone"
    shutil.copytree(USERMOD.parent.parent / "modules" / "kernel_clone", theirs)
    ours = load_sample(USERMOD.parent.parent / "modules" / "kernel_clone")
    assert build_name(ours) == "kernel_clone"
    name = build_name(load_sample(theirs))
    assert name != "kernel_clone" and re.fullmatch(r"kernel_clone-[0-9a-f]{12}", name)


def test_run_refuses_two_modules_of_one_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = module_dir(tmp_path / "a", "same", "obj-m := x.o\n")
    b = module_dir(tmp_path / "b", "same", "obj-m := y.o\n")
    assert main(["run", "--module", str(a), "--module", str(b), "--results", str(tmp_path)]) == 2
    assert "two modules named same" in capsys.readouterr().err
    assert not list(tmp_path.glob("run-*"))


# --- init-expect ----------------------------------------------------------------------------


def _results(tmp_path: Path, outcome: Outcome = PASS) -> Path:
    """A results directory as `run --module tests/usermod` leaves it (from a real run)."""
    run_dir = tmp_path / "results" / "run-1"
    kernel = KernelResult(spec="debian:bookworm", name="debian-6.1", release="6.1.0-57-amd64")
    converted = ["vmlinux.dmesg_restrict,0", "vmlinux.nr_processes,0"]
    kernel.modules = [ModuleResult("usermod", "mymod", outcome, "pass", converted=converted)]
    results = RunResults(path=run_dir / "results.json", kernels=[kernel])
    results.save()
    commands = (
        Command("insmod", "mymod", "insmod mymod.ko", 0, "", INSMOD_LINES, 0, 12288),
        Command("rmmod", "mymod", "rmmod mymod", 0, "", ("mymod: 57 processes at unload",), 0, 0),
    )
    transcript = Transcript("usermod", "mymod", "debian-6.1", "6.1.0-57-amd64", commands=commands)
    transcript.save(transcript_file(run_dir, "debian-6.1", "usermod"))
    return tmp_path / "results"


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "mine" / "usermod"
    shutil.copytree(USERMOD, target)
    return target


def test_init_expect_writes_a_file_that_loads_and_matches_the_run(tmp_path: Path) -> None:
    mod, results = _copy(tmp_path), _results(tmp_path)
    assert main(["init-expect", str(mod), "--results", str(results)]) == 0
    text = (mod / "expect.toml").read_text()
    sample = load_sample(mod)
    exp = sample.expectation(fake_kernel(tmp_path, "6.1.0", "CONFIG_LIVEPATCH=y\n"))
    assert exp.outcome == "pass" and exp.taint == ""
    assert exp.dmesg == (
        r"mymod: \d+ processes, command line of \d+ characters, dmesg_restrict=\d+",
    )
    assert exp.rmmod_dmesg == (r"mymod: \d+ processes at unload",)
    assert "vmlinux.nr_processes,0" in text and "debian:bookworm (6.1.0-57-amd64): pass" in text
    assert "taints kernel" not in text  # the kernel's per-boot lines are not the module's
    assert [p.name for p in mod.iterdir() if p.name.startswith(".")] == []


def test_init_expect_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod, results = _copy(tmp_path), _results(tmp_path)
    (mod / "expect.toml").write_text("# mine\n")
    assert main(["init-expect", str(mod), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expect.toml: exists; --force replaces it" in err
    assert (mod / "expect.toml").read_text() == "# mine\n"
    assert main(["init-expect", str(mod), "--results", str(results), "--force"]) == 0
    assert load_sample(mod).module == "mymod"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-run", "no run of usermod (module mymod); run `klp-harness run --module"),
        ("no-results", "no results.json in this directory"),
        ("damaged", "(1 unreadable results file(s) skipped)"),
        ("not-a-dir", "not a directory"),
        ("two-modules", "builds 2 modules"),
    ],
)
def test_init_expect_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    mod, results = _copy(tmp_path), _results(tmp_path)
    if setup == "no-run":
        mod = mod.rename(mod.parent / "usermod2")  # the run was of a directory "usermod"
        message = "no run of usermod2 (module mymod)"
    elif setup == "damaged":
        (results / "run-1" / "results.json").write_text("{")
    elif setup == "no-results":
        results = tmp_path / "empty"
        results.mkdir()
    elif setup == "not-a-dir":
        mod = mod / "Makefile"
    else:
        (mod / "Makefile").write_text("obj-m += a.o b.o\n")
    assert main(["init-expect", str(mod), "--results", str(results)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("klp-harness: ") and err.count("\n") == 1 and message in err, err
    assert not (mod / "expect.toml").exists() if mod.is_dir() else True


def test_init_expect_for_a_livepatch_keeps_its_disable_checks(tmp_path: Path) -> None:
    d = module_dir(tmp_path, "lp", "obj-m := lp.o\n")
    (d / "a.c").write_text('MODULE_INFO(livepatch, "Y");\n')
    (sample,) = default_samples(d)
    seen: list[Seen] = []  # no run seen: still a valid file with the checks
    text = render(sample, tmp_path / "results.json", seen)
    (d / "expect.toml").write_text(text)
    exp = load_sample(d).expectation(fake_kernel(tmp_path, "6.1.0", "CONFIG_LIVEPATCH=y\n"))
    assert exp.taint == "K" and exp.checks == sample.cases[-1][1].checks


@pytest.mark.parametrize(
    "line",
    [
        "m: value 0xffffffffc0a01000 at [12] (x+1) {a|b} ^$ *?",
        "m: it's \\d 'quoted' \"twice\"",
        "m: 3 of 4 done, sympos,2 v1.2.3",
    ],
)
def test_line_regex_matches_its_line(line: str) -> None:
    assert re.fullmatch(line_regex(line), line)


# --- on a real kernel -----------------------------------------------------------------------


@pytest.mark.vm
def test_run_module_tests_usermod_passes(
    klp_kernel: Kernel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`klp-harness run --module tests/usermod`: built from its Makefile and two C files,
    nr_processes, saved_command_line and dmesg_restrict converted, loaded, judged, unloaded."""
    results = tmp_path / "results"
    argv = ["run", "--kernel", klp_kernel.spec, "--module", str(USERMOD), "--results", str(results)]
    assert main(argv) == 0, capsys.readouterr()
    table = capsys.readouterr().out
    assert re.search(rf"{re.escape(klp_kernel.name)}\s+pass\b", table), table
    # init-expect on what that run saw gives a file the same module passes with.
    mod = _copy(tmp_path)
    assert main(["init-expect", str(mod), "--results", str(results)]) == 0
    text = (mod / "expect.toml").read_text()
    for name in ("nr_processes", "saved_command_line", "dmesg_restrict"):
        assert f"vmlinux.{name},0" in text
    assert "processes, command line of" in text


@pytest.mark.vm
def test_fixture_runs_a_users_module(
    klp_step: Callable[[str], ModuleResult], klp_kernel: Kernel, tmp_path: Path
) -> None:
    result = klp_step(str(USERMOD))
    assert (result.outcome, result.reason) == (PASS, "")
    assert set(result.converted) >= {"vmlinux.nr_processes,0", "vmlinux.saved_command_line,0"}
    assert klp_kernel.config_value("LIVEPATCH") == "y" or result.outcome == NA
