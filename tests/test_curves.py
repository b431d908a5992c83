"""Training curves from a work dir's scalars.json files (what the configs' visualizer writes), drawn offline."""
import json
import os
import subprocess
import sys

from PIL import Image
from xtuner_cli import REPO

from internvl_plugin.curves import read_training_curves


def _write_scalars(work_dir, timestamp: str, records: list) -> None:
    folder = work_dir / timestamp / 'vis_data'
    folder.mkdir(parents=True)
    (folder / 'scalars.json').write_text(''.join(json.dumps(record) + '\n' for record in records))


def test_a_resumed_run_reads_as_one_curve_and_plot_curves_draws_it(tmp_path):
    _write_scalars(tmp_path, '20260101_000000', [{'lr': 1e-5, 'loss': 2.0, 'grad_norm': 9.0, 'step': 1},
                                                 {'lr': 2e-5, 'loss': 1.5, 'grad_norm': 7.0, 'step': 2}])
    # Resumed from step 1: step 2 again, then 3 (the later run's values win).
    _write_scalars(tmp_path, '20260101_010000', [{'lr': 2e-5, 'loss': 1.4, 'grad_norm': 6.0, 'step': 2},
                                                 {'lr': 3e-5, 'loss': 1.0, 'step': 3}])
    assert read_training_curves(str(tmp_path)) == {'loss': [(1, 2.0), (2, 1.4), (3, 1.0)],
                                                   'lr': [(1, 1e-5), (2, 2e-5), (3, 3e-5)],
                                                   'grad_norm': [(1, 9.0), (2, 6.0)]}
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'plot_curves.py'), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    png = tmp_path / 'training_curves.png'
    assert result.stdout.strip().splitlines()[-1] == f'{png}: loss (3 points), lr (3 points), grad_norm (2 points)'
    with Image.open(png) as image:
        assert image.format == 'PNG' and image.size == (700, 660)


def test_a_folder_without_scalars_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'plot_curves.py'), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    # The last line: importing the package can print library notices first (bitsandbytes 0.45 without a GPU).
    assert result.stderr.strip().splitlines()[-1] == (f'plot_curves: error: {tmp_path}: no */vis_data/scalars.json '
                                                      "(was it a training work dir, with the configs' visualizer?)")
