#!/usr/bin/env bash
# Fanout, memory and overload: Switchboard against the reference peers in one run, all
# measured by the same load tool (`switchboard bench ws`). Loopback only; every run is
# bounded (DUR, default 8s). Build first:
#   cargo build --release
#   (cd ../shared/peers/rust-ceiling && cargo build --release); ../shared/peers/build.sh
# Usage: benches/ws_compare.sh [fanout|rooms|memory|history|overload|all]
set -euo pipefail
cd "$(dirname "$0")/.."
SB="${SB:-$PWD/target/release/switchboard}"   # another build to compare: SB=path/to/switchboard
PEERS="${PEERS:-$PWD/../shared/peers}"
DUR="${DUR:-8s}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

start_switchboard() { # extra flags...
  "$SB" --database-url "$WORK/bench-$RANDOM.db" --http-addr 127.0.0.1:8090 --grpc-addr 127.0.0.1:0 \
    --rate-limit 1000000 --rate-limit-burst 1000000 --ws-rate 1000000 --ws-burst 1000000 \
    --log-level warn "$@" >"$WORK/switchboard.log" 2>&1 &
  echo $!; sleep 2
}
start_go() { "$PEERS/go-seed-hub/go-seed-hub" -addr 127.0.0.1:9001 >"$WORK/go.log" 2>&1 & echo $!; sleep 1; }
start_ceiling() { "$PEERS/rust-ceiling/target/release/rust-ceiling" -addr 127.0.0.1:9002 >"$WORK/ceiling.log" 2>&1 & echo $!; sleep 1; }
stop() { # the servers are not children of this shell: wait until the pid is gone
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# name url clients rooms publishers rate [extra...] -> one summary line
measure() {
  local name=$1 url=$2 clients=$3 rooms=$4 pubs=$5 rate=$6; shift 6
  "$SB" bench ws --url "$url" --clients "$clients" --rooms "$rooms" --publishers "$pubs" \
    --rate "$rate" --size 128 --duration "$DUR" "$@" 2>/dev/null | tail -1 |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"$name rate=$rate deliveries/s={d['deliveries_per_sec']:.0f} lost={d['lost']} p50={d['p50_ms']} p99={d['p99_ms']} max={d['max_ms']} closed={d['closed_by_server']} rss/conn={d.get('rss_per_connection_kib','-')}KiB\")" \
    || echo "$name rate=$rate FAILED (server down?)"
}

fanout() { # 1 room x 1000 subscribers, 1 publisher; rates in messages/s (x1000 deliveries/s)
  local pid
  pid=$(start_switchboard); for r in ${RATES:-1000 1500 2000 2500}; do measure switchboard ws://127.0.0.1:8090/ws 1000 1 1 "$r"; done; stop "$pid"
  pid=$(start_ceiling); for r in ${RATES:-1000 1500 2000 2500}; do measure rust-ceiling ws://127.0.0.1:9002/ws 1000 1 1 "$r"; done; stop "$pid"
  pid=$(start_go); for r in ${GO_RATES:-100 200 300 400}; do measure go-seed-hub ws://127.0.0.1:9001/ws 1000 1 1 "$r"; done; stop "$pid"
}

rooms() { # 10 rooms x 100 subscribers, 10 publishers
  local pid
  pid=$(start_switchboard); for r in ${RATES:-10000 15000 20000}; do measure switchboard ws://127.0.0.1:8090/ws 1000 10 10 "$r"; done; stop "$pid"
  pid=$(start_ceiling); for r in ${RATES:-10000 15000 20000}; do measure rust-ceiling ws://127.0.0.1:9002/ws 1000 10 10 "$r"; done; stop "$pid"
  pid=$(start_go); for r in ${GO_RATES:-1000 2000 3000 4000}; do measure go-seed-hub ws://127.0.0.1:9001/ws 1000 10 10 "$r"; done; stop "$pid"
}

memory() { # RSS per idle connection at 10,000 connections
  local pid
  pid=$(start_switchboard); measure switchboard ws://127.0.0.1:8090/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
  pid=$(start_ceiling); measure rust-ceiling ws://127.0.0.1:9002/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
  pid=$(start_go); measure go-seed-hub ws://127.0.0.1:9001/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
}

history() { # the same fanout with history persistence on and off
  local pid
  for h in true false; do
    pid=$(start_switchboard --history "$h"); for r in ${RATES:-1000 2000}; do measure "switchboard(history=$h)" ws://127.0.0.1:8090/ws 1000 1 1 "$r"; done; stop "$pid"
  done
}

overload() { # twice the sustainable rate, then a normal load on the same server
  local pid
  pid=$(start_switchboard)
  measure "switchboard(overload)" ws://127.0.0.1:8090/ws 1000 1 1 "${OVER:-4000}"
  measure "switchboard(after)" ws://127.0.0.1:8090/ws 1000 1 1 200
  kill -0 "$pid" && echo "switchboard still running after overload"; stop "$pid"
  pid=$(start_go)
  measure "go-seed-hub(overload)" ws://127.0.0.1:9001/ws 1000 1 1 600
  kill -0 "$pid" 2>/dev/null && echo "go-seed-hub still running" || echo "go-seed-hub died: $(grep -m1 panic "$WORK/go.log" || true)"
  stop "$pid"
}

case "${1:-all}" in
  all) fanout; rooms; memory; history; overload ;;
  *) "$1" ;;
esac
