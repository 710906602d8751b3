"""Where the package's own files and the repository's data directories are."""

import os
import shutil
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

INCLUDE_DIR = PACKAGE_DIR / "include"
SCHEMA_FILE = PACKAGE_DIR / "schema" / "results.schema.json"
CONVERTER_DIR = PACKAGE_DIR / "klp"
BUILD_DIR = PACKAGE_DIR / "build"

KERNELS_DIR = REPO_DIR / "kernels"
CONFIGS_DIR = KERNELS_DIR / "configs"
ARCHES_FILE = KERNELS_DIR / "arches" / "arches.toml"
RELEASES_FILE = KERNELS_DIR / "releases" / "debian.toml"
MODULES_DIR = REPO_DIR / "modules"


def python_tool(name: str) -> str | None:
    """A console script of a Python dependency: beside the running interpreter (a venv's
    bin/, which need not be on PATH), else on PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
