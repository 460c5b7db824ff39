#!/usr/bin/env bash
# Installs the Debian packages the testbed drives. Idempotent: apt runs only for what is missing.
set -euo pipefail
pkgs=(mininet bridge-utils net-tools iproute2 iperf3 mptcpize tcpdump nftables iptables iputils-ping
      tayga libnetfilter-queue-dev python3-venv python3-dev gcc procps ethtool dante-server
      chromium)  # chromium: the HTML report is tested in a real browser
# QEMU guests (testbed/emulation/qemu): the emulator, busybox for their initramfs, zstd to unpack
# 6.12 kernels, and the Debian archive key for fetching Debian kernels on Ubuntu hosts too.
pkgs+=(qemu-system-x86 busybox-static zstd debian-archive-keyring)
# Remote hosts and provisioning (testbed/provision): tests start real sshd servers in namespaces.
pkgs+=(openssh-server openssh-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages ${missing[*]}; run with sudo" >&2
  exit 3
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
