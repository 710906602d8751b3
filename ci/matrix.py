#!/usr/bin/env python3
"""The GitHub Actions job matrix: one job per kernel declared in kernels/*.toml.

    python ci/matrix.py                  # {"include": [{"name": ..., "spec": ..., ...}, ...]}
    python ci/matrix.py --github-output  # matrix=<json>, for >> "$GITHUB_OUTPUT"
    python ci/matrix.py --only bookworm,trixie

`local:` kernels name a tree on one machine, so they get no job (listed on stderr).
Kernels built from source (`source:`) get a longer timeout; a kernel of another architecture
(`source:7.3:livepatch:arm64`) runs under TCG on the x86-64 runner: its job skips the KVM check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.errors import HarnessError
from harness.kernels.spec import KernelDecl, load_declared, parse_spec

# Job timeouts in minutes: a Debian kernel is fetched, a source kernel is built first.
TIMEOUTS = {"debian-suite": 60, "debian-abi": 60, "source": 150}
# What artifact names, cache keys and job ids accept (a declared name already is this).
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def job(decl: KernelDecl) -> dict[str, Any]:
    spec = parse_spec(decl.spec)
    kind = spec.kind
    return {
        "name": decl.name,
        "spec": decl.spec,
        "kind": kind,
        "arch": spec.arch,
        "timeout": TIMEOUTS[kind],
        "description": decl.description,
    }


def matrix(
    kernels_dir: Path | None = None, only: set[str] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The matrix and the declared kernels left out (with why)."""
    include, left_out = [], []
    for decl in load_declared(kernels_dir):
        if only is not None and decl.name not in only:
            continue
        if parse_spec(decl.spec).kind == "local":
            left_out.append(f"{decl.name}: {decl.spec} is a tree on one machine")
            continue
        if not JOB_ID.match(decl.name):
            raise HarnessError(f"kernel name {decl.name!r} cannot name a CI job")
        include.append(job(decl))
    if only is not None:
        unknown = only - {j["name"] for j in include} - {o.split(":")[0] for o in left_out}
        if unknown:
            raise HarnessError(f"--only: no declared kernel named {', '.join(sorted(unknown))}")
    if not include:
        raise HarnessError("no kernel to run: the matrix would be empty")
    return {"include": include}, left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kernels-dir", type=Path, help="default: the repository's kernels/")
    parser.add_argument("--only", help="comma- or space-separated kernel names")
    parser.add_argument("--github-output", action="store_true", help="print matrix=<json>")
    args = parser.parse_args(argv)
    only = set(re.split(r"[\s,]+", args.only.strip())) - {""} if args.only else None
    try:
        result, left_out = matrix(args.kernels_dir, only or None)
    except HarnessError as err:
        print(f"ci/matrix.py: {err}", file=sys.stderr)
        return 1
    for line in left_out:
        print(f"ci/matrix.py: no job for {line}", file=sys.stderr)
    text = json.dumps(result, separators=(",", ":"))
    print(f"matrix={text}" if args.github_output else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
