#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, builds, checks
# formatting and lints, runs every Rust test (which start real servers on 127.0.0.1:0), then
# starts the emulator binary and runs the conformance tests with the official Azure SDK for
# Python against it, and finally checks that `atrest up` (the README's run command) works.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
step() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

# Debian packages the tests need, installed only when missing (idempotent). PostgreSQL: the
# store tests start a throwaway cluster with initdb (as the postgres user when run as root).
need_apt=()
# MariaDB (server, client, key-management plugin) for the MariaDB engine's tests (crates/node/tests/mariadb.rs).
for pkg in ca-certificates curl jq postgresql mariadb-server mariadb-client mariadb-plugin-hashicorp-key-management; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

step "Python environment for the conformance tests (azure-identity, azure-keyvault-keys, schemathesis)"
VENV="$ROOT/target/conformance-venv"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/conformance/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit and integration tests against real servers)"
cargo test --workspace --locked

step "building the atrest binary"
cargo build -p atrest-cli --locked
ATREST="$ROOT/target/debug/atrest"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for_file() { # file seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

step "conformance: the official Azure SDK for Python against the emulator binary"
"$ATREST" emulator --listen 127.0.0.1:0 --data-dir "$WORK/emu" >"$WORK/emu.log" 2>&1 &
PIDS+=($!)
wait_for_file "$WORK/emu/emulator.json" 60
ATREST_EMULATOR_JSON="$WORK/emu/emulator.json" "$VENV/bin/python" -m pytest -q tests/conformance

step "the real Azure CLI: the seeds' az commands and every az command atrest prints (scripts/azcli-tests.sh)"
$SUDO "$ROOT/scripts/azcli-tests.sh" "$ATREST"

step "control plane: atrest up, then Atlas clients (requests Digest, curl --digest, OAuth) and schemathesis against the official Atlas spec"
"$ATREST" up --data-dir "$WORK/served" >"$WORK/served.out" 2>"$WORK/served.err" &
UP_PID=$!
PIDS+=($UP_PID)
wait_for_file "$WORK/served/up.json" 180
# up.json is written last, after the guide: the whole guide is on stdout by now.
ATREST_UP_JSON="$WORK/served/up.json" "$VENV/bin/python" -m pytest -q -s tests/control_conformance

step "a second atrest up on a data dir in use is refused at once, naming the PID that holds it"
if "$ATREST" up --data-dir "$WORK/served" --no-wait >"$WORK/up-busy.out" 2>&1; then
  echo "a second up on the same data dir must fail" >&2; cat "$WORK/up-busy.out"; exit 1
fi
cat "$WORK/up-busy.out"
grep -q "process $UP_PID holds" "$WORK/up-busy.out"

step "atrest doctor: the stored configuration (left valid by the seeds' flow above), then a missing key"
GROUP=$(jq -r .demo.group_id "$WORK/served/up.json")
"$ATREST" doctor --up "$WORK/served/up.json" --group "$GROUP" | tee "$WORK/doctor.out"
grep -q "result: VALID" "$WORK/doctor.out"
VAULT=$(jq -r .demo.key_vault_name "$WORK/served/up.json")
if "$ATREST" doctor --up "$WORK/served/up.json" --group "$GROUP" \
    --key-identifier "https://$VAULT.vault.azure.net/keys/no-such-key" >"$WORK/doctor-bad.out"; then
  echo "doctor should exit 1 when a check fails" >&2; cat "$WORK/doctor-bad.out"; exit 1
fi
cat "$WORK/doctor-bad.out"
grep -q "\[FAIL\] key .*KeyNotFound" "$WORK/doctor-bad.out"
grep -q "result: INVALID" "$WORK/doctor-bad.out"

step "atrest up's printed guide, pasted into bash -euo pipefail against the running up"
sed -n '/^----- 8< -----/,/^----- >8 -----/p' "$WORK/served.out" | sed '1d;$d' >"$WORK/guide.sh"
[ -s "$WORK/guide.sh" ] || { echo "no guide between the scissor lines in up's output" >&2; cat "$WORK/served.out"; exit 1; }
bash -euo pipefail "$WORK/guide.sh" | tee "$WORK/guide.out"
[ "$(tail -n 1 "$WORK/guide.out")" = "valid: true" ]
# Pasted again (the conformance tests above registered and granted the same principal too), it
# reuses the role and the assignments instead of failing on 409s.
bash -euo pipefail "$WORK/guide.sh" >"$WORK/guide2.out"
[ "$(tail -n 1 "$WORK/guide2.out")" = "valid: true" ]
[ "$(grep '^role id:' "$WORK/guide.out")" = "$(grep '^role id:' "$WORK/guide2.out")" ] || { echo "the second paste registered another role" >&2; exit 1; }
# The guide revoked the grant and every node of Cluster0 shut down, then came back.
grep -q '^  nodes: SHUT_DOWN SHUT_DOWN SHUT_DOWN$' "$WORK/guide.out"
grep -q '^503 NODE_SHUT_DOWN: ' "$WORK/guide.out"
kill "$UP_PID" && wait "$UP_PID" 2>/dev/null || true
# up stops its data nodes when it stops.
for _ in $(seq 1 50); do pgrep -f "node .*--data-dir $WORK/served/nodes/" >/dev/null || break; sleep 0.1; done
if pgrep -af "node .*--data-dir $WORK/served/nodes/"; then echo "up left its data nodes running" >&2; exit 1; fi

step "benchmark commands still run (debug build, small sizes; BENCHMARKS.md figures come from release builds)"
# The token counts are exact whatever the machine, so they are checked; the round trips are
# latency-dominated (each Azure request carries an injected delay), so they are checked too.
"$ATREST" bench control-tokens --projects 10 --tenants 2 | tee "$WORK/bench-tokens.out"
grep -q "token requests for the PATCHes and revalidations: MET" "$WORK/bench-tokens.out"
"$ATREST" bench token-cache --callers 100 --tenants 5 | tee "$WORK/bench-cache.out"
grep -q "per (tenant, scope): MET" "$WORK/bench-cache.out"
"$ATREST" bench patch-round-trips --runs 3 | tee "$WORK/bench-trips.out"
TRIPS=$(sed -n 's/^sequential Azure round trips after the token: \([0-9.]*\) .*/\1/p' "$WORK/bench-trips.out")
awk -v t="$TRIPS" 'BEGIN { exit !(t != "" && t <= 3) }' || { echo "PATCH round trips '$TRIPS', want <= 3" >&2; exit 1; }
# The data nodes' Key Vault calls are counted at the emulator: exact, so checked.
"$ATREST" bench key-vault-calls --nodes 3 --ops 2000 --checks 2 | tee "$WORK/bench-kv.out"
grep -q "1 decrypt per node start: MET" "$WORK/bench-kv.out"
grep -q "0 Key Vault calls per data operation: MET" "$WORK/bench-kv.out"
grep -q "exactly 1 decrypt per node per check: MET" "$WORK/bench-kv.out"
# Revocation to refusal is a timing (release figures in BENCHMARKS.md): only that it runs.
"$ATREST" bench revocation --rounds 3 | tee "$WORK/bench-revocation.out"
grep -q "until the data API refuses (503): p50" "$WORK/bench-revocation.out"
# The fleet's token counts are exact (one per tenant, however many replicas); no check-in may fail.
"$ATREST" bench fleet --nodes 10 --tenants 2 --seconds 2 --patches 2 | tee "$WORK/bench-fleet.out"
grep -q "(SQLite)\] target: exactly 2 per token lifetime: MET" "$WORK/bench-fleet.out"
grep -q "PostgreSQL\] target: exactly 2 per token lifetime across 2 replicas: MET" "$WORK/bench-fleet.out"
grep -q "no check-in failed: MET" "$WORK/bench-fleet.out"
# The storage overhead is a timing (release figures in BENCHMARKS.md): only that both engines run.
cargo run -q --locked -p atrest-node --example storage_overhead -- 2000 1 | tee "$WORK/bench-storage.out"
grep -q "^median ratio write-heavy: " "$WORK/bench-storage.out"

step "atrest up (the README's run command) on a fresh data dir, then again on the same one"
"$ATREST" up --data-dir "$WORK/up" --no-wait >"$WORK/up.out" 2>"$WORK/up.err"
grep -q "atrest is up" "$WORK/up.out"
grep -q "creating the demo layout" "$WORK/up.err"
URL1=$(jq -r .control_plane_url "$WORK/up/up.json")
NODES1=$(jq -c '[.clusters[0].nodes[].id]' "$WORK/up/up.json")
[ "$(jq '.clusters[0].nodes | length' "$WORK/up/up.json")" = 3 ]
# A second run reuses the layout, the emulator's persisted state and the ports (free again).
"$ATREST" up --data-dir "$WORK/up" --no-wait >"$WORK/up2.out" 2>"$WORK/up2.err"
grep -q "atrest is up" "$WORK/up2.out"
grep -q "reusing the demo layout" "$WORK/up2.err" || { cat "$WORK/up2.err"; exit 1; }
[ "$(jq -r .control_plane_url "$WORK/up/up.json")" = "$URL1" ] || { echo "the second up changed the URL" >&2; exit 1; }
[ "$(jq -c '[.clusters[0].nodes[].id]' "$WORK/up/up.json")" = "$NODES1" ] || { echo "the second up joined new nodes" >&2; exit 1; }

step "all tests passed"
