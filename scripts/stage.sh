#!/usr/bin/env bash
# stage.sh STAMP CMD...: one stage of the demo pipeline (scripts/demo.mk). Runs CMD with its
# output in <OUT>/logs/<stage>.log (STAMP is <OUT>/stamps/<stage>) and writes STAMP only when
# CMD succeeds, so `make` reruns exactly the stages that have not finished; the long stages
# resume from their own checkpoints inside.
set -uo pipefail
stamp=$1
shift
name=$(basename "$stamp")
logs=$(dirname "$(dirname "$stamp")")/logs
mkdir -p "$logs" "$(dirname "$stamp")"
echo "== $name: $(date -u +%H:%M:%S)"
start=$(date +%s)
if "$@" >"$logs/$name.log" 2>&1; then
  date -u +%FT%TZ >"$stamp"
  echo "== $name: done in $(($(date +%s) - start)) s"
else
  echo "!! $name failed: see $logs/$name.log (tail below); fix it and run again"
  tail -n 15 "$logs/$name.log"
  exit 1
fi
