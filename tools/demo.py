"""Offline demo: fine-tune a tiny InternVL on synthetic colour questions, convert it, report held-out accuracy.

    python tools/demo.py [--work-dir work_dirs/demo] [--steps 120]
"""
import argparse
import sys

from internvl_plugin.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--steps', type=int, default=120)
    args = parser.parse_args()
    result = run_demo(args.work_dir, steps=args.steps)
    return 0 if result['after'] >= 0.9 else 1


if __name__ == '__main__':
    sys.exit(main())
