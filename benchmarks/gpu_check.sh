#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one call (issue 19): device and versions, then one row per run of
# benchmarks/train_step.py, each in its own time limit so that the whole call stays within 10 minutes.
#
#   bash benchmarks/gpu_check.sh OUT                # on the lent H100 / H200
#   bash benchmarks/gpu_check.sh --dry-run OUT      # one row of each at tiny size on a CPU (what CI runs)
#   bash benchmarks/gpu_check.sh --memory OUT       # the memory estimate beside the real peak (a call of its own)
#
# Rows: 1B and 2B full fine-tune and 8B LoRA with SDPA (and with flash attention 2 where flash_attn imports), the
# 26B QLoRA worst case where bitsandbytes imports. Each prints packed and unpacked tokens/s, MFU and peak memory.
# With --memory the rows are benchmarks/memory_check.py's instead (issue 16): 1B and 2B full, 8B LoRA and 26B
# QLoRA, each the estimate of tools/estimate_memory.py beside torch.cuda.max_memory_allocated of the same step.
# A machine without the training stack (mmengine and its helpers are pure Python) gets it from wheels in
# $GPU_CHECK_WHEELS (default .gpu_wheels: `pip download --no-deps -d .gpu_wheels mmengine==0.10.7 addict yapf
# termcolor rich`), installed with --no-deps into a user site. OUT/summary.txt lists every row and how it ended.
set -u

dry_run=0
memory=0
while [ "${1:-}" = "--dry-run" ] || [ "${1:-}" = "--memory" ]; do
    [ "$1" = "--dry-run" ] && dry_run=1
    [ "$1" = "--memory" ] && memory=1
    shift
done
out="${1:?usage: bash benchmarks/gpu_check.sh [--dry-run] [--memory] OUT}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"

wheels="${GPU_CHECK_WHEELS:-$repo/.gpu_wheels}"
if ! "$python" -c 'import mmengine' 2>/dev/null && [ -d "$wheels" ]; then
    "$python" -m pip install --quiet --no-deps --no-index --user "$wheels"/*.whl >> "$out/install.txt" 2>&1
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$python" - <<'EOF'
import importlib
import torch
print('cuda:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')
for name in ('torch', 'transformers', 'peft', 'mmengine', 'bitsandbytes', 'flash_attn'):
    try:
        print(f'{name}:', importlib.import_module(name).__version__)
    except Exception as error:  # absent or broken: the rows that need it are left out
        print(f'{name}: not importable ({type(error).__name__})')
EOF
} > "$out/device.txt" 2>&1

has() { "$python" -c "import $1" 2> /dev/null; }
# add_if MODULE ROW: the row where MODULE imports, else a summary line saying it is left out and why
add_if() {
    if has "$1"; then
        rows+=("$2")
    else
        echo "${2%%|*}: left out ($1 does not import)" >> "$summary"
    fi
}

# name, seconds, script, its arguments
rows=()
if [ "$memory" = 1 ] && [ "$dry_run" = 1 ]; then
    rows+=("tiny-lora-memory|300|memory_check.py|--size tiny --mode lora")
elif [ "$memory" = 1 ]; then
    rows+=("1b-full-memory|120|memory_check.py|--size 1b --mode full")
    rows+=("2b-full-memory|140|memory_check.py|--size 2b --mode full")
    rows+=("8b-lora-memory|140|memory_check.py|--size 8b --mode lora")
    add_if bitsandbytes "26b-qlora-memory|180|memory_check.py|--size 26b --mode qlora"
elif [ "$dry_run" = 1 ]; then
    rows+=("tiny-full-sdpa|400|train_step.py|--size tiny --mode full --samples 24 --peak-tflops 0.5 --attn sdpa")
else
    rows+=("1b-full-sdpa|110|train_step.py|--size 1b --mode full --samples 192 --attn sdpa")
    rows+=("2b-full-sdpa|130|train_step.py|--size 2b --mode full --samples 192 --attn sdpa")
    rows+=("8b-lora-sdpa|130|train_step.py|--size 8b --mode lora --samples 96 --attn sdpa")
    add_if flash_attn "2b-full-flash|100|train_step.py|--size 2b --mode full --samples 192 --attn flash_attention_2"
    add_if bitsandbytes "26b-qlora-sdpa|150|train_step.py|--size 26b --mode qlora --samples 48 --attn sdpa"
fi

for row in "${rows[@]}"; do
    IFS='|' read -r name seconds script arguments <<< "$row"
    # shellcheck disable=SC2086  # the arguments are words
    timeout "$seconds" "$python" "$repo/benchmarks/$script" $arguments > "$out/$name.txt" 2>&1
    status=$?
    case "$status" in
        0) if [ "$script" = memory_check.py ]; then
               echo "$name: $(grep -o 'estimate / [a-z]* [0-9.]*' "$out/$name.txt")" >> "$summary"
           else
               echo "$name: $(grep -c 'tokens/s, padding' "$out/$name.txt") rows" >> "$summary"
           fi ;;
        124) echo "$name: stopped after its $seconds s" >> "$summary" ;;
        *) echo "$name: failed (exit $status): $(tail -n 1 "$out/$name.txt")" >> "$summary" ;;
    esac
done
cat "$summary"
