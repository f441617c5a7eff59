#!/usr/bin/env bash
# Install Prometheus and promtool from Debian when either is missing (tests/test_monitoring.py
# needs both). Idempotent: when both are on PATH it does nothing and exits at once.
# It never leaves a Prometheus service running: a policy-rc.d that forbids service starts is
# in place for the install, and any daemon the package started anyway is stopped afterwards.
# --force runs the apt-get steps even when both binaries are already there.
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" = 0 ] && command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  echo "install-prometheus: $(prometheus --version 2>&1 | head -n 1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: apt-get not found; install prometheus and promtool by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi

policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  # 101 = "action forbidden": invoke-rc.d starts no service during the install.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  added_policy=1
fi
cleanup() {
  if [ "$added_policy" = 1 ]; then
    $SUDO rm -f "$policy"
  fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

# Belt and braces: with systemd the unit may have been enabled/started regardless of
# policy-rc.d. Stop and disable it; the tests start their own Prometheus on loopback.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
  $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

echo "install-prometheus: $(prometheus --version 2>&1 | head -n 1)"
