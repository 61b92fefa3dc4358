#!/usr/bin/env bash
# Package checks (run by .ci/run): build the .deb, verify the unit (any output fails),
# score its sandbox (exposure <= 2.0), check the package's contents, then install, upgrade
# with an edited conffile, remove and purge it on this machine (as root; without systemd as
# PID 1 the unit is not started).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
echo "==> packaging/copyright names every statically linked crate (regenerate with packaging/gen-copyright.py)"
diff -u packaging/copyright <(python3 packaging/gen-copyright.py) || { echo "packaging/copyright is stale"; exit 1; }
cargo build --release --locked
deb=$(cargo deb --no-build 2>/dev/null | tail -1)
echo "==> built $deb"

echo "==> lintian: errors and warnings fail"
# Informational tags left, on purpose: no init.d script (systemd only), no md5sums (cargo-deb),
# a stripped Rust binary's .comment section and fortify (Rust does not use glibc's _chk
# functions), and "spelling" in random bytes of the binary.
command -v lintian >/dev/null || { apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian; }
lintian --fail-on error,warning "$deb"

echo "==> package contents"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/collector ./etc/collector/collector.toml ./usr/lib/systemd/system/collector.service \
         ./usr/lib/sysusers.d/collector.conf ./usr/share/man/man1/collector.1.gz ./usr/share/doc/collector/copyright \
         ./usr/lib/systemd/catalog/collector.catalog ./usr/share/doc/collector/changelog.Debian.gz; do
  grep -q " $f\$" <<<"$contents" || grep -q " $f -> " <<<"$contents" || { echo "missing $f in $deb"; echo "$contents"; exit 1; }
done
info=$(dpkg-deb -I "$deb")
grep -q '^ Depends:.*ca-certificates' <<<"$info" || { echo "Depends lacks ca-certificates"; exit 1; }
grep -q '^ Recommends:.*postgresql' <<<"$info" || { echo "Recommends lacks postgresql"; exit 1; }
ctl=$(mktemp -d); dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/collector/collector.toml "$ctl/conffiles" || { echo "collector.toml is not a conffile"; exit 1; }

echo "==> install"
# dpkg -i does not fetch dependencies: make sure the package's are here.
for dep in adduser ca-certificates; do
  dpkg -s "$dep" >/dev/null 2>&1 || { apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$dep"; }
done
dpkg -i "$deb" >/dev/null
getent passwd collector >/dev/null || { echo "no collector user"; exit 1; }
[ "$(stat -c %a /etc/collector/db-password)" = 600 ] || { echo "db-password is not 0600"; exit 1; }
/usr/bin/collector --version
/usr/bin/collector check-config --config /etc/collector/collector.toml >/dev/null

echo "==> unit: systemd-analyze verify (no output allowed) and security"
out=$(systemd-analyze verify --man=no /usr/lib/systemd/system/collector.service 2>&1 || true)
if [ -n "$out" ]; then echo "systemd-analyze verify said:"; echo "$out"; exit 1; fi
systemd-analyze security --offline=true --threshold=20 /usr/lib/systemd/system/collector.service | tail -1

echo "==> upgrade keeps an edited conffile"
sed -i 's/^log_interval_secs = 60/log_interval_secs = 61/' /etc/collector/collector.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q '^log_interval_secs = 61' /etc/collector/collector.toml || { echo "upgrade lost the edit"; exit 1; }

echo "==> remove keeps configuration, purge removes it"
dpkg -r collector >/dev/null
[ ! -e /usr/bin/collector ] || { echo "binary left after remove"; exit 1; }
[ -e /etc/collector/collector.toml ] || { echo "conffile removed by remove"; exit 1; }
dpkg -P collector >/dev/null
[ ! -e /etc/collector ] || { echo "/etc/collector left after purge"; ls -la /etc/collector; exit 1; }
getent passwd collector >/dev/null || { echo "purge removed the system user (Debian practice keeps it)"; exit 1; }
echo "package checks passed"
