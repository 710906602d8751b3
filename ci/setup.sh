#!/usr/bin/env bash
# Set up klp-harness on a fresh Debian/Ubuntu machine, then run something:
#   ci/setup.sh run  [klp-harness run options]   the sample suite on the default kernel
#   ci/setup.sh test [pytest options]            unit tests + VM tests on the default kernel
#   ci/setup.sh                                  set up only
# Installs the Debian packages it needs (as root, or through sudo) and the Python
# package in a virtualenv at .venv (override with KLP_HARNESS_VENV).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KLP_HARNESS_VENV:-$repo/.venv}
action=${1:-setup}
[ $# -gt 0 ] && shift

packages=(
    qemu-system-x86 kmod busybox-static cpio mmdebstrap debian-archive-keyring
    libelf-dev bc flex bison dwarves make gcc libc6-dev zstd xz-utils
    python3 python3-venv python3-pip git util-linux
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "klp-harness setup: installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_python() {
    local stamp="$venv/.klp-harness-installed"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    # Reinstall only when the package metadata changed.
    if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q -e "${repo}[dev]"
        touch "$stamp"
    fi
}

install_packages
install_python
export PATH="$venv/bin:$PATH"
cd "$repo"

case "$action" in
    setup) echo "klp-harness setup: done ($venv)" ;;
    run) exec klp-harness run "$@" ;;
    test) exec python -m pytest "$@" ;;
    *) echo "usage: ci/setup.sh [setup|run|test] [args...]" >&2; exit 2 ;;
esac
