"""The converter's command line, shared by tools/convert_to_official.py and configs/v1_5/convert_to_official.py
(where XTuner's InternVL guide sends users, with the same three arguments)."""
import argparse
import sys
from typing import List, Optional

from ..internvl import parse_dtype
from .convert import FORMATS, convert_checkpoint

USAGE = """Turn a training checkpoint into weights the official InternVL toolchain (or transformers' native class) loads.

    python tools/convert_to_official.py CONFIG CHECKPOINT SAVE_DIR [--format official|hf] [--dtype bfloat16]

The output takes the layout the base model came in unless --format says otherwise.
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Parses `argv` (default: the command line), converts, and returns the exit status (1 with one error line)."""
    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     prog='convert_to_official.py')
    parser.add_argument('config', help='the training config (.py)')
    parser.add_argument('checkpoint', help='an mmengine iter_xxx.pth file or a DeepSpeed checkpoint folder')
    parser.add_argument('save_dir', help='output folder (written atomically)')
    parser.add_argument('--format', choices=FORMATS,
                        help="'official': InternVL layout with remote code; 'hf': transformers-native "
                             '(default: the layout the base model came in)')
    parser.add_argument('--dtype', choices=['bfloat16', 'float16', 'float32'], default='bfloat16')
    parser.add_argument('--max-shard-size-gb', type=float, default=5.0)
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty SAVE_DIR')
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint(args.config, args.checkpoint, args.save_dir, fmt=args.format,
                                     dtype=parse_dtype(args.dtype), overwrite=args.overwrite,
                                     max_shard_bytes=int(args.max_shard_size_gb * 1024 ** 3),
                                     progress=lambda message: print(message, flush=True))
    except (OSError, ValueError) as error:  # bad input, an occupied or read-only output, a full disk
        print(f'convert_to_official: error: {error}', file=sys.stderr)
        return 1
    if summary['format'] == 'official' and not summary['remote_code']:
        print('warning: the base model folder has no remote-code *.py files; copy them from the original checkpoint '
              'before loading with trust_remote_code, LMDeploy or vLLM', file=sys.stderr)
    print(f"wrote {summary['format']} checkpoint to {args.save_dir}")
    return 0
