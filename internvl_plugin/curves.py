"""Training curves without a server: the loss, learning rate and gradient norm of a run as a PNG.

The configs' visualizer writes every logged iteration to `WORK_DIR/<timestamp>/vis_data/scalars.json` (MMEngine's
LocalVisBackend: one JSON object a line, offline, no extra package). This reads those files, a resumed run's
folders in order (a later value of the same step wins), and draws them with matplotlib.
"""
import glob
import json
import os
from typing import Dict, List, Tuple

CURVES = ('loss', 'lr', 'grad_norm')
Curves = Dict[str, List[Tuple[int, float]]]


def read_training_curves(work_dir: str) -> Curves:
    """{'loss': [(step, value), ...], 'lr': ..., 'grad_norm': ...} from the run's scalars.json files."""
    files = sorted(glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (was it a training work dir, with the '
                                "configs' visualizer?)")
    by_step: Dict[str, Dict[int, float]] = {name: {} for name in CURVES}
    for path in files:
        with open(path, encoding='utf-8') as f:
            for line in f:
                record = json.loads(line)
                for name in CURVES:
                    if name in record:
                        by_step[name][int(record['step'])] = float(record[name])
    return {name: sorted(values.items()) for name, values in by_step.items() if values}


def plot_training_curves(curves: Curves, out_path: str, title: str = '') -> str:
    """One panel per curve, shared step axis; returns `out_path`."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(len(curves), 1, sharex=True, figsize=(7, 2.2 * len(curves)), squeeze=False)
    for axis, (name, points) in zip(axes[:, 0], curves.items()):
        axis.plot([step for step, _ in points], [value for _, value in points], marker='.' if len(points) < 50 else '')
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('iteration')
    if title:
        axes[0, 0].set_title(title)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    pyplot.close(figure)
    return out_path
