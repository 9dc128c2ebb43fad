#!/usr/bin/env bash
# Runs fuzz targets one after the other: tests/fuzz/run.sh BUILD_DIR SECONDS TARGET...
# Each starts from its committed corpus tests/fuzz/corpus/TARGET (read only: new inputs
# go to BUILD_DIR/corpus/TARGET) with tests/fuzz/TARGET.dict when present. One input
# must never take long or use much memory: a hang (-timeout) or a parser needing more
# than -malloc_limit_mb at once is a finding like a crash. Prints per target the
# executions, exec/s, coverage features and corpus size; the full log is in
# BUILD_DIR/logs/TARGET.log, a finding's input in BUILD_DIR/findings/. Exits non-zero
# when any target found something.
set -u
build=$1 seconds=$2
shift 2
mkdir -p "$build/findings" "$build/logs"
failed=()
for t in "$@"; do
  mkdir -p "$build/corpus/$t"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  log="$build/logs/$t.log"
  "$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$build/findings/$t-" "${dict[@]}" \
    "$build/corpus/$t" "tests/fuzz/corpus/$t" > "$log" 2>&1
  rc=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<< "$done_line")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<< "$done_line")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<< "$done_line")
  if [ $rc -eq 0 ]; then
    printf '%-18s ok  %9s execs %6s exec/s  cov %5s  ft %6s  corpus %s  (%s s)\n' "$t" "$execs" "$rate" "$cov" "$ft" "$corp" "$seconds"
  else
    printf '%-20s FAIL  (exit %d) see %s:\n' "$t" $rc "$log"
    grep -E 'ERROR|SUMMARY|runtime error|property violated|terminate|what\(\)|Test unit written' "$log" | head -8
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: findings in ${failed[*]}"; exit 1; }
