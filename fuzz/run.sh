#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for a bounded time each and prints
# the executions per target. Usage: fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
# Installs cargo-fuzz when missing; needs the nightly toolchain and `make setup` (espeak-ng,
# the bundled Piper voice). Seeds stay untouched in fuzz/corpus/<target>; what the fuzzer
# learns accumulates in fuzz/work/<target> (git-ignored) and crashes land in
# fuzz/artifacts/<target>. Exits non-zero when any target finds a crash, leak or timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

rustup toolchain list | grep -q "^${toolchain}" || rustup toolchain install "$toolchain" --profile minimal
cargo +"$toolchain" fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

build_start=$SECONDS
cargo +"$toolchain" fuzz build --fuzz-dir fuzz
# The sidecar targets phonemize through the real phonemizer process, as the service does.
cargo build --release -p voxgate-sidecar --bin voxgate-phonemizer
export VOXGATE_PHONEMIZER="$PWD/target/release/voxgate-phonemizer"
echo "fuzz: targets built in $((SECONDS - build_start)) s"

targets=${FUZZ_TARGETS:-$(cargo +"$toolchain" fuzz list --fuzz-dir fuzz)}
failed=()
summary=()
for target in $targets; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/work/$target.log"
  status=ok
  # The first corpus directory receives new inputs; the committed seeds are only read.
  seeds=()
  [ -d "fuzz/corpus/$target" ] && seeds=("fuzz/corpus/$target")
  cargo +"$toolchain" fuzz run --fuzz-dir fuzz "$target" "fuzz/work/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict=fuzz/fuzz.dict -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1 || status=FAILED
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "fuzz/work/$target" -type f | wc -l)
  summary+=("$(printf '%-24s %12s executions %8s/s %6s corpus  %s' "$target" "$runs" "$((runs / seconds))" "$corpus" "$status")")
  if [ "$status" != ok ]; then
    failed+=("$target")
    # A panic's message is the line after its location: CI shows both.
    grep -E -A1 'panicked at' "$log" | head -4 | sed "s/^/  $target: /" || true
    grep -E -m 4 'ERROR: |SUMMARY: |Test unit written to' "$log" | sed "s/^/  $target: /" || true
  fi
done

echo "fuzz: ${seconds} s per target"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]} (logs in fuzz/work/<target>.log, inputs in fuzz/artifacts/<target>/;" \
       "replay with: cargo +$toolchain fuzz run --fuzz-dir fuzz <target> <input>)" >&2
  exit 1
fi
