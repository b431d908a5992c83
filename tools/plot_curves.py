"""Draw a training run's loss, learning rate and gradient norm into a PNG (offline; no TensorBoard needed).

    python tools/plot_curves.py work_dirs/NAME [--out curves.png]
"""
import argparse
import os
import sys

from internvl_plugin.curves import plot_training_curves, read_training_curves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dir', help='the work dir of an xtuner train run')
    parser.add_argument('--out', help='default: WORK_DIR/training_curves.png')
    args = parser.parse_args()
    try:
        curves = read_training_curves(args.work_dir)
    except (OSError, ValueError) as error:
        print(f'plot_curves: error: {error}', file=sys.stderr)
        return 1
    out = plot_training_curves(curves, args.out or os.path.join(args.work_dir, 'training_curves.png'),
                               title=os.path.basename(os.path.abspath(args.work_dir)))
    print(f'{out}: ' + ', '.join(f'{name} ({len(points)} points)' for name, points in curves.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
