"""The runner's own rules without a VM, through its boot seam: a guest that replays steps
recorded from real boots (tests/data/transcripts), and dies where the recorded guest died.

What must hold: a guest lost during a step fails that step alone and the rest run in a new
boot; after MAX_BOOTS boots the rest are "not run"; a boot that fails ends the kernel; the
results file is written as each kernel finishes; with -j each kernel's lines say which it is.
This replays recordings, so it proves nothing about real guests: tests/test_hostile.py does.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from transcript_data import kernel, results, sample, transcripts

from harness.build.modules import BuiltModule
from harness.console import Printer
from harness.errors import BootError, BuildError
from harness.fileio import exclusive_file
from harness.kernels.kernel import Kernel
from harness.suite.results import FAIL, NOT_RUN, PASS, KernelResult, ModuleResult, RunResults
from harness.suite.runner import Backend, run
from harness.suite.samples import Sample
from harness.suite.transcript import Command, Crash, Transcript, load_transcript, transcript_file
from harness.vm.commands import CommandResult, GuestDied, LoggedResult

BUILDS = Path("/nonexistent/builds")  # host side of the guest's /klp/modules
HOSTILE_ORDER = ["panic_init", "hang_init", "oops_init", "kernel_clone"]


class ReplayGuest:
    """Answers each command with the next one recorded, checking it is the same command."""

    def __init__(self, steps: Sequence[Transcript], console_log: Path, kallsyms: str) -> None:
        self.console_log = console_log
        self.accel = "tcg"
        self.boot_seconds = 1.0
        self._kallsyms = kallsyms
        self._script: list[tuple[str, Command | Crash]] = []
        for t in steps:
            self._script += [(t.sample, c) for c in t.commands]
            if t.crash is not None:
                self._script.append((t.sample, t.crash))

    def path(self, host_path: Path) -> str:
        return f"/klp/modules/{host_path.relative_to(BUILDS)}"

    def run_logged(self, cmd: str, label: str, timeout: float = 60) -> LoggedResult:
        name, next_one = self._script.pop(0)
        if isinstance(next_one, Crash):
            assert (label, cmd) == (f"{name} {next_one.role}", next_one.cmd)
            raise GuestDied(next_one.what, next_one.what, next_one.tail)
        role = next_one.role
        assert label == (
            f"{name} {role} {next_one.module}" if role in ("load", "unload") else f"{name} {role}"
        )
        assert cmd == next_one.cmd
        result = CommandResult(cmd, next_one.output, next_one.status, next_one.seconds)
        return LoggedResult(
            result, list(next_one.kernel), next_one.taint_before, next_one.taint_after
        )

    def kallsyms(self) -> str:
        return self._kallsyms

    def finished(self) -> bool:
        return not self._script


@dataclass
class Replay:
    """The backend: kernels from the capture, builds by name, one recorded script per boot."""

    boot_name: str  # tests/data/transcripts/<boot_name>
    boots: list[list[str] | BootError]  # per boot: the samples it runs, or the boot's failure
    kernels: dict[str, str] = field(default_factory=dict)  # spec -> kernel name
    broken: set[str] = field(default_factory=set)  # samples whose build fails
    guests: list[ReplayGuest] = field(default_factory=list)
    seen_at_boot: list[list[str]] = field(default_factory=list)  # kernels in results.json

    def backend(self) -> Backend:
        return Backend(acquire=self.acquire, build=self.build, boot=self.boot)

    def acquire(self, spec: str, printer: Printer) -> Kernel:
        captured = kernel(self.boot_name)
        return replace(captured, spec=spec, name=self.kernels.get(spec, captured.name))

    def build(
        self, on: Kernel, wanted: Sample, *, allow_no_livepatch: bool = False
    ) -> tuple[BuiltModule, tuple[BuiltModule, ...]]:
        if wanted.name in self.broken:
            raise BuildError(f"{wanted.name}: make failed (replayed)\nmore lines")
        deps = tuple(self._built(sample(name)) for name in wanted.requires)
        return self._built(wanted), deps

    def _built(self, of: Sample) -> BuiltModule:
        ko = BUILDS / of.name / "klp" / f"{of.module}.ko"
        recorded = transcripts(self.boot_name).get(of.name)
        converted = recorded.converted if recorded else ()
        return BuiltModule(
            of.name, of.module, ko, ko, ko.parent / "build.log", "gcc", converted, (), True, 0.0
        )

    @contextlib.contextmanager
    def boot(self, on: Kernel, console_log: Path, cpus: int | None) -> Iterator[ReplayGuest]:
        runs = self.boots.pop(0)
        saved = console_log.parent / "results.json"
        kernels = json.loads(saved.read_text())["kernels"] if saved.exists() else []
        self.seen_at_boot.append([k["name"] for k in kernels])
        if isinstance(runs, BootError):
            raise runs
        path, handle = exclusive_file(console_log)  # a log per boot, as a real boot makes
        handle.close()
        recorded = transcripts(self.boot_name)
        kallsyms = (
            Path(__file__).parent / "data" / "transcripts" / self.boot_name / "kallsyms.excerpt"
        ).read_text()
        guest = ReplayGuest([recorded[name] for name in runs], path, kallsyms)
        self.guests.append(guest)
        yield guest


def run_replay(
    replay: Replay,
    names: Sequence[str],
    out: Path,
    specs: Sequence[str] = ("debian:bookworm",),
    max_boots: int = 4,
    jobs: int = 1,
) -> RunResults:
    printer = Printer(io.StringIO())
    return run(
        specs,
        [sample(n) for n in names],
        out,
        printer=printer,
        backend=replay.backend(),
        max_boots=max_boots,
        jobs=jobs,
    )


def by_sample(kernel_result: KernelResult) -> dict[str, ModuleResult]:
    return {m.sample: m for m in kernel_result.modules}


def verdicts(got: dict[str, ModuleResult]) -> dict[str, tuple[str, str, list[str]]]:
    """Outcome, reason and evidence; the replay guest reads no kernel memory (tests/
    test_memcheck.py judges the recorded reads), so the memory summary line is left out."""
    return {
        name: (m.outcome, m.reason, [e for e in m.evidence if e != m.memory])
        for name, m in got.items()
    }


def test_a_guest_lost_mid_step_fails_that_step_and_the_rest_run_in_a_new_boot(
    tmp_path: Path,
) -> None:
    replay = Replay("hostile", [["panic_init"], ["hang_init"], ["oops_init", "kernel_clone"]])
    outcome = run_replay(replay, HOSTILE_ORDER, tmp_path)
    (kernel_result,) = outcome.kernels
    got = by_sample(kernel_result)
    assert verdicts(got) == verdicts(results("hostile"))  # what the real run said
    assert [m.outcome for m in got.values()] == [FAIL, FAIL, FAIL, PASS]
    assert all(g.finished() for g in replay.guests) and replay.boots == []
    logs = [got[n].console_log for n in HOSTILE_ORDER]
    assert logs[0] != logs[1] != logs[2] == logs[3]  # panic, hang: each ended its boot
    assert kernel_result.console_log == logs[0] and not kernel_result.error
    # Each step's transcript is in the run directory, as recorded.
    for name in HOSTILE_ORDER:
        saved = load_transcript(transcript_file(outcome.path.parent, kernel_result.name, name))
        assert saved.commands == transcripts("hostile")[name].commands
        assert saved.crash == transcripts("hostile")[name].crash
    on_disk = json.loads(outcome.path.read_text())["kernels"]
    assert KernelResult.from_json(on_disk[0]) == kernel_result


def test_after_max_boots_the_rest_are_not_run(tmp_path: Path) -> None:
    replay = Replay("hostile", [["panic_init"], ["hang_init"]])
    (kernel_result,) = run_replay(replay, HOSTILE_ORDER, tmp_path, max_boots=2).kernels
    got = by_sample(kernel_result)
    assert [got[n].outcome for n in HOSTILE_ORDER] == [FAIL, FAIL, NOT_RUN, NOT_RUN]
    assert got["oops_init"].reason == "not run: the guest stopped during 2 steps, no boot left"
    assert got["kernel_clone"].converted == ["vmlinux.do_exit,0", "vmlinux.kernel_clone,0"]
    assert len(replay.guests) == 2 and not kernel_result.error


def test_a_boot_that_fails_ends_the_kernel(tmp_path: Path) -> None:
    failure = BootError("debian-6.1.0-57-amd64 (tcg): boot: no shell prompt")
    replay = Replay("hostile", [["panic_init"], failure])
    (kernel_result,) = run_replay(replay, HOSTILE_ORDER, tmp_path).kernels
    got = by_sample(kernel_result)
    assert got["panic_init"].outcome == FAIL
    assert kernel_result.error == f"guest: {failure}"
    for name in HOSTILE_ORDER[1:]:
        assert (got[name].outcome, got[name].reason) == (
            NOT_RUN,
            "not run: the guest could not be booted for this step",
        )


def test_every_sample_replayed_in_one_boot_gets_its_recorded_verdict(tmp_path: Path) -> None:
    names = list(transcripts("samples"))
    replay = Replay("samples", [names])
    (kernel_result,) = run_replay(replay, names, tmp_path).kernels
    assert verdicts(by_sample(kernel_result)) == verdicts(results("samples"))
    assert replay.guests[0].finished()


def test_a_build_failure_is_marked_and_the_others_still_run(tmp_path: Path) -> None:
    replay = Replay("samples", [["kernel_clone"]], broken={"sympos_2"})
    (kernel_result,) = run_replay(replay, ["sympos_2", "kernel_clone"], tmp_path).kernels
    failed, clone = kernel_result.modules
    assert (failed.outcome, failed.build_failed) == (FAIL, True)
    assert "make failed (replayed)" in failed.reason
    assert (clone.outcome, clone.build_failed) == (PASS, False)


def test_results_are_written_as_each_kernel_finishes(tmp_path: Path) -> None:
    kernels = {"debian:one": "kernel-one", "debian:two": "kernel-two"}
    replay = Replay("samples", [["kernel_clone"], ["kernel_clone"]], kernels=kernels)
    outcome = run_replay(replay, ["kernel_clone"], tmp_path, specs=list(kernels), jobs=1)
    # When the second kernel booted, the file already held the first one's results.
    assert replay.seen_at_boot == [[], ["kernel-one"]]
    assert [k.name for k in outcome.kernels] == ["kernel-one", "kernel-two"]
    assert outcome.ok


def test_with_jobs_each_kernel_says_which_it_is(tmp_path: Path) -> None:
    kernels = {"debian:one": "kernel-one", "debian:two": "kernel-two"}
    replay = Replay("samples", [["kernel_clone"], ["kernel_clone"]], kernels=kernels)
    stream = io.StringIO()
    run(
        list(kernels),
        [sample("kernel_clone")],
        tmp_path,
        printer=Printer(stream),
        jobs=2,
        backend=replay.backend(),
    )
    lines = stream.getvalue().splitlines()
    for spec in kernels:
        assert f"klp-harness: [{spec}] {spec}: done in " in "\n".join(lines)
    assert all(
        line.startswith(("klp-harness: [debian:one] ", "klp-harness: [debian:two] "))
        for line in lines
    )


def test_two_specs_of_one_kernel_run_it_once(tmp_path: Path) -> None:
    replay = Replay("samples", [["kernel_clone"]])
    stream = io.StringIO()
    specs = ["debian:bookworm", "debian:6.1.0-57-amd64"]
    outcome = run(
        specs, [sample("kernel_clone")], tmp_path, printer=Printer(stream), backend=replay.backend()
    )
    assert [k.spec for k in outcome.kernels] == ["debian:bookworm"]
    assert (
        "debian:6.1.0-57-amd64: is debian-6.1.0-57-amd64, which debian:bookworm runs already"
        in stream.getvalue()
    )


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_keeps_progress_off(tmp_path: Path, quiet: bool) -> None:
    replay = Replay("samples", [["kernel_clone"]])
    stream = io.StringIO()
    run(
        ["debian:bookworm"],
        [sample("kernel_clone")],
        tmp_path,
        printer=Printer(stream, quiet=quiet),
        backend=replay.backend(),
    )
    assert ("kernel_clone: pass" in stream.getvalue()) is not quiet
