#!/usr/bin/env bash
# One CI job's suite run, inside the Debian container: every sample on one kernel.
#   ci/suite.sh SPEC RESULTS_DIR
# `klp-harness run` exits 1 when an outcome is not the expected one: that is for the report
# job to judge against the baseline, so it does not fail this job; anything else does
# (usage, a crash). The results and console logs are in RESULTS_DIR/run-*/ either way.
set -uo pipefail

spec=${1:?usage: ci/suite.sh SPEC RESULTS_DIR}
results=${2:?usage: ci/suite.sh SPEC RESULTS_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --allow-no-livepatch: on kernels without livepatch the suite proves the guard's refusal.
"$repo/.venv/bin/klp-harness" run --kernel "$spec" --results "$results" --allow-no-livepatch
status=$?
if [ "$status" -gt 1 ]; then
    echo "ci/suite.sh: klp-harness run exited $status" >&2
    exit "$status"
fi
if ! compgen -G "$results/run-*/results.json" >/dev/null; then
    echo "ci/suite.sh: no results.json under $results" >&2
    exit 1
fi
exit 0
