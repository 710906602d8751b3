#!/usr/bin/env bash
# The report job: merge every kernel's results into one report (report/report.{md,html,xml}),
# add the Markdown to the step summary, and exit 1 on a regression against the baseline.
#   ci/report.sh CURRENT_DIR [BASELINE_DIR]     (BASELINE_DIR empty or absent: no baseline)
set -uo pipefail

current=${1:?usage: ci/report.sh CURRENT_DIR [BASELINE_DIR]}
baseline=${2:-}
out=${KLP_REPORT_DIR:-report}
args=("$current")
if [ -n "$baseline" ] && [ -d "$baseline" ]; then
    args+=(--baseline "$baseline")
fi

mkdir -p "$out"
klp-harness report "${args[@]}" --fail-on never -o "$out/report.html" || exit $?
klp-harness report "${args[@]}" --fail-on never -o "$out/report.xml" || exit $?
klp-harness report "${args[@]}" -o "$out/report.md"
status=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$out/report.md" ]; then
    cat "$out/report.md" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
