#!/usr/bin/env bash
# The system test: builds the package, prepares the rootfs, and runs the ignored test
# `system_package_under_real_systemd`, which boots the rootfs with systemd-nspawn (systemd
# as PID 1) beside an in-process fake Polymarket and runs tests/system/driver.sh inside.
# Needs root. Takes ~3 min after the first rootfs build.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --locked
deb=$(cargo deb --no-build 2>/dev/null | tail -1)
export COLLECTOR_ROOTFS=$(bash tests/system/make-rootfs.sh | tail -1)
export COLLECTOR_DEB=$(realpath "$deb")
cargo test --release --locked --test integration system_package_under_real_systemd -- --ignored --nocapture
