"""What one module step did in the guest, as data: every command with its output, exit
status, the kernel lines it caused and the taint around it, or how the guest died.

harness.suite.steps records it (the only part that talks to the guest); the verdict,
harness.suite.judge, reads nothing else. A run saves one per step as JSON
(`transcripts/<kernel name>/<sample>.json` in the run directory); `load_transcript` reads
it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from harness.errors import HarnessError
from harness.fileio import atomic_write_text
from harness.suite.jsonfields import json_int, json_str
from harness.suite.memcheck import MemoryRecord

SCHEMA = "klp-harness/transcript/1"
DIRECTORY = "transcripts"  # in a run's directory

# load/unload: a required module, before and after; insmod/rmmod: the sample's own module;
# check: an expect.toml check; kallsyms: reading the guest's /proc/kallsyms; memory: reading
# the loaded module's relocated fields through /proc/kcore.
Role = Literal["load", "insmod", "check", "rmmod", "unload", "kallsyms", "memory"]
ROLES: tuple[Role, ...] = get_args(Role)


class TranscriptError(HarnessError):
    """A transcript file that is not one."""


@dataclass(frozen=True)
class Command:
    """One guest command of the step and what the kernel did meanwhile."""

    role: Role
    module: str  # the module loaded or unloaded ("" for a check)
    cmd: str  # the shell text, as run
    status: int  # the shell's $?
    output: str  # stdout and stderr
    kernel: tuple[str, ...]  # kernel log messages it caused (after its canary, no timestamps)
    taint_before: int  # /proc/sys/kernel/tainted
    taint_after: int
    seconds: float = 0.0


@dataclass(frozen=True)
class Crash:
    """The guest was lost during the step (panic, hang, hostile shared dir, broken shell)."""

    role: Role  # what was running
    cmd: str
    what: str  # the one-line cause
    tail: tuple[str, ...] = ()  # the console's last lines at that moment


@dataclass(frozen=True)
class Transcript:
    sample: str
    module: str  # the sample's .ko base name
    kernel: str  # the kernel's name, e.g. "debian-6.1.0-57-amd64"
    release: str  # its `uname -r`
    requires: tuple[str, ...] = ()  # modules that must load first (and unload after)
    commands: tuple[Command, ...] = ()  # in the order run
    crash: Crash | None = None
    seconds: float = 0.0  # the whole step
    console_log: str = ""  # the boot's console log
    converted: tuple[str, ...] = ()  # of the build that was loaded: ".klp.sym" names
    toolchain: str = ""
    build_log: str = ""
    # The module's klp relocations and the memory at each, read right after it loaded;
    # None when not read (not loaded, a refusal, a replayed guest, an older transcript).
    memory: MemoryRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), as `save` writes and `from_json` reads."""
        fields = asdict(self)
        if self.memory is None:  # not read: left out, as files from before it was
            del fields["memory"]
        else:
            fields["memory"] = self.memory.to_json()
        data: dict[str, Any] = json.loads(json.dumps({"schema": SCHEMA, **fields}))
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "transcript") -> Transcript:
        """The transcript `to_json` wrote; anything else raises TranscriptError."""
        try:
            if data.get("schema") != SCHEMA:
                raise TranscriptError(f"{source}: not a {SCHEMA} file")
            crash = data.get("crash")
            memory = data.get("memory")
            return cls(
                sample=json_str(data["sample"]),
                module=json_str(data["module"]),
                kernel=json_str(data["kernel"]),
                release=json_str(data["release"]),
                requires=_strs(data["requires"]),
                commands=tuple(_command(c) for c in data["commands"]),
                crash=None if crash is None else _crash(crash),
                seconds=float(data["seconds"]),
                console_log=json_str(data["console_log"]),
                converted=_strs(data["converted"]),
                toolchain=json_str(data["toolchain"]),
                build_log=json_str(data["build_log"]),
                memory=None if memory is None else MemoryRecord.from_json(memory),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise TranscriptError(f"{source}: malformed transcript: {err!r}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")


def transcript_file(results_dir: Path, kernel: str, sample: str) -> Path:
    """Where a run in `results_dir` keeps the transcript of `sample` on `kernel`."""
    return results_dir / DIRECTORY / kernel / f"{sample}.json"


def load_transcript(path: Path) -> Transcript:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise TranscriptError(f"{path}: cannot read: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TranscriptError(f"{path}: not JSON: {err}") from None
    return Transcript.from_json(data, str(path))


def _strs(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return tuple(json_str(v) for v in value)


def _role(value: object) -> Role:
    role = next((r for r in ROLES if r == value), None)
    if role is None:
        raise ValueError(f"unknown role {value!r}")
    return role


def _command(data: dict[str, Any]) -> Command:
    return Command(
        role=_role(data["role"]),
        module=json_str(data["module"]),
        cmd=json_str(data["cmd"]),
        status=json_int(data["status"]),
        output=json_str(data["output"]),
        kernel=_strs(data["kernel"]),
        taint_before=json_int(data["taint_before"]),
        taint_after=json_int(data["taint_after"]),
        seconds=float(data["seconds"]),
    )


def _crash(data: dict[str, Any]) -> Crash:
    return Crash(
        role=_role(data["role"]),
        cmd=json_str(data["cmd"]),
        what=json_str(data["what"]),
        tail=_strs(data["tail"]),
    )
