#!/usr/bin/env bash
# The static checks, quick, run before any test (by `ci/setup.sh test`, so by .ci/run, and by
# the workflow's Checks job): ruff's lint rules, ruff's formatting and mypy --strict over every
# Python file of the repository. Each check runs even when an earlier one failed, so one run
# shows every problem; the exit status is 1 when any failed.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KLP_HARNESS_VENV:-$repo/.venv}
cd "$repo" || exit 1
paths=(harness tests ci bench)
failed=()

check() {
    local name=$1
    shift
    echo "ci/lint.sh: $name"
    "$@" || failed+=("$name")
}

check "ruff check" "$venv/bin/ruff" check "${paths[@]}"
check "ruff format --check" "$venv/bin/ruff" format --check "${paths[@]}"
check "mypy --strict" "$venv/bin/mypy" --strict "${paths[@]}"

if [ ${#failed[@]} -gt 0 ]; then
    echo "ci/lint.sh: failed: $(printf '%s, ' "${failed[@]}" | sed 's/, $//')" >&2
    exit 1
fi
echo "ci/lint.sh: clean"
