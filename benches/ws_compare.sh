#!/usr/bin/env bash
# Fanout, memory and overload: Switchboard against the reference peers in one run, all
# measured by the same load tool (`switchboard bench ws`), and memory after a reconnect
# storm by a client that is not ours (benches/storm, Go + gorilla/websocket). Loopback
# only; every run is bounded (DUR, default 8s). Build first:
#   cargo build --release
#   (cd ../shared/peers/rust-ceiling && cargo build --release); ../shared/peers/build.sh
#   (Debian: apt-get install golang-go golang-github-gorilla-websocket-dev)
# Usage: benches/ws_compare.sh [fanout|rooms|memory|storm|history|overload|cluster|all]
set -euo pipefail
cd "$(dirname "$0")/.."
SB="${SB:-$PWD/target/release/switchboard}"   # another build to compare: SB=path/to/switchboard
PEERS="${PEERS:-$PWD/../shared/peers}"
DUR="${DUR:-8s}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"   # for `cluster`
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
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"$name rate=$rate deliveries/s={d['deliveries_per_sec']:.0f} lost={d['lost']} refused={d.get('refused','-')} p50={d['p50_ms']} p99={d['p99_ms']} max={d['max_ms']} closed={d['closed_by_server']} stalled_closed={d.get('stalled_closed','-')} rss/conn={d.get('rss_per_connection_kib','-')}KiB\")" \
    || echo "$name rate=$rate FAILED (server down?)"
}

fanout() { # 1 room x 1000 subscribers, 1 publisher; rates in messages/s (x1000 deliveries/s)
  local pid
  pid=$(start_switchboard); for r in ${RATES:-1000 1500 2000 2500}; do measure switchboard ws://127.0.0.1:8090/ws 1000 1 1 "$r"; done; stop "$pid"
  pid=$(start_ceiling); for r in ${RATES:-1000 1500 2000 2500}; do measure rust-ceiling ws://127.0.0.1:9002/ws 1000 1 1 "$r"; done; stop "$pid"
  pid=$(start_go); for r in ${GO_RATES:-100 200 300 400}; do measure go-seed-hub ws://127.0.0.1:9001/ws 1000 1 1 "$r"; done; stop "$pid"
}

start_node() { # port node-id prefix: one node of a cluster on the local Redis
  "$SB" --database-url "$WORK/node-$2.db" --http-addr "127.0.0.1:$1" --grpc-addr 127.0.0.1:0 \
    --rate-limit 1000000 --rate-limit-burst 1000000 --ws-rate 1000000 --ws-burst 1000000 \
    --redis-url "$REDIS_URL" --cluster-prefix "$3" --node-id "$2" \
    --log-level warn >"$WORK/node-$2.log" 2>&1 &
  echo $!; sleep 2
}

cluster() { # 1000 subscribers over 2 nodes, the publisher on a third, one Redis; one node alone first
  local pid a b c prefix="bench$RANDOM"
  pid=$(start_switchboard); for r in ${RATES:-250 500 1000 1500}; do measure one-node ws://127.0.0.1:8090/ws 1000 1 1 "$r"; done; stop "$pid"
  a=$(start_node 8091 n1 "$prefix"); b=$(start_node 8092 n2 "$prefix"); c=$(start_node 8093 n3 "$prefix")
  for r in ${RATES:-250 500 1000 1500}; do
    measure cluster-3-nodes ws://127.0.0.1:8093/ws 1000 1 1 "$r" \
      --subscribe-url ws://127.0.0.1:8091/ws --subscribe-url ws://127.0.0.1:8092/ws
  done
  stop "$a"; stop "$b"; stop "$c"
  redis-cli -u "$REDIS_URL" --scan --pattern "$prefix:*" | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null
}

