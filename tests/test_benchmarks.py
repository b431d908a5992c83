"""The benchmark scripts run end to end and print what benchmarks/README.md reports from them."""
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a benchmark reports is the script's; the library paths it takes are tested in every world elsewhere.
pytestmark = pytest.mark.newest_only


def run_benchmark(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_check_dry_run_runs_its_rows_at_tiny_sizes_and_reports_each(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: the device script's own path (versions, rows, summary) on a CPU, so that
    nothing is first tried on a lent GPU. Its full-fine-tune row is train_step.py's --size path, checked below."""
    out = tmp_path / 'out'
    result = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_check.sh'), '--dry-run', str(out)],
                            env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    device = (out / 'device.txt').read_text()
    assert f'torch: {torch_version()}' in device and 'transformers: ' in device
    assert (out / 'summary.txt').read_text().splitlines() == ['tiny-full-sdpa: 3 rows']
    check_train_step_rows((out / 'tiny-full-sdpa.txt').read_text().splitlines())


def test_gpu_check_memory_dry_run_puts_the_estimate_beside_the_real_step(tmp_path):
    """--memory --dry-run: memory_check.py's rows at tiny size on a CPU, where the real step's peak is the storage
    tracker's on real tensors (on a GPU it is torch.cuda.max_memory_allocated)."""
    out = tmp_path / 'out'
    result = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_check.sh'), '--dry-run', '--memory',
                             str(out)], env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / 'summary.txt').read_text().splitlines()
    assert [line.split(':')[0] for line in summary] == ['tiny-lora-memory']
    for line in summary:
        assert float(re.fullmatch(r'[\w-]+: estimate / tracked ([\d.]+)', line).group(1)) == pytest.approx(1, abs=0.05)
    row = (out / 'tiny-lora-memory.txt').read_text().splitlines()[-1]
    assert re.fullmatch(r'tiny lora \(4 x 8192 tokens, 7 tiles each\): estimate [\d.]+ GiB in [\d.]+ s, tracked on '
                        r'real tensors [\d.]+ GiB, estimate / tracked [\d.]+', row), row


def torch_version() -> str:
    import torch
    return torch.__version__


def check_train_step_rows(lines):
    """--size tiny takes the --size path (config-only checkpoint, random init, the 1B recipe) on a CPU."""
    assert lines[-5].startswith('tiny shapes (random init), mode full, configs/v2_5/internvl_v2_5_qwen2_5_0_5b_fine')
    row = re.compile(r'\s+(\d+) tokens/s, padding\s+([\d.]+)%, MFU\s+([\d.]+)%, peak memory\s+([\d.]+) GiB$')
    rows = {}
    for line in lines[-4:-1]:
        label, found = line.split('  ')[0], row.search(line)
        assert found, line
        rows[label] = [float(value) for value in found.groups()]
    unpacked, packed, worst = (rows.pop('unpacked (4 samples a batch)'),
                               rows.pop('packed (1 pack <= 16384 tokens / 48 tiles)'),
                               rows.pop('worst case (4 x 8192 tokens, 7 tiles each)'))
    assert not rows
    assert packed[1] == 0 < unpacked[1] and worst[1] == 0
    assert all(tokens > 0 and 0 < mfu < 100 and memory > 0 for tokens, _, mfu, memory in (unpacked, packed, worst))
    ratio = float(re.fullmatch(r'packed / unpacked tokens/s: ([\d.]+)x', lines[-1]).group(1))
    assert ratio == pytest.approx(packed[0] / unpacked[0], abs=0.01)


def test_data_pipeline_quick_ends_with_the_ratio_against_xtuner():
    last = run_benchmark('data_pipeline.py', '--quick').splitlines()[-1]
    found = re.fullmatch(r'ours / XTuner samples/s: ([\d.]+)x \(max_dynamic_patch 6\), ([\d.]+)x '
                         r'\(max_dynamic_patch 12\)', last)
    assert found, last
    assert all(float(ratio) > 0 for ratio in found.groups())


def test_loss_logits_reports_equal_losses_and_the_ratios():
    """32 tokens and one timed step: bf16 matmuls at the 1B vocabulary are slow on a CPU without AVX-512 (512
    tokens took over 600 s in the transformers4 world on this project's 2-core machine)."""
    lines = run_benchmark('loss_logits.py', '--size', '1b', '--tokens', '32', '--steps', '1').splitlines()
    assert lines[-4].startswith('InternVL2_5-1B output layer (896 x 151674, bf16), 32 tokens, 10.3% supervised')
    row = re.compile(r'loss ([\d.]+),\s+([\d.]+) ms/step, peak\s+([\d.]+) GiB$')
    every, ours = (row.search(line) for line in lines[-3:-1])
    assert lines[-3].startswith('logits for every token') and lines[-2].startswith('logits where supervised')
    assert every.group(1) == ours.group(1)
    found = re.fullmatch(r'every token / where supervised: ([\d.]+)x time, ([\d.]+)x memory', lines[-1])
    assert found and float(found.group(2)) > 1, lines[-1]


def test_data_build_counts_lengths_in_workers_plans_packs_and_fails_early_on_data_that_cannot_fit():
    """9,000 lines make three tasks of lines, so the worker row really forks."""
    lines = run_benchmark('data_build.py', '--lines', '9000', '--workers', '2').splitlines()
    assert lines[-8].startswith('9,000 lines, 9,000 samples (qwen2 tiny tokenizer)')
    assert re.fullmatch(r'lengths, 2 worker processes: +[\d.]+ s +[\d,]+ lines/s +[\d.]+x', lines[-5]), lines[-5]
    packs = re.fullmatch(r'packing plan \(([\d,]+) packs, ([\d.]+) of 48 tiles each\): +[\d.]+ s', lines[-4])
    assert packs and float(packs.group(2)) > 47, lines[-4]
    assert re.fullmatch(r'images alone over max_length \(64\): fails at build after [\d.]+ s', lines[-2])
    assert re.fullmatch(r'every sample dropped at load \(max_length 260\): fails at first item after [\d.]+ s',
                        lines[-1])


def test_a_benchmark_stopped_by_a_time_limit_leaves_no_measuring_process_behind(tmp_path):
    """in_own_process's measuring process ends with the benchmark (a timed-out benchmark left it computing for the
    rest of the test run)."""
    ready = tmp_path / 'ready'
    code = (f'import time, train_step; train_step.in_own_process(exec, "open({str(ready)!r}, \'w\').close(); '
            f'import time; time.sleep(600)")')
    benchmark = subprocess.Popen([sys.executable, '-c', code], cwd=os.path.join(ROOT, 'benchmarks'))
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert benchmark.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        measuring = [pid for pid in subprocess.run(['pgrep', '-P', str(benchmark.pid), '-f', 'spawn_main'],
                                                   capture_output=True, text=True).stdout.split()]
        assert len(measuring) == 1
    finally:
        benchmark.kill()
        benchmark.wait()
    deadline = time.monotonic() + 30
    while process_lives(int(measuring[0])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_lives(int(measuring[0]))


def process_lives(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
