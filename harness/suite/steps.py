"""One module's step in a booted guest: the only part of the suite that talks to it.

A step loads the samples the module requires, then the module, runs its checks and
unloads it all, recording every command with its output, exit status, kernel lines and
taint as a `Transcript`; harness.suite.judge then gives the verdict from that record,
the expectation and the guest's /proc/kallsyms. Which commands run depends only on the
exit statuses (nothing after a failed load); what they mean is the judge's business.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from harness.build.modules import BuiltModule
from harness.errors import BootError, HarnessError
from harness.kernels.kernel import Kernel
from harness.klp.elfread import ElfImage
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.judge import judge, wants_kallsyms
from harness.suite.memcheck import VMLINUX, MemoryRecord, module_relocs, reads, record_of
from harness.suite.results import ModuleResult
from harness.suite.samples import Expectation, Sample
from harness.suite.transcript import Command, Crash, Role, Transcript
from harness.vm.commands import GuestError, LoggedResult
from harness.vm.kcore import KcoreGuest, KcoreReader

KALLSYMS = "guest /proc/kallsyms"


class StepGuest(Protocol):
    """What a step needs of a booted guest (harness.vm.guest.Guest)."""

    @property
    def console_log(self) -> Path: ...

    def path(self, host_path: Path) -> str: ...

    def run_logged(self, cmd: str, label: str, timeout: float = 60) -> LoggedResult: ...

    def kallsyms(self) -> str: ...


class GuestSteps:
    """Steps run one after another in one guest; its kallsyms is read and parsed once."""

    def __init__(self, guest: StepGuest, kernel: Kernel) -> None:
        self.guest = guest
        self.kernel = kernel
        self._kallsyms: KallsymsIndex | None = None
        self._parsing: Future[KallsymsIndex] | None = None
        # A guest that runs plain commands (a real one, not a replay) has its memory read.
        self.kcore = KcoreReader(guest) if isinstance(guest, KcoreGuest) else None

    def kallsyms(self) -> KallsymsIndex:
        if self._kallsyms is None:
            if self._parsing is not None:
                self._kallsyms = self._parsing.result()
            else:
                self._kallsyms = parse_kallsyms(self.guest.kallsyms(), KALLSYMS)
        return self._kallsyms

    def prefetch_kallsyms(self) -> None:
        """Read the guest's kallsyms before the first step and parse it on a host thread
        while that step runs in the guest: the parse is 0.3 s the guest would wait for."""
        if self._kallsyms is not None or self._parsing is not None:
            return
        try:
            text = self.guest.kallsyms()
        except BootError:
            return  # the first step meets the lost guest and records it
        parsing: Future[KallsymsIndex] = Future()

        def parse() -> None:
            try:
                parsing.set_result(parse_kallsyms(text, KALLSYMS))
            except BaseException as err:  # re-raised where the index is needed
                parsing.set_exception(err)

        threading.Thread(target=parse, name="kallsyms-parse", daemon=True).start()
        self._parsing = parsing

    def run(
        self,
        sample: Sample,
        expectation: Expectation,
        built: BuiltModule,
        required: Sequence[BuiltModule] = (),
    ) -> tuple[ModuleResult, Transcript]:
        """Load `built` (after `required`), judge it against `expectation`. A guest lost
        during the step is in the transcript (`crash`): the guest is no longer usable."""
        start = time.monotonic()
        recorder = _Recorder(self.guest, sample, expectation, built, required, self.kcore)
        crash = recorder.record()
        transcript = Transcript(
            sample=sample.name,
            module=sample.module,
            kernel=self.kernel.name,
            release=self.kernel.release,
            requires=tuple(dep.module for dep in required),
            commands=tuple(recorder.commands),
            crash=crash,
            console_log=str(self.guest.console_log),
            converted=built.converted,
            toolchain=built.toolchain,
            build_log=str(built.log),
            memory=recorder.memory,
        )
        index = None
        if wants_kallsyms(transcript, expectation):
            try:
                index = self.kallsyms()
            except BootError as err:
                transcript = replace(transcript, crash=_crash("kallsyms", "/proc/kallsyms", err))
        transcript = replace(transcript, seconds=round(time.monotonic() - start, 2))
        return judge(transcript, expectation, index), transcript


class _Recorder:
    def __init__(
        self,
        guest: StepGuest,
        sample: Sample,
        expectation: Expectation,
        built: BuiltModule,
        required: Sequence[BuiltModule],
        kcore: KcoreReader | None = None,
    ) -> None:
        self.guest, self.sample, self.expectation = guest, sample, expectation
        self.built, self.required, self.kcore = built, required, kcore
        self.memory: MemoryRecord | None = None
        self.commands: list[Command] = []
        self.running: tuple[Role, str] = ("load", "")  # the command under way

    def record(self) -> Crash | None:
        """Run the step's commands; how the guest was lost, if it was."""
        try:
            self._commands()
        except BootError as err:
            return _crash(*self.running, err)
        return None

    def _commands(self) -> None:
        guest, module = self.guest, self.sample.module
        loaded = True
        for dep in self.required:
            if self._run("load", dep.module, f"insmod {_q(guest.path(dep.ko))}").status != 0:
                loaded = False
                break
        if loaded:
            insmod = self._run("insmod", module, f"insmod {_q(guest.path(self.built.ko))}")
            if insmod.status == 0 and self.expectation.outcome != "refused":
                self._read_memory()
                for check in self.expectation.checks:
                    self._run("check", "", check.cmd)
            if insmod.status == 0:  # loaded, as expected or not: unload it
                self._run("rmmod", module, f"rmmod {_q(module)}")
        for dep in reversed(self.required):  # each, loaded or not
            self._run("unload", dep.module, f"rmmod {_q(dep.module)}")

    def _read_memory(self) -> None:
        """The bytes the kernel holds at each klp relocation of the module, just loaded."""
        if self.kcore is None:
            return
        self.running = ("memory", f"/proc/kcore: {self.sample.module}")
        try:
            found = module_relocs(ElfImage.load(self.built.ko))
        except (HarnessError, ValueError) as err:
            self.memory = MemoryRecord(error=f"cannot read the module's klp relocations: {err}")
            return
        fields = reads(found)  # fields outside freed init, then an arm64 .plt or ppc64 .stubs
        objects = sorted({r.obj for r in found.relocs} - {VMLINUX})
        read = self.kcore.read(self.sample.module, fields, objects)
        self.memory = record_of(
            found,
            read.bases,
            read.fields,
            read.error,
            self.built.predicted,
            self.built.table_text,
            read.symbols,
        )

    def _run(self, role: Role, module: str, cmd: str) -> Command:
        self.running = (role, cmd)
        label = f"{role} {module}" if role in ("load", "unload") else role
        logged = self.guest.run_logged(cmd, f"{self.sample.name} {label}", self.sample.timeout)
        command = Command(
            role=role,
            module=module,
            cmd=cmd,
            status=logged.result.status,
            output=logged.result.output,
            kernel=tuple(logged.lines),
            taint_before=logged.taint_before,
            taint_after=logged.taint_after,
            seconds=round(logged.result.seconds, 2),
        )
        self.commands.append(command)
        return command


def _crash(role: Role, cmd: str, err: BootError) -> Crash:
    if isinstance(err, GuestError):
        return Crash(role, cmd, err.what, err.tail)
    return Crash(role, cmd, str(err).split("\n", 1)[0])


def _q(value: object) -> str:
    return shlex.quote(str(value))
