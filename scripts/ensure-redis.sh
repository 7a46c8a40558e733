#!/usr/bin/env bash
# Install redis-server for the multi-process budget tests if it is missing. The tests start their own
# server on a free loopback port; they skip with a clear reason only where it cannot be installed.
set -u
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
echo "installing redis-server for the Redis ledger tests..."
if ! ($SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
      ($SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q redis-server >/dev/null 2>&1)); then
  echo "warning: could not install redis-server; Redis tests will be skipped" >&2
fi
# Debian starts a system service on install; our tests start their own server, so stop it if it ran.
($SUDO service redis-server stop >/dev/null 2>&1 || true)
exit 0
