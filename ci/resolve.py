#!/usr/bin/env python3
"""The cache key of a kernel's downloaded packages: its exact package versions, resolved
through apt (the harness's private apt root over this machine's Debian mirror).

    python ci/resolve.py SPEC   # prints key=<...> and packages=<...>, for >> "$GITHUB_OUTPUT"

debian:SPEC -> the image ABI and version (packages of the cloud flavour differ from the
generic ones of the same version, so both are in the key); source:X.Y:CONFIG -> the
linux-source-X.Y version (any config uses the same package). Other specs print an empty
key: nothing to cache.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cache import cache_key
from harness.errors import HarnessError
from harness.kernels.spec import Spec, parse_spec, resolve_name


def resolve(spec: Spec) -> tuple[str, list[str]]:
    """(cache key, name=version of every package) for `spec`."""
    from harness.kernels.apt import apt_root
    from harness.kernels.resolve import resolve as resolve_spec

    if spec.kind in ("debian-suite", "debian-abi"):
        res = resolve_spec(spec.text)
        return f"debs-{cache_key(res.abi)}-{cache_key(res.version)}", [
            f"{p.name}={p.version}" for p in res.packages
        ]
    if spec.kind == "source" and re.fullmatch(r"\d+\.\d+", spec.ref):
        package = f"linux-source-{spec.ref}"
        rec = apt_root().show(package)
        if rec is None:
            raise HarnessError(f"{spec.text}: no package {package} on the mirror")
        return f"debs-{package}-{cache_key(rec['Version'])}", [f"{package}={rec['Version']}"]
    return "", []


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: ci/resolve.py SPEC", file=sys.stderr)
        return 2
    try:
        key, packages = resolve(parse_spec(resolve_name(argv[0])))
    except HarnessError as err:
        print(f"ci/resolve.py: {err}", file=sys.stderr)
        return 1
    print(f"key={key}")
    print(f"packages={' '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
