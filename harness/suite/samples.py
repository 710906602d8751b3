"""Sample modules and their expectations, read from data files (modules/<name>/expect.toml)."""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from harness.errors import ExpectationError
from harness.kernels.arch import arches
from harness.kernels.kernel import Kernel
from harness.klp.guard import GUARD_SYMBOL
from harness.paths import MODULES_DIR
from harness.suite.kbuild import declares_livepatch, kbuild_modules
from harness.suite.tomlcheck import check_keys, regexes, strings, typed, version

# What an expect.toml says a module should do on a kernel.
Expected = Literal["pass", "refused", "not-applicable"]
OUTCOMES: tuple[Expected, ...] = get_args(Expected)
EXPECT_FILE = "expect.toml"


@dataclass(frozen=True)
class GuestCheck:
    """A command run in the guest after insmod; its output and new dmesg lines must match."""

    cmd: str
    output: tuple[str, ...] = ()
    dmesg: tuple[str, ...] = ()
    status: int = 0


@dataclass(frozen=True)
class Expectation:
    """What one kernel should show for one module."""

    outcome: Expected
    reason: str = ""
    dmesg: tuple[str, ...] = ()  # regexes, each must match a dmesg line of the insmod step
    resolved: tuple[str, ...] = ()  # names the module must report as resolved
    checks: tuple[GuestCheck, ...] = ()
    rmmod_dmesg: tuple[str, ...] = ()
    taint: str = ""  # taint letters this module may add beyond O and E (K for a livepatch)


@dataclass(frozen=True)
class ConvertOptions:
    symbols: tuple[str, ...] = ()  # empty: every undefined symbol the kernel does not export
    # A position, or "last": the highest position of that name in the kernel's table.
    sympos: Mapping[str, int | str] = field(default_factory=dict)
    force: bool = False
    # Module objects a livepatch module reaches: object name -> the sample that builds it.
    object_symbols: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    min_kernel: tuple[int, ...] | None = None
    max_kernel: tuple[int, ...] | None = None  # exclusive
    config: Mapping[str, str] = field(default_factory=dict)
    arch: tuple[str, ...] = ()  # any of these architectures (kernels/arches/arches.toml)

    def matches(self, kernel: Kernel) -> bool:
        if self.arch and kernel.arch not in self.arch:
            return False
        if self.min_kernel and kernel.version < self.min_kernel:
            return False
        if self.max_kernel and kernel.version >= self.max_kernel:
            return False
        return all(kernel.config_value(k) == v for k, v in self.config.items())


@dataclass(frozen=True)
class Sample:
    """A module directory: its sources, Kbuild and expectation file."""

    name: str
    path: Path
    module: str  # the .ko's base name
    description: str
    min_kernel: tuple[int, ...] | None
    convert: ConvertOptions
    cases: tuple[tuple[Condition, Expectation], ...]
    requires: tuple[str, ...] = ()  # samples built first, loaded before this one, unloaded after
    timeout: float = 60.0  # seconds (under KVM; scaled for TCG) each guest command may take

    def expectation(self, kernel: Kernel) -> Expectation:
        if self.min_kernel and kernel.version < self.min_kernel:
            return Expectation(
                "not-applicable", reason=f"needs kernel >= {_dotted(self.min_kernel)}"
            )
        for condition, expectation in self.cases:
            if condition.matches(kernel):
                return expectation
        raise ExpectationError(
            f"{self.path / EXPECT_FILE}: no [[expect]] entry matches kernel {kernel.name}"
        )


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _condition(data: object, where: str) -> Condition:
    if data is None:
        return Condition()
    if not isinstance(data, dict):
        raise ExpectationError(f"{where}: `when` must be a table")
    check_keys(data, {"min_kernel", "max_kernel", "config", "arch"}, where)
    config = data.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
        raise ExpectationError(f'{where}: `when.config` maps options to "y"/"m"/"n"')
    arch = data.get("arch", [])
    arch = [arch] if isinstance(arch, str) else arch
    if not isinstance(arch, list) or not all(isinstance(a, str) and a in arches() for a in arch):
        raise ExpectationError(
            f"{where}: `when.arch` is an architecture or a list of them ({', '.join(arches())})"
        )
    return Condition(
        arch=tuple(arch),
        min_kernel=version(data["min_kernel"], where) if "min_kernel" in data else None,
        max_kernel=version(data["max_kernel"], where) if "max_kernel" in data else None,
        config={k.removeprefix("CONFIG_"): v for k, v in config.items()},
    )


def _check(data: object, where: str) -> GuestCheck:
    if not isinstance(data, dict) or not isinstance(data.get("cmd"), str):
        raise ExpectationError(f'{where}: a check needs `cmd = "..."`')
    check_keys(data, {"cmd", "output", "dmesg", "status"}, where)
    status = typed(data, "status", int, 0, where)
    return GuestCheck(
        cmd=data["cmd"],
        output=regexes(data.get("output"), f"{where}.output"),
        dmesg=regexes(data.get("dmesg"), f"{where}.dmesg"),
        status=status,
    )


