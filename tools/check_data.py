"""Check training data without training: counts, tiles, token lengths, samples over max_length, every problem.

    python tools/check_data.py META_JSON --model-path CKPT
    python tools/check_data.py CONFIG.py
    python tools/check_data.py a.jsonl b.json --model-path CKPT --image-folders imgs_a imgs_b
    python tools/check_data.py MMPR_META_JSON --model-path CKPT --preference     # preference pairs

Exit status 1 when any problem is found. --write-length stores each sample's token count as its `length`
field so later runs need no length pass; --decode also decodes every image and video.
"""
import argparse
import logging
import sys

from internvl_plugin.dataset.check import check_dataset, dataset_kwargs, format_report, write_lengths
from internvl_plugin.dataset.sources import DataError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', help='a training config (.py), a meta JSON, or json/jsonl files')
    parser.add_argument('--model-path', help='the InternVL checkpoint (tokenizer, template, tiling defaults)')
    parser.add_argument('--template', help='override the checkpoint template')
    parser.add_argument('--max-length', type=int)
    parser.add_argument('--max-dynamic-patch', type=int)
    parser.add_argument('--image-folders', nargs='+', help='image folder per json/jsonl file (default: its folder)')
    parser.add_argument('--preference', action='store_true',
                        help='preference pairs (question / chosen / rejected; a config says so itself)')
    parser.add_argument('--decode', action='store_true', help='also decode every image and video (slower)')
    parser.add_argument('--write-length', action='store_true', help='write each sample\'s "length" back')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="run the tokenizer code the checkpoint's auto_map names (never needed for InternVL)")
    args = parser.parse_args()
    overrides = {'model_path': args.model_path, 'template': args.template, 'max_length': args.max_length,
                 'max_dynamic_patch': args.max_dynamic_patch, 'image_folders': args.image_folders,
                 'trust_remote_code': args.trust_remote_code or None}
    logging.getLogger('internvl_plugin').setLevel(logging.ERROR)  # the report lists what the warnings would say
    try:
        report = check_dataset(dataset_kwargs(args.inputs, overrides, args.preference), decode=args.decode)
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f'check_data: error: {error}', file=sys.stderr)
        if 'is a preference pair' in str(error) and not args.preference:
            print('check_data: the lines are preference pairs: add --preference', file=sys.stderr)
        return 1
    print(format_report(report))
    if args.write_length:
        for path in write_lengths(report):
            print(f'wrote "length" fields to {path}')
    return 1 if report.problems else 0


if __name__ == '__main__':
    sys.exit(main())
