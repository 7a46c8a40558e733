#!/usr/bin/env bash
# Install what the tests run against, where missing: redis-server (Redis ledger, shared budgets), PostgreSQL
# (the PostgreSQL ledger), and Chromium with its driver (the dashboard's browser test, driven by Selenium through
# the distribution's chromedriver: nothing downloads a browser). The tests start their own servers on free
# loopback ports in temp dirs (PostgreSQL as an unprivileged user: it refuses to run as root); they skip with a
# clear reason only where these cannot be installed.
set -u
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
have_postgres || missing="$missing postgresql"
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
if [ -z "$missing" ]; then exit 0; fi

echo "installing$missing for the tests..."
if ! ($SUDO apt-get install -y -q $missing >/dev/null 2>&1 || \
      ($SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q $missing >/dev/null 2>&1)); then
  echo "warning: could not install$missing; the tests that need them will be skipped" >&2
fi
# Debian starts system services on install; the tests start their own servers, so stop those if they ran.
($SUDO service redis-server stop >/dev/null 2>&1 || true)
($SUDO service postgresql stop >/dev/null 2>&1 || true)
exit 0
