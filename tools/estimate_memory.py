"""Will it fit? The peak GPU memory of a config's training step at the real model size, without a GPU.

    python tools/estimate_memory.py CONFIG [--gpus N] [--deepspeed deepspeed_zeroK] [--gpu-memory GiB]
                                           [--model-config CONFIG_JSON] [--no-search] [--no-data]
    python tools/estimate_memory.py CONFIG ... --table    # one markdown row per config (the README's table)

The model is built from the real config.json shapes with fake weights and the config's worst-case batch (batch size
x max_length tokens with max_dynamic_patch tiles and the thumbnail, or the fullest pack, or for a preference config
pairs of a chosen and a rejected answer of max_length tokens each, its reference model included; where the config's
data and local model folder are there, rows as long as its longest sample with its most tiles) trains one step
under PyTorch's fake tensors: nothing is allocated. GPUs and DeepSpeed default to the config's recipe comment. It prints
the peak per GPU by category, whether it fits, and the largest batch (or max_length) that does. Exit status 1 when
the config's batch does not fit. With --table the largest batch is searched only for configs that do not fit.
"""
import argparse
import logging
import sys
import warnings

from internvl_plugin.memory.estimate import (GIB, TABLE_HEADER, ConfigModel, estimate_config, largest_fitting,
                                             read_zero_settings, report, table_row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='training configs (.py)')
    parser.add_argument('--gpus', type=int, help="GPUs sharing DeepSpeed's partitions (default: the recipe's)")
    parser.add_argument('--deepspeed', help="xtuner's deepspeed_zero1/2/3[_offload], a json, or none "
                                            "(default: the recipe's)")
    parser.add_argument('--gpu-memory', type=float, default=80.0, help='GiB per GPU (default 80)')
    parser.add_argument('--model-config', help='a config.json (or its folder) with the model shapes to use')
    parser.add_argument('--no-search', action='store_true', help='skip the search for the largest batch that fits')
    parser.add_argument('--no-data', action='store_true',
                        help="the config's worst case even where its data is there (default: the data's worst batch)")
    parser.add_argument('--table', action='store_true', help='one markdown table row per config')
    args = parser.parse_args()
    if len(args.configs) > 1 and not args.table:
        parser.error('several configs need --table')
    logging.getLogger('transformers').setLevel(logging.ERROR)
    warnings.filterwarnings('ignore', category=FutureWarning)
    budget, fits = args.gpu_memory * GIB, True
    if args.table:
        print(TABLE_HEADER.format(gib=args.gpu_memory), flush=True)
    for config in args.configs:
        try:
            if args.deepspeed not in (None, 'none'):
                read_zero_settings(args.deepspeed)   # a wrong name fails before the model is built
            model = ConfigModel(config, args.model_config, use_data=not args.no_data)
            estimate = estimate_config(config, args.gpus, args.deepspeed, model=model)
            search = not args.no_search and not (args.table and estimate.total <= budget)
            largest = largest_fitting(model, estimate, budget) if search else None
            model.close()
        except (ValueError, FileNotFoundError) as error:
            print(f'error: {error}', file=sys.stderr)
            if not args.table:
                return 2
            print(f'| {config} | error: {error} |', flush=True)
            fits = False
            continue
        fits = fits and estimate.total <= budget
        if args.table:
            print(table_row(estimate, args.gpu_memory, largest, searched=not args.no_search), flush=True)
        else:
            print('\n'.join(report(estimate, args.gpu_memory, largest, search)))
    return 0 if fits else 1


if __name__ == '__main__':
    sys.exit(main())
