#!/usr/bin/env bash
# Fuzzes what the network feeds Switchboard, for a bounded time per target (not in CI):
#   chat_command    the WebSocket chat command parser
#   graphql_cost    GraphQL admission (fragment checks and the cost walk)
#   ws_frame_limit  the WebSocket frame-size guard, with the input cut into chunks
#
#   benches/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 120 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; without one,
# stable is told to act as nightly (RUSTC_BOOTSTRAP=1) and the sanitizer is left out.
# Corpora and crash artifacts stay in benches/fuzz/{corpus,artifacts} (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-120}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(chat_command graphql_cost ws_frame_limit)

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  sanitizer=(-s address)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  sanitizer=(-s none)
fi

seed() { # target name text
  mkdir -p "benches/fuzz/corpus/$1"
  printf '%s' "$3" > "benches/fuzz/corpus/$1/seed-$2"
}
seed chat_command join '{"type":"join","room_id":"lobby","metadata":{"since_offset":7}}'
seed chat_command message '{"type":"message","room_id":"r","content":"hi","metadata":{"k":[1,2]}}'
seed chat_command private '{"type":"private","to":"bob","content":"psst"}'
seed chat_command history '{"type":"history","room_id":"r","metadata":{"limit":50}}'
seed graphql_cost users '{ users(limit: 100) { id posts { title author { name } } } }'
seed graphql_cost fragments 'query Q($n: Int) { users(limit: $n) { ...F } } fragment F on User { id ... on User { posts { id } } }'
seed graphql_cost cycle '{ user(id:"x") { ...F } } fragment F on User { id ...F ...F }'
mkdir -p benches/fuzz/corpus/ws_frame_limit # limit, cut points, then frames
printf '\x40\x03\x05\x81\x85\x01\x02\x03\x04hello\x81\xfe\x01\x00' >benches/fuzz/corpus/ws_frame_limit/seed-frames

"${fuzz[@]}" build --fuzz-dir benches/fuzz -O "${sanitizer[@]}"
for target in "${targets[@]}"; do
  log="target/fuzz-$target.log"
  mkdir -p target
  echo "== $target: ${seconds}s"
  "${fuzz[@]}" run --fuzz-dir benches/fuzz -O "${sanitizer[@]}" "$target" -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1 || { echo "!! $target found a problem: see $log and benches/fuzz/artifacts/$target"; tail -30 "$log"; exit 1; }
  grep -E '^stat::number_of_executed_units|^Done|^#[0-9]+.*DONE' "$log" | tail -3
done
