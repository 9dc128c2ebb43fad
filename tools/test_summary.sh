#!/usr/bin/env bash
# make test's reporting: runs one doctest binary with everything it prints (training
# logs, memory plans, notes) going to a log file, and says in one line what happened.
#
#   tools/test_summary.sh run LABEL LOG SUMMARY BINARY [doctest args...]
#       runs BINARY into LOG, appends its summary line to SUMMARY and prints it; on a
#       failure also prints the failed checks (from LOG) and exits 1
#   tools/test_summary.sh print SUMMARY
#       prints the summary lines collected so far (the end of make test)
#
# A line reads, e.g.
#   build/cpu/test_all: 398 test cases passed, 0 failed; 31 skipped: no CUDA device (31), SmolLM2 GGUF not downloaded (run make model) (3); log build/cpu/test.log
#   build/emu/test_all: 64 test cases passed, 0 failed; 58 on the emulated GPU (cuda_emu: the kernels run on the CPU); log build/emu/test.log
# Skipped tests pass in doctest's count; they are the ones that print "skipped: REASON"
# (tests/gpu_test.h, the SmolLM2 tests) and are counted here by reason.
set -uo pipefail

summary_line() {  # LABEL LOG STATUS
  local label=$1 log=$2 status=$3
  local counts total passed failed skipped emulated reasons
  counts=$(grep -E '^\[doctest\] test cases:' "$log" | tail -1)
  total=$(sed -E 's/.*test cases: *([0-9]+).*/\1/' <<<"$counts")
  passed=$(sed -E 's/.*\| *([0-9]+) passed.*/\1/' <<<"$counts")
  failed=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$counts")
  if [ -z "$counts" ]; then
    echo "$label: did not finish (status $status); log $log"
    return
  fi
  skipped=$(grep -c '^skipped: ' "$log")
  emulated=$(grep -c '^emulated device: ' "$log")
  # "skipped: no CUDA device (rmsnorm)" -> "no CUDA device"; other reasons as written
  reasons=$(grep '^skipped: ' "$log" | sed -E 's/^skipped: //; s/ \([A-Za-z0-9_]+\)$//' | sort | uniq -c |
            sed -E 's/^ *([0-9]+) (.*)$/\2 (\1)/' | paste -sd, - | sed 's/,/, /g')
  local line="$label: $((passed - skipped)) of $total test cases passed, $failed failed"
  [ "$skipped" -gt 0 ] && line+="; $skipped skipped: $reasons"
  [ "$emulated" -gt 0 ] && line+="; $emulated ran on the emulated GPU (cuda_emu: the kernels on the CPU, not a GPU)"
  echo "$line; log $log"
}

case "${1:-}" in
  run)
    shift
    label=$1 log=$2 summary=$3
    shift 3
    mkdir -p "$(dirname "$log")" "$(dirname "$summary")"
    echo "running $label (output in $log) ..."
    "$@" > "$log" 2>&1
    status=$?
    line=$(summary_line "$label" "$log" "$status")
    echo "$line" >> "$summary"
    if [ "$status" -ne 0 ]; then
      echo "✗ $label failed; the failed checks (all of it: $log):"
      grep -E -B4 -A8 ': (ERROR|FATAL ERROR)' "$log" | head -200
      echo "✗ $line"
      exit 1
    fi
    echo "✓ $line"
    ;;
  print)
    echo
    echo "== make test: summary"
    sed 's/^/  /' "$2"
    ;;
  *)
    echo "usage: tools/test_summary.sh run LABEL LOG SUMMARY BINARY [args...] | print SUMMARY" >&2
    exit 2
    ;;
esac
