"""Turn a training checkpoint into weights the official InternVL toolchain (or transformers' native class) loads.

    python tools/convert_to_official.py CONFIG CHECKPOINT SAVE_DIR [--format official|hf] [--dtype bfloat16]

The output takes the layout the base model came in unless --format says otherwise.
"""
import sys

from internvl_plugin.model.checkpoint.convert_command import main

if __name__ == '__main__':
    sys.exit(main())
