"""Write a random tiny InternVL checkpoint, in the official layout or transformers' native one (for tests and the
offline demo).

    python tools/build_tiny_model.py --llm {qwen2,qwen3,internlm2,phi3,llama} --vit {300m,6b} [--layout hf] --out DIR
"""
import argparse
import sys

from internvl_plugin.checkpoint_layout import NATIVE, OFFICIAL
from internvl_plugin.model.internvl import parse_dtype
from internvl_plugin.tiny import FAMILY_TEMPLATES, VIT_STYLES, build_tiny_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--llm', choices=sorted(FAMILY_TEMPLATES), default='qwen2')
    parser.add_argument('--vit', choices=VIT_STYLES, default='300m')
    parser.add_argument('--layout', choices=[OFFICIAL, NATIVE], default=OFFICIAL,
                        help="'official' (internvl_chat, default) or 'hf' (transformers' native internvl, as -HF)")
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--dtype', choices=['bfloat16', 'float16', 'float32'], default='float32')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args()
    try:
        config = build_tiny_checkpoint(args.out, llm=args.llm, vit=args.vit, seed=args.seed,
                                       dtype=parse_dtype(args.dtype), overwrite=args.overwrite, layout=args.layout)
    except (FileExistsError, ValueError) as error:
        print(f'build_tiny_model: error: {error}', file=sys.stderr)
        return 1
    print(f"wrote a tiny {args.llm} + ViT-{args.vit} InternVL checkpoint ({args.layout} layout, template "
          f"{config['template']}) to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
