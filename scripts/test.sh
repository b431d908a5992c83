#!/usr/bin/env bash
# Sets up the two tested environments under .venvs/ (once) and runs the test suite in each:
# first with xtuner 0.2.0's pins, then with the newest versions, where no test may be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
venvs=${INTERNVL_VENVS:-.venvs}
mkdir -p "$venvs"

build() {  # build WORLD: quiet unless it fails
  bash scripts/make_env.sh "$1" "$venvs/$1" > "$venvs/$1.log" 2>&1 || { cat "$venvs/$1.log"; return 1; }
  tail -n 1 "$venvs/$1.log"
}
build pinned & pinned_pid=$!
build newest & newest_pid=$!
wait $pinned_pid
wait $newest_pid

status=0
echo "=== tests: pinned world (xtuner 0.2.0's pins; CPU 4-bit and native-InternVL tests skip here) ==="
INTERNVL_NO_SKIP=0 "$venvs/pinned/bin/python" -m pytest tests -q -rs -p no:cacheprovider "$@" || status=1
echo "=== tests: newest world (no test may be skipped) ==="
INTERNVL_NO_SKIP=1 "$venvs/newest/bin/python" -m pytest tests -q -rs -p no:cacheprovider "$@" || status=1
exit $status
