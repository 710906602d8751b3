"""pytest plugin: `--kernel SPEC` (repeatable) and fixtures over the same library as the CLI.

- `klp_kernel`: a fetched kernel, one per `--kernel` (default: the default kernel);
- `klp_guest`: that kernel booted once, shared by every test that uses it;
- `klp_module`: a factory building and converting a sample (name or path) for `klp_kernel`;
- `klp_step`: a factory running a sample's whole step (insmod, checks, rmmod) in `klp_guest`
  and judging it (a guest lost during the step is that step's failure).

A path is any module directory: a Kbuild or Makefile whose obj-m names one module, and an
expect.toml only when the default expectation (builds, converts, loads with no splat and no
new taint, unloads cleanly) is not enough.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.build.modules import BuiltModule, build_with_requirements, builds_dir
from harness.console import Printer
from harness.errors import HarnessError
from harness.kernels.kernel import Kernel
from harness.suite.results import ModuleResult
from harness.suite.samples import find_sample
from harness.vm.guest import Guest

VM_TOOLS = {
    "vng": "pip install virtme-ng (ci/setup.sh does it)",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "busybox": "apt-get install busybox-static",
    "cpio": "apt-get install cpio",
    "depmod": "apt-get install kmod",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("klp-harness")
    group.addoption(
        "--kernel",
        action="append",
        default=[],
        metavar="SPEC",
        help="kernel to run the klp tests on (repeatable; default: the default kernel)",
    )
    group.addoption(
        "--klp-matrix",
        default=None,
        metavar="FILE",
        help="kernels/*.toml file for the `matrix` tests (default: kernels/debian.toml)",
    )
    group.addoption(
        "--klp-allow-no-livepatch",
        action="store_true",
        help="on kernels without CONFIG_LIVEPATCH, build and expect the livepatch guard's "
        "refusal (default: such kernels are not applicable)",
    )
    group.addoption(
        "--klp-results",
        default=None,
        metavar="DIR",
        help="where console logs of test boots go (default: results/pytest under the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real kernel under QEMU through virtme-ng")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "klp_kernel_spec" in metafunc.fixturenames:
        from harness.kernels.spec import default_spec

        specs = metafunc.config.getoption("kernel") or [default_spec()]
        metafunc.parametrize("klp_kernel_spec", specs, scope="session")


def missing_vm_tools() -> list[str]:
    """Install hints for every tool a boot needs that this machine lacks."""
    from harness.vm.boot import find_vng

    def found(tool: str) -> bool:
        if tool == "vng":  # beside the interpreter (a venv not on PATH) or on PATH
            try:
                return bool(find_vng())
            except HarnessError:
                return False
        return shutil.which(tool) is not None

    return [f"{tool}: {hint}" for tool, hint in VM_TOOLS.items() if not found(tool)]


def _results_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("klp_results")
    base = Path(chosen) if chosen else config.rootpath / "results" / "pytest"
    return base / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


@pytest.fixture(scope="session")
def klp_results_dir(request: pytest.FixtureRequest) -> Path:
    return _results_dir(request.config)


@pytest.fixture(scope="session")
def klp_kernel(klp_kernel_spec: str) -> Kernel:
    from harness.kernels.acquire import acquire

    try:
        return acquire(klp_kernel_spec)
    except HarnessError as err:
        pytest.fail(f"cannot get kernel {klp_kernel_spec}: {err}", pytrace=False)


@pytest.fixture(scope="session")
def klp_guest(klp_kernel: Kernel, klp_results_dir: Path) -> Iterator[Guest]:
    from harness.vm.boot import boot

    missing = missing_vm_tools()
    if missing:
        # Never a silent skip: deselect with -m "not vm" instead.
        pytest.fail("VM tests need: " + "; ".join(missing), pytrace=False)
    log = klp_results_dir / f"console-{klp_kernel.name}.log"
    try:
        with boot(klp_kernel, log, modules=builds_dir(klp_kernel)) as guest:
            yield guest
    except HarnessError as err:
        pytest.fail(f"guest for {klp_kernel.name}: {err} (console log: {log})", pytrace=False)


@pytest.fixture(scope="session")
def klp_allow_no_livepatch(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("klp_allow_no_livepatch"))


@pytest.fixture(scope="session")
def klp_module(klp_kernel: Kernel, klp_allow_no_livepatch: bool) -> Callable[[str], BuiltModule]:
    def build(name_or_path: str) -> BuiltModule:
        sample = find_sample(name_or_path)
        allow = klp_allow_no_livepatch
        return build_with_requirements(klp_kernel, sample, allow_no_livepatch=allow)[0]

    return build


@pytest.fixture
def klp_step(
    klp_guest: Guest,
    klp_kernel: Kernel,
    klp_allow_no_livepatch: bool,
    klp_results_dir: Path,
) -> Callable[[str], ModuleResult]:
    """Runs a sample's step; its transcript goes to `<results>/transcripts/<kernel>/`.
    Applicability and build failures are decided as `klp-harness run` decides them."""
    from harness.suite.runner import prepare
    from harness.suite.steps import GuestSteps
    from harness.suite.transcript import transcript_file

    def step(name_or_path: str) -> ModuleResult:
        sample = find_sample(name_or_path)
        ready = prepare(
            klp_kernel,
            sample,
            printer=Printer(quiet=True),
            allow_no_livepatch=klp_allow_no_livepatch,
        )
        if ready.result is not None or ready.built is None:
            assert ready.result is not None
            return ready.result
        steps = GuestSteps(klp_guest, klp_kernel)
        result, transcript = steps.run(sample, ready.expectation, ready.built, ready.required)
        transcript.save(transcript_file(klp_results_dir, klp_kernel.name, sample.name))
        return result

    return step