def _expectation(data: object, where: str) -> tuple[Condition, Expectation]:
    if not isinstance(data, dict):
        raise ExpectationError(f"{where}: must be a table")
    allowed = {"when", "outcome", "reason", "dmesg", "resolved", "check", "rmmod_dmesg", "taint"}
    check_keys(data, allowed, where)
    outcome = next((o for o in OUTCOMES if o == data.get("outcome")), None)
    if outcome is None:
        raise ExpectationError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}")
    checks = data.get("check", [])
    if not isinstance(checks, list):
        raise ExpectationError(f"{where}: `check` must be an array of tables")
    taint = data.get("taint", "")
    if not isinstance(taint, str) or not re.fullmatch(r"[A-Z]*", taint):
        raise ExpectationError(f'{where}: `taint` is a string of taint letters, e.g. "K"')
    expectation = Expectation(
        outcome=outcome,
        reason=typed(data, "reason", str, "", where),
        dmesg=regexes(data.get("dmesg"), f"{where}.dmesg"),
        resolved=strings(data.get("resolved"), f"{where}.resolved"),
        checks=tuple(_check(c, f"{where}.check[{i}]") for i, c in enumerate(checks)),
        rmmod_dmesg=regexes(data.get("rmmod_dmesg"), f"{where}.rmmod_dmesg"),
        taint=taint,
    )
    return _condition(data.get("when"), where), expectation


def _convert(data: object, where: str) -> ConvertOptions:
    if data is None:
        return ConvertOptions()
    if not isinstance(data, dict):
        raise ExpectationError(f"{where}: must be a table")
    check_keys(data, {"symbols", "sympos", "force", "object_symbols"}, where)
    sympos = data.get("sympos", {})
    if not isinstance(sympos, dict) or not all(
        (type(v) is int and v >= 0) or (isinstance(v, str) and v.strip() == v != "")
        for v in sympos.values()
    ):
        raise ExpectationError(
            f'{where}.sympos: maps symbol names to positions >= 0, "last" or a source file'
        )
    objects = data.get("object_symbols", {})
    if not isinstance(objects, dict) or not all(isinstance(v, str) for v in objects.values()):
        raise ExpectationError(f"{where}.object_symbols: maps module names to sample names")
    return ConvertOptions(
        symbols=strings(data.get("symbols"), f"{where}.symbols"),
        sympos=dict(sympos),
        force=typed(data, "force", bool, False, where),
        object_symbols=dict(objects),
    )


