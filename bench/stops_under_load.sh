#!/usr/bin/env bash
# The stop matrix (every door x SIGINT, SIGTERM x the command alone, its whole group:
# tests/test_stops.py::test_every_stop_through_every_door_fails_with_its_cause) RUNS times in a
# row beside BURNERS CPU-bound processes, through local_test/repeat_under_load.sh; the last line
# goes to bench/results/stops_under_load.txt with the date and the machine's CPU count.
#
#   bench/stops_under_load.sh [RUNS] [BURNERS] [PYTEST -k EXPRESSION]
#
# Defaults: 10 runs, 2 burners, every cell of the matrix.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs=${1:-10}
burners=${2:-2}
cells=${3:-every_stop_through_every_door}
log=$(mktemp)
status=0
local_test/repeat_under_load.sh "$runs" "$burners" tests/test_stops.py -k "$cells" | tee "$log" \
  || status=$?
echo "$(date -u +%FT%TZ) $(nproc) CPUs, -k $cells: $(tail -n 1 "$log")" \
  >>bench/results/stops_under_load.txt
rm -f "$log"
exit "$status"
