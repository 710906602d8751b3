#!/usr/bin/env bash
# Make /dev/kvm usable on a GitHub-hosted Ubuntu runner (run with sudo): a udev rule that
# opens the device to every user, applied now, plus a chmod for the node that exists.
set -euo pipefail

if [ ! -e /dev/kvm ]; then
    echo "ci/kvm.sh: this runner has no /dev/kvm (nested virtualisation off?)" >&2
    exit 1
fi
echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' \
    > /etc/udev/rules.d/99-kvm4all.rules
udevadm control --reload-rules
udevadm trigger --name-match=kvm
chmod 0666 /dev/kvm
ls -l /dev/kvm
