#!/usr/bin/env bash
# Builds the Debian rootfs the system test boots with systemd-nspawn (once; ~1 min, ~660 MB):
# systemd, PostgreSQL 15, and the test driver unit (which runs the bind-mounted driver.sh).
set -euo pipefail
root=${COLLECTOR_ROOTFS:-/var/tmp/collector-rootfs}
here=$(cd "$(dirname "$0")" && pwd)
command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null || {
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap systemd-container
}
if [ ! -x "$root/usr/bin/systemctl" ]; then
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,postgresql-15,adduser,procps \
    bookworm "$root" http://deb.debian.org/debian
fi
install -m 0644 "$here/driver.service" "$root/etc/systemd/system/collector-driver.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/collector-driver.service "$root/etc/systemd/system/multi-user.target.wants/collector-driver.service"
echo "$root"
