"""Real Debian modules and symbol-table excerpts of tests/data/packaged (see its README), shared by
the compressed-module and signing tests."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data" / "packaged"
XZ_MODULE = DATA / "xsk_diag-6.12.95+deb12.ko.xz"  # Debian 6.12: signed, then xz-compressed
SIGNED_MODULE = DATA / "tcp_vegas-6.1.0-57.ko"  # Debian 6.1: signed
TARGET_61 = ["--system-map", str(DATA / "kallsyms-6.1.0-57.excerpt")]
TARGET_61 += ["--symvers", str(DATA / "Module.symvers-6.1.0-57.excerpt")]
TARGET_612 = ["--system-map", str(DATA / "kallsyms-6.12.95+deb12.excerpt")]
TARGET_612 += ["--symvers", str(DATA / "Module.symvers-6.12.95+deb12.excerpt")]
