#!/usr/bin/env bash
# Download the results of the default branch's last successful klp-matrix run into DIR.
#   ci/baseline.sh DIR      (needs GH_TOKEN and GITHUB_REPOSITORY; uses the gh CLI)
# Prints dir=DIR when a baseline was found, nothing when there is none yet (a first run).
set -euo pipefail

dir=${1:?usage: ci/baseline.sh DIR}
workflow=${KLP_WORKFLOW:-klp-matrix.yml}
branch=${KLP_BASELINE_BRANCH:-$(gh api "repos/$GITHUB_REPOSITORY" --jq .default_branch)}
run_id=$(gh run list --repo "$GITHUB_REPOSITORY" --workflow "$workflow" --branch "$branch" \
    --status success --limit 1 --json databaseId --jq '.[0].databaseId // empty')
if [ -z "$run_id" ]; then
    echo "ci/baseline.sh: no successful $workflow run on $branch yet: no baseline" >&2
    exit 0
fi
echo "ci/baseline.sh: baseline is run $run_id on $branch" >&2
mkdir -p "$dir"
if ! gh run download "$run_id" --repo "$GITHUB_REPOSITORY" --pattern 'klp-results-*' --dir "$dir"; then
    echo "ci/baseline.sh: run $run_id has no results artifacts (expired?): no baseline" >&2
    exit 0
fi
echo "dir=$dir"
