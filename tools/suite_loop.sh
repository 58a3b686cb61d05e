#!/bin/bash
# The full test suite N times in a row, as `make test` runs it (-n 2), on one commit.
#   tools/suite_loop.sh 30 [LOG_DIR]
# Each run's output goes to LOG_DIR/run-K.log and one line per run to LOG_DIR/loop.log;
# stops at the first failing run (its log has pytest's -rf summary). Run it alone: the
# suite is deterministic, but a second job on 2 cores makes every run slower.
set -u
runs=${1:-30}
logs=${2:-runs/suite-loop}
mkdir -p "$logs"
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  .venv/bin/python -m pytest -q -n 2 -rf -p no:cacheprovider > "$logs/run-$i.log" 2>&1
  rc=$?
  echo "run $i rc=$rc $(( $(date +%s) - start ))s $(tail -1 "$logs/run-$i.log")" | tee -a "$logs/loop.log"
  [ $rc -eq 0 ] || exit $rc
done
