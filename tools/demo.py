"""Offline demo: fine-tune a tiny InternVL on synthetic colour questions with `xtuner train`, convert it with
tools/convert_to_official.py and report held-out accuracy (exit status 1 below 90 %).

    python tools/demo.py [--work-dir work_dirs/demo]
"""
import argparse
import os
import sys

from internvl_plugin.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    args = parser.parse_args()
    result = run_demo(args.work_dir, repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return 0 if result['after'] >= 0.9 else 1


if __name__ == '__main__':
    sys.exit(main())