rooms() { # 10 rooms x 100 subscribers, 10 publishers
  local pid
  pid=$(start_switchboard); for r in ${RATES:-10000 15000 20000}; do measure switchboard ws://127.0.0.1:8090/ws 1000 10 10 "$r"; done; stop "$pid"
  pid=$(start_ceiling); for r in ${RATES:-10000 15000 20000}; do measure rust-ceiling ws://127.0.0.1:9002/ws 1000 10 10 "$r"; done; stop "$pid"
  pid=$(start_go); for r in ${GO_RATES:-1000 2000 3000 4000}; do measure go-seed-hub ws://127.0.0.1:9001/ws 1000 10 10 "$r"; done; stop "$pid"
}

memory() { # RSS per idle connection at 10,000 connections, opened by the load tool
  local pid
  pid=$(start_switchboard); measure switchboard ws://127.0.0.1:8090/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
  pid=$(start_ceiling); measure rust-ceiling ws://127.0.0.1:9002/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
  pid=$(start_go); measure go-seed-hub ws://127.0.0.1:9001/ws 10000 100 0 1 --hold 3s --server-pid "$pid"; stop "$pid"
  storm
}

STORM="$PWD/benches/storm/storm"
build_storm() {
  [ -x "$STORM" ] && return 0
  (cd benches/storm && GO111MODULE=off GOPATH=/usr/share/gocode go build -o storm .)
}

# name url pid -> the storm client's line: RSS per connection at the storm's peak, then
# idle (1 msg/s in one room) and light traffic (1 msg/s in each room), all 10k open
storm_measure() {
  "$STORM" -url "$2" -clients 10000 -rooms "${ROOMS:-100}" -concurrency "${CONCURRENCY:-64}" -pid "$3" -settle "${SETTLE:-8s}" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"$1 storm: {d['connected']} open in {d['open_seconds']:.1f}s, KiB/conn peak={d['peak_kib_per_conn']:.2f} idle={d['idle_kib_per_conn']:.2f} light={d['light_kib_per_conn']:.2f} closed={d['closed_by_server']}\")" \
    || echo "$1 storm FAILED"
}

storm() { # a reconnect storm: 10,000 connections, 64 handshakes at a time, from a Go client
  local pid
  build_storm
  pid=$(start_switchboard); storm_measure switchboard ws://127.0.0.1:8090/ws "$pid"; stop "$pid"
  pid=$(start_ceiling); storm_measure rust-ceiling ws://127.0.0.1:9002/ws "$pid"; stop "$pid"
  pid=$(start_go); storm_measure go-seed-hub ws://127.0.0.1:9001/ws "$pid"; stop "$pid"
}

history() { # the same fanout with history persistence on and off
  local pid
  for h in true false; do
    pid=$(start_switchboard --history "$h"); for r in ${RATES:-1000 2000}; do measure "switchboard(history=$h)" ws://127.0.0.1:8090/ws 1000 1 1 "$r"; done; stop "$pid"
  done
}

overload() { # 2x and 4x the sustainable rate with one subscriber that never reads, then a
  # normal load on the same server (SUSTAINABLE: msg/s into a 1k room at p99 <= 50 ms)
  local pid rate
  for rate in $((2 * ${SUSTAINABLE:-1200})) $((4 * ${SUSTAINABLE:-1200})); do
    pid=$(start_switchboard)
    measure "switchboard(overload)" ws://127.0.0.1:8090/ws 1000 1 1 "$rate" --stalled 1
    measure "switchboard(after)" ws://127.0.0.1:8090/ws 1000 1 1 200
    kill -0 "$pid" && echo "switchboard still running after overload"; stop "$pid"
  done
  pid=$(start_go)
  measure "go-seed-hub(overload)" ws://127.0.0.1:9001/ws 1000 1 1 600
  kill -0 "$pid" 2>/dev/null && echo "go-seed-hub still running" || echo "go-seed-hub died: $(grep -m1 panic "$WORK/go.log" || true)"
  stop "$pid"
}

case "${1:-all}" in
  all) fanout; rooms; memory; history; overload ;;
  *) "$1" ;;
esac
