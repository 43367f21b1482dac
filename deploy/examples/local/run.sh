#!/usr/bin/env bash
# Start the local three-witness cluster of deploy/examples/local on 127.0.0.1
# and keep it running until Ctrl-C, which stops the three nodes.
#
#   bash deploy/examples/local/run.sh          # fresh cluster (wipes /tmp/witness-local)
#   bash deploy/examples/local/run.sh --keep   # restart on the existing data
#
# Nodes: w1 (dc-a) 127.0.0.1:7410, w2 (dc-b) :7420, w3 (dc-c) :7430;
# HTTP /healthz and /readyz on :7411, :7421, :7431. Logs: /tmp/witness-local/wN.log
# Every port takes mutual TLS: the first run makes a CA and the certificates
# of the three witnesses and of an operator in /tmp/witness-local/tls.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
data=/tmp/witness-local
keep=false
[[ "${1:-}" == "--keep" ]] && keep=true

cd "$root"
echo "building witness and witnessctl (release)…"
cargo build --release --quiet -p witness -p witnessctl
bin="$root/target/release"
export WITNESS_ENDPOINTS=127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430
tls="$data/tls"
me="${USER:-operator}"
export WITNESS_CA="$tls/ca.pem" WITNESS_CERT="$tls/operator-$me.pem" WITNESS_KEY="$tls/operator-$me.key"

if ! $keep; then
  rm -rf "$data"
fi
mkdir -p "$data"
if [[ ! -f "$tls/ca.pem" ]]; then
  "$bin/witness" certs ca --cluster local --dir "$tls" --days 30
  for n in 1 2 3; do
    "$bin/witness" certs peer --id $n --host 127.0.0.1 --dir "$tls" --days 30
  done
  "$bin/witness" certs operator --name "$me" --dir "$tls" --days 30
fi
if [[ ! -d "$data/w1" ]]; then
  "$bin/witness" init --config "$here/witness-1.toml" --policy "$here/cluster.toml"
fi

# A cluster left over from an earlier run would hold the ports.
for port in 7410 7420 7430; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "error: 127.0.0.1:$port is in use; a witness of an earlier run may still be" >&2
    echo "running: pkill -f 'witness run --config $here' and try again" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  trap - EXIT INT TERM HUP
  ((${#pids[@]})) || return 0
  echo
  echo "stopping the three witnesses…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # SIGTERM hands leadership off and exits within seconds; after 10 s, kill.
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; data kept in $data (restart with --keep, or rm -rf $data)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

for n in 1 2 3; do
  "$bin/witness" run --config "$here/witness-$n.toml" >>"$data/w$n.log" 2>&1 &
  pids+=($!)
done

echo "waiting for the cluster to elect a leader and apply its policy…"
for _ in $(seq 1 100); do
  ready=0
  for port in 7410 7420 7430; do
    if "$bin/witnessctl" --endpoints 127.0.0.1:$port --timeout 1s --output json \
      status --local 2>/dev/null | grep -q '"ready": true'; then
      ready=$((ready + 1))
    fi
  done
  [[ $ready == 3 ]] && break
  sleep 0.2
done

"$bin/witnessctl" status || true
cat <<TXT

The cluster runs. In another terminal, try:
  export WITNESS_ENDPOINTS=$WITNESS_ENDPOINTS
  export WITNESS_CA=$WITNESS_CA WITNESS_CERT=$WITNESS_CERT WITNESS_KEY=$WITNESS_KEY
  $bin/witnessctl status
  $bin/witnessctl members list
  $bin/witnessctl policy show
  $bin/witnessctl history
  kill -9 \$(pgrep -f witness-1.toml)      # kill node 1; the others elect a leader
Logs: $data/w1.log $data/w2.log $data/w3.log
Ctrl-C stops the cluster.
TXT
wait
