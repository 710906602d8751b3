"""The transcripts of tests/data/transcripts (real boots) and what judging them needs."""

from __future__ import annotations

import json
from pathlib import Path

from harness.kernels.kernel import Kernel
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.results import ModuleResult
from harness.suite.samples import Expectation, Sample, find_sample
from harness.suite.transcript import Transcript, load_transcript

DATA = Path(__file__).parent / "data" / "transcripts"
HOSTILE = Path(__file__).parent / "hostile"
USERMOD = Path(__file__).parent / "usermod"
BOOTS = ("samples", "hostile", "guard")
KERNEL_NAME = "debian-6.1.0-57-amd64"


def kernel(boot: str) -> Kernel:
    """The captured kernel, as far as expectations and run results read it."""
    where = DATA / boot
    if boot == "guard":  # the source-built 6.1 without CONFIG_LIVEPATCH
        spec, name, release = "source:6.1:no-livepatch", "source-6.1-no-livepatch", "6.1.192"
    else:
        spec, name, release = "debian:bookworm", KERNEL_NAME, "6.1.0-57-amd64"
    return Kernel(
        spec=spec,
        name=name,
        release=release,
        package_version="6.1.192-3",
        vmlinuz=where / "no-vmlinuz",
        modules_dir=where,
        config=where / "config.excerpt",
        headers=where,
        symvers=where,
        kallsyms=where / "kallsyms.excerpt",
    )


def transcripts(boot: str) -> dict[str, Transcript]:
    paths = sorted(p for p in (DATA / boot).glob("*.json") if p.name != "results.json")
    return {p.stem: load_transcript(p) for p in paths}


def kallsyms(boot: str) -> KallsymsIndex:
    return parse_kallsyms((DATA / boot / "kallsyms.excerpt").read_text(), f"{boot} kallsyms")


def results(boot: str) -> dict[str, ModuleResult]:
    """What the run that captured `boot` reported, per sample."""
    data = json.loads((DATA / boot / "results.json").read_text())
    (only,) = data["kernels"]
    return {m["sample"]: ModuleResult.from_json(m) for m in only["modules"]}


def sample(name: str) -> Sample:
    hostile = HOSTILE / name
    if name == USERMOD.name:
        return find_sample(str(USERMOD))
    return find_sample(str(hostile) if hostile.is_dir() else name)


def expectation(boot: str, name: str) -> Expectation:
    return sample(name).expectation(kernel(boot))
