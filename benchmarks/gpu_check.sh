#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one call (issue 19): device and versions, then one row per run of
# benchmarks/train_step.py, each in its own time limit so that the whole call stays within 10 minutes.
#
#   bash benchmarks/gpu_check.sh OUT                # on the lent H100 / H200
#   bash benchmarks/gpu_check.sh --dry-run OUT      # the same rows at tiny sizes on a CPU (what CI runs)
#
# Rows: 1B and 2B full fine-tune and 8B LoRA with SDPA (and with flash attention 2 where flash_attn imports), the
# 26B QLoRA worst case where bitsandbytes imports. Each prints packed and unpacked tokens/s, MFU and peak memory.
# A machine without the training stack (mmengine and its helpers are pure Python) gets it from wheels in
# $GPU_CHECK_WHEELS (default .gpu_wheels: `pip download --no-deps -d .gpu_wheels mmengine==0.10.7 addict yapf
# termcolor rich`), installed with --no-deps into a user site. OUT/summary.txt lists every row and how it ended.
set -u

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
out="${1:?usage: bash benchmarks/gpu_check.sh [--dry-run] OUT}"
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

# name, seconds, train_step.py arguments
rows=()
if [ "$dry_run" = 1 ]; then
    rows+=("tiny-full-sdpa|400|--size tiny --mode full --samples 24 --peak-tflops 0.5 --attn sdpa")
    rows+=("tiny-lora-sdpa|400|--size tiny --mode lora --samples 24 --peak-tflops 0.5 --attn sdpa")
else
    rows+=("1b-full-sdpa|110|--size 1b --mode full --samples 192 --attn sdpa")
    rows+=("2b-full-sdpa|130|--size 2b --mode full --samples 192 --attn sdpa")
    rows+=("8b-lora-sdpa|130|--size 8b --mode lora --samples 96 --attn sdpa")
    if has flash_attn; then
        rows+=("2b-full-flash|100|--size 2b --mode full --samples 192 --attn flash_attention_2")
    else
        echo "2b-full-flash: left out (flash_attn does not import)" >> "$summary"
    fi
    if has bitsandbytes; then
        rows+=("26b-qlora-sdpa|150|--size 26b --mode qlora --samples 48 --attn sdpa")
    else
        echo "26b-qlora-sdpa: left out (bitsandbytes does not import)" >> "$summary"
    fi
fi

for row in "${rows[@]}"; do
    IFS='|' read -r name seconds arguments <<< "$row"
    # shellcheck disable=SC2086  # the arguments are words
    timeout "$seconds" "$python" "$repo/benchmarks/train_step.py" $arguments > "$out/$name.txt" 2>&1
    status=$?
    case "$status" in
        0) echo "$name: $(grep -c 'tokens/s, padding' "$out/$name.txt") rows" >> "$summary" ;;
        124) echo "$name: stopped after its $seconds s" >> "$summary" ;;
        *) echo "$name: failed (exit $status): $(tail -n 1 "$out/$name.txt")" >> "$summary" ;;
    esac
done
echo "memory estimate beside each peak: no estimator yet (issue 16)" >> "$summary"
cat "$summary"
