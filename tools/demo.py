"""Offline demo: fine-tune a tiny InternVL on synthetic colour questions with `xtuner train`, convert it with
tools/convert_to_official.py and report held-out accuracy (exit status 1 below 90 %). With --preference it trains
with the MPO config on colour pairs (chosen the right colour, rejected another) instead, and reports how often the
chosen answer is the likelier one and how often the greedy answer is right (exit status 1 if either is below 90 %).

    python tools/demo.py [--work-dir work_dirs/demo] [--preference]
"""
import argparse
import os
import sys

from internvl_plugin.demo import run_demo, run_preference_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=None, help='default: work_dirs/demo (work_dirs/preference_demo)')
    parser.add_argument('--preference', action='store_true', help='the MPO preference demo')
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.preference:
        result = run_preference_demo(args.work_dir or 'work_dirs/preference_demo', repo=repo)
        return 0 if min(result['after'].values()) >= 0.9 else 1
    result = run_demo(args.work_dir or 'work_dirs/demo', repo=repo)
    return 0 if result['after'] >= 0.9 else 1


if __name__ == '__main__':
    sys.exit(main())
