"""Turn a training checkpoint into weights the official InternVL toolchain (or transformers' native class) loads.

    python tools/convert_to_official.py CONFIG CHECKPOINT SAVE_DIR [--format official|hf] [--dtype bfloat16]

The output takes the layout the base model came in unless --format says otherwise.
"""
import argparse
import sys

from internvl_plugin.model.checkpoint.convert import FORMATS, convert_checkpoint
from internvl_plugin.model.internvl import parse_dtype


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the training config (.py)')
    parser.add_argument('checkpoint', help='an mmengine iter_xxx.pth file or a DeepSpeed checkpoint folder')
    parser.add_argument('save_dir', help='output folder (written atomically)')
    parser.add_argument('--format', choices=FORMATS,
                        help="'official': InternVL layout with remote code; 'hf': transformers-native "
                             '(default: the layout the base model came in)')
    parser.add_argument('--dtype', choices=['bfloat16', 'float16', 'float32'], default='bfloat16')
    parser.add_argument('--max-shard-size-gb', type=float, default=5.0)
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty SAVE_DIR')
    args = parser.parse_args()
    try:
        summary = convert_checkpoint(args.config, args.checkpoint, args.save_dir, fmt=args.format,
                                     dtype=parse_dtype(args.dtype), overwrite=args.overwrite,
                                     max_shard_bytes=int(args.max_shard_size_gb * 1024 ** 3))
    except (OSError, ValueError) as error:  # bad input, an occupied or read-only output, a full disk
        print(f'convert_to_official: error: {error}', file=sys.stderr)
        return 1
    print(f"loaded {summary['trained_tensors']} trained tensors from {args.checkpoint}")
    if summary['format'] == 'official' and not summary['remote_code']:
        print('warning: the base model folder has no remote-code *.py files; copy them from the original checkpoint '
              'before loading with trust_remote_code, LMDeploy or vLLM', file=sys.stderr)
    print(f"wrote {summary['format']} checkpoint to {args.save_dir}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
