#!/bin/bash
# Runs inside the container, under systemd as PID 1 (driver.service). Installs the package
# and checks what a Debian operator would do; writes "OK name" / "FAIL name" lines to
# /results/log, details to /results/detail, then powers off.
set -u
log() { echo "$*" >> /results/log; }
check() {
    local name=$1; shift
    echo "--- $name: $*" >> /results/detail
    if "$@" >> /results/detail 2>&1; then log "OK $name"; else log "FAIL $name"; fi
}
wait_for() { # seconds, command...
    local secs=$1; shift
    for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    return 1
}
prop() { systemctl show -p "$1" --value collector; }
fake=$(cat /results/fake_url)
ws=$(cat /results/ws_url)

wait_for 60 runuser -u postgres -- pg_isready -q || log "FAIL postgresql did not start"
check install dpkg -i /pkg/collector.deb
check unit_enabled systemctl is-enabled collector
# Not configured yet: the role does not exist. It must stop with 78, not crash-loop.
check unconfigured_stops_with_78 wait_for 60 bash -c '[ "$(systemctl show -p ExecMainStatus --value collector)" = 78 ] && ! systemctl is-active -q collector'
check unconfigured_no_restart_loop bash -c '[ "$(systemctl show -p NRestarts --value collector)" = 0 ]'
journalctl -u collector --no-pager | tail -5 >> /results/detail

# The README's database setup.
runuser -u postgres -- createuser collector
runuser -u postgres -- createdb -O collector collector
pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
runuser -u postgres -- psql -q -c "ALTER ROLE collector PASSWORD '$pw'"
echo "$pw" > /etc/collector/db-password
# Point it at the fake Polymarket beside the container, fast cadences for the test.
sed -i -e "s|^gamma_url = .*|gamma_url = \"$fake\"|" -e "s|^clob_url = .*|clob_url = \"$fake\"|" \
       -e "s|^data_url = .*|data_url = \"$fake\"|" -e "s|^ws_url = .*|ws_url = \"$ws\"|" \
       -e "s|^log_interval_secs = .*|log_interval_secs = 2|" -e "s|^interval_secs = .*|interval_secs = 2|" \
       -e "s|^full_sweep_interval_secs = .*|full_sweep_interval_secs = 2|" \
       -e "s|^refresh_interval_secs = .*|refresh_interval_secs = 2|" /etc/collector/collector.toml
check check_config collector check-config --config /etc/collector/collector.toml
mkdir -p /etc/systemd/system/collector.service.d
printf '[Service]\nWatchdogSec=6\n' > /etc/systemd/system/collector.service.d/test.conf
systemctl daemon-reload
systemctl reset-failed collector
check start systemctl start collector
check active systemctl is-active collector
check status_line wait_for 30 bash -c 'systemctl status collector --no-pager | grep -q "Status: \"markets 3 |"'
systemctl status collector --no-pager >> /results/detail 2>&1
check catalog_stored wait_for 30 bash -c '[ "$(runuser -u postgres -- psql -tAc "SELECT count(*) FROM markets" collector)" = 3 ]'
check trades_stored wait_for 30 bash -c '[ "$(runuser -u postgres -- psql -tAc "SELECT count(*) FROM trades" collector)" -ge 1 ]'
check journal_health_fields wait_for 30 bash -c 'journalctl -u collector -o json MESSAGE_ID=6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a60 | grep -q "\"TASKS_ALIVE\""'
check journal_lifecycle bash -c 'journalctl -u collector -o json MESSAGE_ID=6f1c9a3e2b7d4c0e9a8b5d3f1e2c4a67 | grep -q "collector running"'
check status_command bash -c 'collector status | grep -q "=== Daemon Health ==="'

# Reload through systemd (ExecReload: SIGHUP; RELOADING=1 … READY=1): applied live, and a bad
# file is refused while the service runs on.
sed -i 's/^level = "info"/level = "debug"/' /etc/collector/collector.toml
check reload systemctl reload collector
check reload_applied wait_for 20 bash -c 'journalctl -u collector --no-pager | grep -q "configuration reloaded: applied \[log.level\]"'
cp /etc/collector/collector.toml /tmp/collector.toml.good
echo 'mystery = 1' >> /etc/collector/collector.toml
systemctl reload collector >> /results/detail 2>&1
check reload_bad_refused wait_for 20 bash -c 'journalctl -u collector --no-pager | grep -q "reload refused"'
check reload_kept_running bash -c 'systemctl is-active -q collector && [ "$(systemctl show -p NRestarts --value collector)" = 0 ]'
cp /tmp/collector.toml.good /etc/collector/collector.toml

# A wedged process (SIGSTOP) stops pinging; systemd's watchdog kills and restarts it.
pid=$(prop MainPID)
kill -STOP "$pid"
check watchdog_restart wait_for 60 bash -c "[ \"\$(systemctl show -p NRestarts --value collector)\" -ge 1 ] && [ \"\$(systemctl show -p MainPID --value collector)\" != $pid ] && systemctl is-active -q collector"
journalctl -u collector --no-pager | grep -i watchdog | tail -3 >> /results/detail

# A clean stop drains and exits 0.
check stop systemctl stop collector
check stop_exit_0 bash -c '[ "$(systemctl show -p ExecMainStatus --value collector)" = 0 ] && [ "$(systemctl show -p Result --value collector)" = success ]'
check planned_gap bash -c '[ "$(runuser -u postgres -- psql -tAc "SELECT count(*) FROM stream_gaps WHERE planned" collector)" -ge 1 ]'

# Upgrade (reinstall) keeps an edited conffile and restarts the service.
sed -i 's/^log_interval_secs = 2/log_interval_secs = 3/' /etc/collector/collector.toml
systemctl start collector
check upgrade dpkg -i --force-confold /pkg/collector.deb
check upgrade_keeps_conffile grep -q '^log_interval_secs = 3' /etc/collector/collector.toml
check running_after_upgrade wait_for 30 systemctl is-active collector

# Remove stops it; purge removes the configuration and spool (the database and the system user stay).
check remove dpkg -r collector
check removed_stopped bash -c '! systemctl is-active -q collector && [ ! -e /usr/bin/collector ] && [ -e /etc/collector/collector.toml ]'
check purge dpkg -P collector
check purged_clean bash -c '[ ! -e /etc/collector ] && [ ! -e /var/lib/collector ] && getent passwd collector >/dev/null'
check database_kept bash -c '[ "$(runuser -u postgres -- psql -tAc "SELECT count(*) FROM markets" collector)" = 3 ]'
log DONE
systemctl poweroff
