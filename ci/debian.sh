#!/usr/bin/env bash
# A long-lived Debian container for the CI jobs, given /dev/kvm; its own apt sources are the
# Debian mirror the harness uses (set the repository variable KLP_DEBIAN_MIRROR to point
# them at another mirror). The workspace is mounted at the same path, so recorded paths hold.
#   ci/debian.sh start IMAGE [--no-kvm]  start it (e.g. debian:bookworm); --no-kvm: without
#                                        /dev/kvm (the Checks job boots nothing)
#   ci/debian.sh exec CMD...             run CMD in it, in the workspace
#   ci/debian.sh stop                    give the files it made back to the runner's user,
#                                        remove it
# --privileged: the harness's build roots need mount namespaces (unshare --mount, chroot).
set -euo pipefail

name=${KLP_CONTAINER:-klp-debian}
workspace=${GITHUB_WORKSPACE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
usage="usage: ci/debian.sh start IMAGE [--no-kvm] | exec CMD... | stop"
action=${1:?$usage}
shift

case "$action" in
    start)
        image=${1:?$usage}
        kvm=(--device /dev/kvm)
        case "${2:-}" in
            "") ;;
            --no-kvm) kvm=() ;;
            *) echo "$usage" >&2; exit 2 ;;
        esac
        docker run -d --name "$name" --privileged "${kvm[@]}" \
            -v "$workspace:$workspace" -w "$workspace" \
            -e CI=true -e KLP_HARNESS_CACHE -e KLP_HARNESS_DEBUG \
            "$image" sleep infinity
        if [ -n "${KLP_DEBIAN_MIRROR:-}" ]; then
            # deb822 and one-line sources alike: every URI ending in /debian becomes the mirror
            docker exec -e MIRROR="$KLP_DEBIAN_MIRROR" "$name" sh -c \
                'for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
                     [ -f "$f" ] && sed -E -i "s#[a-z]+://[^ ]+/debian( |$)#$MIRROR\1#" "$f"
                 done; true'
        fi
        docker exec "$name" sh -c 'grep -rh "^URIs\|^deb " /etc/apt/sources.list* || true'
        if [ ${#kvm[@]} -gt 0 ]; then
            docker exec "$name" sh -c 'test -r /dev/kvm && test -w /dev/kvm && ls -l /dev/kvm'
        fi
        ;;
    exec)
        docker exec -w "$workspace" "$name" "$@"
        ;;
    stop)
        docker exec "$name" chown -R "$(id -u):$(id -g)" "$workspace" || true
        docker rm -f "$name" >/dev/null
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