def load_sample(path: Path) -> Sample:
    """Read `path/expect.toml`; any malformation is an ExpectationError naming the file."""
    file = path / EXPECT_FILE
    try:
        text = file.read_text()
    except OSError as err:
        raise ExpectationError(f"{file}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ExpectationError(f"{file}: not valid TOML: {err}") from None
    return sample_from_text(path, text)


def sample_from_text(path: Path, text: str) -> Sample:
    """The sample an expect.toml with `text` in module directory `path` describes."""
    file = path / EXPECT_FILE
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ExpectationError(f"{file}: not valid TOML: {err}") from None
    where = str(file)
    check_keys(
        data,
        {"description", "module", "min_kernel", "convert", "expect", "requires", "timeout"},
        where,
    )
    timeout = data.get("timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ExpectationError(f"{where}: `timeout` is a number of seconds > 0")
    module = data.get("module")
    if module is None:  # optional when Kbuild or the Makefile builds exactly one module
        with contextlib.suppress(ExpectationError):
            only = kbuild_modules(path)
            module = only[0] if len(only) == 1 else None
    if not isinstance(module, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", module):
        raise ExpectationError(f"{where}: `module` must name the .ko built by Kbuild")
    cases = data.get("expect")
    if not isinstance(cases, list) or not cases:
        raise ExpectationError(f"{where}: needs at least one [[expect]] table")
    return Sample(
        name=dir_name(path),
        path=path.resolve(),
        module=module,
        description=typed(data, "description", str, "", where),
        min_kernel=version(data["min_kernel"], where) if "min_kernel" in data else None,
        convert=_convert(data.get("convert"), f"{where}: [convert]"),
        cases=tuple(_expectation(c, f"{where}: expect[{i}]") for i, c in enumerate(cases)),
        requires=strings(data.get("requires"), f"{where}: requires"),
        timeout=float(timeout),
    )


def find_samples(name_or_path: str) -> list[Sample]:
    """A name in modules/, or a module directory: with its expect.toml, else one sample per
    module its Kbuild or Makefile builds, with the default expectation."""
    candidate = Path(name_or_path)
    if "/" not in name_or_path and (MODULES_DIR / name_or_path / EXPECT_FILE).is_file():
        return [load_sample(MODULES_DIR / name_or_path)]
    if (candidate / EXPECT_FILE).is_file():
        return [load_sample(candidate)]
    if candidate.is_dir():
        return default_samples(candidate)
    known = ", ".join(s.name for s in all_samples()) or "none"
    raise ExpectationError(
        f"{name_or_path}: not a sample in modules/ ({known}) nor a module directory "
        f"(with a Kbuild or Makefile)"
    )


def find_sample(name_or_path: str) -> Sample:
    """Like `find_samples`, for a directory that builds one module."""
    samples = find_samples(name_or_path)
    if len(samples) > 1:
        names = ", ".join(s.module for s in samples)
        raise ExpectationError(
            f"{name_or_path}: builds {len(samples)} modules ({names}); name one directory "
            "per module here, or run them all with `klp-harness run --module`"
        )
    return samples[0]


# Without CONFIG_LIVEPATCH the loader leaves every klp relocation at 0: calling through one
# would oops. The converter's livepatch guard (harness.klp.guard) stops the load first; a
# livepatch module is refused by the loader itself.
GUARD_REASON = "the livepatch guard: klp_enable_patch is exported only with CONFIG_LIVEPATCH"
LIVEPATCH_DISABLED = "module is marked as livepatch module, but livepatch support is disabled"
# LIVEPATCH depends on KALLSYMS_ALL: without it no klp relocation works, and kallsyms lists
# no data symbols, so the conversion of one a module reads is refused before any load.
NO_KALLSYMS_ALL = "CONFIG_KALLSYMS_ALL is off (and so CONFIG_LIVEPATCH): no data in kallsyms"


def no_livepatch_expectation(module: str, livepatch: bool) -> Expectation:
    """What a module must show on a kernel without CONFIG_LIVEPATCH: refused at insmod,
    with the loader's line naming the guard symbol (or the livepatch marking)."""
    name = re.escape(module.replace("-", "_"))
    if livepatch:
        return Expectation("refused", LIVEPATCH_DISABLED, dmesg=(f"{name}: {LIVEPATCH_DISABLED}",))
    line = f"{name}: Unknown symbol {GUARD_SYMBOL} \\(err -2\\)"
    return Expectation("refused", GUARD_REASON, dmesg=(line,))


KLP_FOR_MODULES = (5, 8)  # the loader applies .klp.rela.vmlinux.* for any module since v5.8


def livepatch_checks(module: str) -> tuple[GuestCheck, ...]:
    """A livepatch module cannot be removed while enabled: wait for the transition, disable
    it through sysfs and wait until the patch is gone and the reference dropped."""
    name = module.replace("-", "_")
    wait = "i=$((i+1)); [ $i -le 300 ] || exit 1; sleep 0.1"
    return (
        GuestCheck(
            cmd=f"p=/sys/kernel/livepatch/{name}; i=0\n"
            f'while [ "$(cat $p/transition)" != 0 ]; do {wait}; done\n'
            'echo "enabled=$(cat $p/enabled) transition=0"',
            output=("^enabled=1 transition=0$",),
        ),
        GuestCheck(
            cmd=f"p=/sys/kernel/livepatch/{name}; echo 0 > $p/enabled || exit 1; i=0\n"
            f'while [ -e $p ] || [ "$(cat /sys/module/{name}/refcnt)" != 0 ]; do {wait}; done\n'
            'echo "disabled"',
            output=("^disabled$",),
        ),
    )


def default_expectation(module: str, livepatch: bool) -> Expectation:
    """What a module without expect.toml must do: build, convert, load with no splat and no
    new taint beyond O and E (and K for a livepatch), and unload cleanly."""
    checks = livepatch_checks(module) if livepatch else ()
    return Expectation("pass", taint="K" if livepatch else "", checks=checks)


def dir_name(path: Path) -> str:
    """A module directory's name as results know it (`.` and `..` by what they are)."""
    return path.name if path.name not in ("", ".", "..") else path.resolve().name or "module"


def default_samples(path: Path) -> list[Sample]:
    """One sample per module the directory's Kbuild or Makefile builds, none with expect.toml;
    several modules of one directory are named `<dir>.<module>`."""
    modules = kbuild_modules(path)
    livepatch = declares_livepatch(path)
    stem = dir_name(path)
    kind = "livepatch module" if livepatch else "module"
    return [
        Sample(
            name=stem if len(modules) == 1 else f"{stem}.{module}",
            path=path.resolve(),
            module=module,
            description=f"{kind} {module} (no {EXPECT_FILE}: the default expectation)",
            min_kernel=None if livepatch else KLP_FOR_MODULES,
            convert=ConvertOptions(),
            cases=(
                (
                    Condition(config={"KALLSYMS_ALL": "n", "LIVEPATCH": "n"}),
                    Expectation("not-applicable", NO_KALLSYMS_ALL),
                ),
                (Condition(config={"LIVEPATCH": "n"}), no_livepatch_expectation(module, livepatch)),
                (Condition(), default_expectation(module, livepatch)),
            ),
        )
        for module in modules
    ]


def required_sample(sample: Sample, name: str) -> Sample:
    """A sample named by `requires` or `object_symbols`: a sibling directory, or a modules/ name."""
    sibling = sample.path.parent / name
    if (sibling / EXPECT_FILE).is_file():
        return load_sample(sibling)
    return find_sample(name)


def all_samples() -> list[Sample]:
    if not MODULES_DIR.is_dir():
        return []
    return [load_sample(p) for p in sorted(MODULES_DIR.iterdir()) if (p / EXPECT_FILE).is_file()]
