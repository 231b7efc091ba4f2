#!/usr/bin/env bash
# The real Azure CLI (PyPI azure-cli) against the emulator binary, with Azure's own host names:
# the emulator listens on 127.0.0.1:443, a throwaway /etc/hosts block maps the Azure host names
# to it (restored by a trap on any exit), and az trusts the emulator's CA through
# REQUESTS_CA_BUNDLE. Then tests/azcli/ runs the seeds' commands and every az command atrest
# prints, through az, and checks what each printed. See docs/emulator.md, "Using the Azure CLI".
#
# Needs root (port 443 and /etc/hosts). Usage: scripts/azcli-tests.sh [ATREST_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ATREST=${1:-$ROOT/target/debug/atrest}

if [ "$(id -u)" != 0 ]; then
  echo "scripts/azcli-tests.sh needs root: it listens on 127.0.0.1:443 and maps Azure host names in /etc/hosts (run it with sudo)" >&2
  exit 1
fi
if [ ! -x "$ATREST" ]; then
  echo "no atrest binary at $ATREST: run 'cargo build -p atrest-cli' first" >&2
  exit 1
fi

# azure-cli pins exact versions of msal, azure-core and the azure-mgmt-* SDKs, which conflict
# with tests/conformance/requirements.txt, so it gets a virtualenv of its own.
VENV="$ROOT/target/azcli-venv"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/azcli/requirements.txt

WORK=$(mktemp -d)
HOSTS_BACKUP="$WORK/hosts.orig"
EMU_PID=""
restore() {
  # Restore /etc/hosts by content (it may be a bind mount, which a rename would not replace).
  if [ -f "$HOSTS_BACKUP" ]; then cat "$HOSTS_BACKUP" >/etc/hosts; fi
  if [ -n "$EMU_PID" ]; then kill "$EMU_PID" 2>/dev/null || true; wait "$EMU_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap restore EXIT
trap 'exit 130' INT TERM

# The vaults the tests create; each needs its own /etc/hosts line (no wildcards there).
export AZCLI_VAULTS="azcli-policy-kv azcli-rbac-kv"

"$ATREST" emulator --listen 127.0.0.1:443 --data-dir "$WORK/emu" --log warn >"$WORK/emu.log" 2>&1 &
EMU_PID=$!
for _ in $(seq 1 600); do
  [ -s "$WORK/emu/emulator.json" ] && break
  if ! kill -0 "$EMU_PID" 2>/dev/null; then
    echo "the emulator exited before it was ready:" >&2; cat "$WORK/emu.log" >&2; exit 1
  fi
  sleep 0.1
done
[ -s "$WORK/emu/emulator.json" ] || { echo "the emulator was not ready within 60 s" >&2; cat "$WORK/emu.log" >&2; exit 1; }

cp /etc/hosts "$HOSTS_BACKUP"
{
  echo "# atrest azcli-tests (temporary; restored when scripts/azcli-tests.sh exits)"
  printf '127.0.0.1 login.microsoftonline.com management.azure.com graph.microsoft.com'
  for v in $AZCLI_VAULTS; do printf ' %s.vault.azure.net' "$v"; done
  echo
} >>/etc/hosts

export AZURE_CONFIG_DIR="$WORK/az"          # a throwaway az profile, never the user's
export REQUESTS_CA_BUNDLE="$WORK/emu/ca.pem" # az (requests and MSAL) trusts the emulator's CA
export AZURE_CORE_COLLECT_TELEMETRY=false
export AZURE_CORE_NO_COLOR=true
export ATREST_EMULATOR_JSON="$WORK/emu/emulator.json"
export AZ="$VENV/bin/az"
export ATREST_SOURCE_ROOT="$ROOT"
status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/azcli || status=$?
if [ "$status" != 0 ]; then echo "--- emulator log ---" >&2; tail -n 50 "$WORK/emu.log" >&2; fi
exit "$status"
