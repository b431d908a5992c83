#!/usr/bin/env bash
# Builds the three tested environments from locks/ under .venvs/ (once) and runs the test suite in each:
# pinned (xtuner 0.2.0's pins), transformers4 (newest on transformers 4), newest (torch 2.15, transformers 5).
# Outside the pinned world no test may be skipped. Tests marked newest_only (pytest.ini: config values, benchmark
# reports, the demo, whose results no library version changes) run in the newest world only. Extra arguments go to
# pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
venvs=${INTERNVL_VENVS:-.venvs}
worlds=(pinned transformers4 newest)
mkdir -p "$venvs"

# Builds run side by side, about 8 GB each (make_env.sh): check the total before starting any.
need_gb=${INTERNVL_BUILD_GB:-8}
to_build=0
for world in "${worlds[@]}"; do [ -f "$venvs/$world/internvl-world" ] || to_build=$((to_build + 1)); done
free_gb=$(df -Pk "$venvs" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ $((to_build * need_gb)) -gt "$free_gb" ]; then
  echo "test.sh: building $to_build environments needs about $((to_build * need_gb)) GB free under $venvs/, which has $free_gb GB;" \
    "free some space or set INTERNVL_VENVS to a folder on a larger disk" >&2
  exit 1
fi

echo "=== building ${worlds[*]} under $venvs/ (logs: $venvs/WORLD.log; the first build downloads a few GB) ==="
pids=()
for world in "${worlds[@]}"; do
  bash scripts/make_env.sh "$world" "$venvs/$world" > "$venvs/$world.log" 2>&1 &
  pids+=($!)
done
built=0
for i in "${!worlds[@]}"; do
  if wait "${pids[$i]}"; then
    tail -n 1 "$venvs/${worlds[$i]}.log"
  else
    built=1
    echo "--- ${worlds[$i]}: the environment could not be built ($venvs/${worlds[$i]}.log):"
    tail -n 20 "$venvs/${worlds[$i]}.log"
  fi
done
[ $built = 0 ] || { echo "no tests run: an environment could not be built (above)"; exit 1; }

status=0
summary=()
for world in "${worlds[@]}"; do
  no_skip=1
  [ "$world" = pinned ] && no_skip=0  # the CPU 4-bit and native-InternVL tests cannot run on xtuner's own pins
  selection=()
  [ "$world" = newest ] || selection=(-m 'not newest_only')
  echo "=== tests: $world world$([ $no_skip = 1 ] && echo ', no test may be skipped')${selection[*]:+, newest_only deselected} ==="
  log=$venvs/$world.tests.log
  INTERNVL_NO_SKIP=$no_skip "$venvs/$world/bin/python" -m pytest tests -q -rfEs -p no:cacheprovider \
    "${selection[@]}" "$@" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  counts=$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  for kind in passed failed skipped error deselected; do
    n=$(echo "$counts" | grep -oE "[0-9]+ $kind" | grep -oE '[0-9]+' || true)
    eval "${kind}_$world=${n:-0}"
  done
  summary+=("$world")
done
echo "=== summary (full output: $venvs/WORLD.tests.log) ==="
total_passed=0 total_failed=0 total_skipped=0
for world in "${summary[@]}"; do
  p=passed_$world f=failed_$world e=error_$world s=skipped_$world d=deselected_$world
  echo "$world: ${!p} passed, $((${!f} + ${!e})) failed, ${!s} skipped$([ "${!d}" = 0 ] || echo ", ${!d} newest_only")"
  total_passed=$((total_passed + ${!p})) total_failed=$((total_failed + ${!f} + ${!e}))
  total_skipped=$((total_skipped + ${!s}))
done
echo "total: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit $status
