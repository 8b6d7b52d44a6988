#!/usr/bin/env bash
# Sharding and two-phase commit, measured: CreateUser/s and latency, and ListUsers page
# latency, with the data unsharded, on 1 shard and on 3 shards — all databases on one
# private PostgreSQL cluster (started here with max_prepared_transactions; needs the
# PostgreSQL server binaries and runuser, as the tests do). Loopback only; every run is
# bounded (DUR, default 10s). Build first: cargo build --release
# Usage: benches/shards.sh            (CONCURRENCY=32 DUR=10s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SB="${SB:-$PWD/target/release/switchboard}"
DUR="${DUR:-10s}"
CONCURRENCY="${CONCURRENCY:-32}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | tail -1)"
WORK="$(mktemp -d)"
chown postgres:postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pg() { runuser -u postgres -- "$BIN/$1" "${@:2}"; }
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
pg initdb -A trust -U postgres -D "$WORK/data" >/dev/null
cat >>"$WORK/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_prepared_transactions = 64
max_connections = 300
CONF
pg pg_ctl -D "$WORK/data" -w -l "$WORK/pg.log" start >/dev/null
URL="postgres://postgres@127.0.0.1:$PORT"
for db in u p1 s1_0 p3 s3_0 s3_1 s3_2; do
  psql -q "$URL/postgres" -c "CREATE DATABASE $db" >/dev/null
done
TOKEN_SECRET="bench-secret-0123456789abcdef"
TOKEN=$("$SB" token --sub bench --jwt-secret "$TOKEN_SECRET")

run() { # name, extra server flags...
  local name=$1; shift
  "$SB" --http-addr 127.0.0.1:8095 --grpc-addr 127.0.0.1:50095 --jwt-secret "$TOKEN_SECRET" \
    --rate-limit 1000000 --rate-limit-burst 1000000 --db-max-connections 20 \
    --log-level warn "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:8095/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  # ListUsers first, over the 1,000 seeded users (the same data for each layout), then CreateUser.
  for call in list-users create-user; do
    "$SB" bench grpc --addr http://127.0.0.1:50095 --token "$TOKEN" --call "$call" \
      --concurrency "$CONCURRENCY" --duration "$DUR" --users 1000 2>/dev/null | tail -1 |
      python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"$name $call ok/s={d['ok_per_sec']:.0f} errors={d['errors']} p50={d['p50_ms']}ms p99={d['p99_ms']}ms\")"
  done
  curl -fs http://127.0.0.1:8095/metrics | python3 -c "
import sys, re
m = {}
for line in sys.stdin:
    g = re.match(r'switchboard_tx_(total|phase_seconds_total)\{(\w+)=\"(\w+)\"\} (\S+)', line)
    if g: m[g.group(3)] = float(g.group(4))
two = m.get('committed', 0)
if two:
    print(f\"$name two-phase: {m.get('one_phase',0):.0f} one-phase, {two:.0f} two-phase; per two-phase commit: prepare {1000*m['prepare']/two:.2f} ms, decide {1000*m['decide']/two:.2f} ms, commit {1000*m['commit']/two:.2f} ms\")
elif m:
    print(f\"$name two-phase: {m.get('one_phase',0):.0f} one-phase, none two-phase\")
"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run unsharded --database-url "$URL/u"
run 1-shard --database-url "$URL/p1" --database-shards "$URL/s1_0"
run 3-shards --database-url "$URL/p3" --database-shards "$URL/s3_0,$URL/s3_1,$URL/s3_2"
