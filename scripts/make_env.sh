#!/usr/bin/env bash
# Builds one of the two tested environments:  bash scripts/make_env.sh (pinned|newest) VENV_DIR
#   pinned: what `pip install -e .` resolves to with xtuner 0.2.0's pins (torch 2.5 era).
#   newest: the newest set xtuner tolerates (torch 2.14.1, transformers 4.57.6, bitsandbytes 0.50.2, ...).
# The pip commands below are the ones README.md gives users. An environment that is newer than this script and
# setup.py is kept as it is.
set -euo pipefail
world=$1
venv=$2
cd "$(dirname "$0")/.."
if [ -f "$venv/.ready" ] && [ "$venv/.ready" -nt scripts/make_env.sh ] && [ "$venv/.ready" -nt setup.py ]; then
  echo "$world environment in $venv is up to date"
  exit 0
fi
rm -rf "$venv"

pip_install() {
  local log
  log=$(mktemp)
  if ! "$venv/bin/python" -m pip install -q "$@" >"$log" 2>&1; then
    grep -v 'is ignored: it is neither' "$log" >&2
    rm -f "$log"
    return 1
  fi
  grep -v 'is ignored: it is neither' "$log" || true
  rm -f "$log"
}

python3 -m venv "$venv"
case "$world" in
  pinned)
    pip_install torch==2.5.1 torchvision==0.20.1
    pip_install -e '.[deepspeed,test]' deepspeed==0.16.2
    ;;
  newest)
    pip_install torch==2.14.1 torchvision==0.29.1
    pip_install -e '.[deepspeed,test]'
    # Over xtuner's pins; pip reports the conflict with xtuner's pins, which is expected (README, "Tested versions").
    pip_install transformers==4.57.6 mmengine==0.10.7 bitsandbytes==0.50.2 peft==0.21.2 deepspeed==0.19.6 \
      'huggingface_hub<1'
    ;;
  *) echo "make_env.sh: unknown world '$world' (expected pinned or newest)" >&2; exit 2 ;;
esac
"$venv/bin/python" -c "import torch, transformers, mmengine, xtuner; print('$world environment:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'mmengine', mmengine.__version__)"
touch "$venv/.ready"
