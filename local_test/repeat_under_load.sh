#!/usr/bin/env bash
# Runs pytest RUNS times in a row while BURNERS other processes keep CPUs busy, and stops at the
# first failing run: how the signal tests were shown not to depend on timing.
#
#   local_test/repeat_under_load.sh [RUNS] [BURNERS] [PYTEST ARGS ...]
#   local_test/repeat_under_load.sh 20 2 tests/test_stops.py
#
# Defaults: 20 runs, 2 burners, tests/test_stops.py. Each burner is a busy loop (no I/O); each
# run gets its own --basetemp. Prints one line per run and the load average.
set -euo pipefail

runs=${1:-20}
burners=${2:-2}
shift $(($# >= 2 ? 2 : $#))
((${#@})) || set -- tests/test_stops.py
python=${PYTHON:-.venv/bin/python}

pids=()
cleanup() { if ((${#pids[@]})); then kill "${pids[@]}" 2>/dev/null || true; fi; }
trap cleanup EXIT
for _ in $(seq "$burners"); do
    "$python" -c 'while True: pass' &
    pids+=($!)
done

work=$(mktemp -d)
for run in $(seq "$runs"); do
    start=$(date +%s)
    if ! "$python" -m pytest -q -p no:cacheprovider --basetemp="$work/run-$run" "$@" \
        >"$work/run-$run.log" 2>&1; then
        tail -n 40 "$work/run-$run.log"
        echo "run $run of $runs FAILED (log: $work/run-$run.log)"
        exit 1
    fi
    echo "run $run of $runs passed in $(($(date +%s) - start)) s: $(tail -n 1 "$work/run-$run.log"); load $(cut -d' ' -f1-3 /proc/loadavg)"
    rm -rf "$work/run-$run"
done
echo "$runs runs in a row passed with $burners CPU-bound processes beside them"
