"""Training throughput, packed against unpacked, on the same mixed workload; at real sizes also MFU and peak memory.

    python benchmarks/train_step.py [--mode full|lora|qlora] [--samples 96] [--steps 6]
    python benchmarks/train_step.py --size 1b|2b|8b|26b [--mode full|lora|qlora] [--attn flash_attention_2|sdpa]

The workload mixes text-only, one-image, two-image and long-answer samples (lengths from width/height, so packing
plans exactly). Each run (packed or not) is its own process, so its peak memory is its own; the ratio of real
(non-padding) tokens per second of forward + backward + optimizer step is the result, measured side by side.

Without --size: the tiny model on a CPU (fp32, SDPA). Unpacked: 4 samples a batch in random order, padded to the
longest; packed: one pack of up to 4096 tokens a step.

With --size: a random-initialised model of a released InternVL2_5 size (internvl_plugin.tiny.shapes, no
download), trained as that size's config in configs/v2_5 says (freezing, LoRA, 4-bit, dtype, checkpointing,
batch size, max_length, max_dynamic_patch). Unpacked: the config's batch in random order; packed: one pack of up
to 16384 tokens / 48 tiles a step (README, Packing). Adds model FLOPs utilisation (internvl_plugin.model.flops
against the GPU's dense bf16 peak) and a worst-case step: the config's batch of max_length-token samples with a
max_dynamic_patch image each, whose peak memory is what the config needs. `--size tiny` runs that path on a CPU.
The optimizer is torch's AdamW on the trainable weights in their dtype (DeepSpeed adds fp32 master weights and
states to a full fine-tune: 12 bytes per trainable parameter).
"""
import argparse
import ctypes
import multiprocessing
import os
import random
import resource
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional

import torch

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, PackedDataset, internvl_collate_fn
from internvl_plugin.model.flops import training_step_flops
from internvl_plugin.tiny import RELEASED_SHAPES, build_tiny_checkpoint, write_mixed_workload, write_shape_checkpoint

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'v2_5')
SIZE_RECIPES = {'tiny': 'internvl_v2_5_qwen2_5_0_5b', '1b': 'internvl_v2_5_qwen2_5_0_5b',
                '2b': 'internvl_v2_5_internlm2_5_2b', '8b': 'internvl_v2_5_internlm2_5_8b',
                '26b': 'internvl_v2_5_internlm2_5_26b'}
MODE_SUFFIXES = {'full': '_finetune.py', 'lora': '_lora_finetune.py', 'qlora': '_qlora_finetune.py'}
PACK_TOKENS, PACK_TILES = 16384, 48
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a word of the device name.
BF16_PEAK_TFLOPS = {'H200': 989.4, 'H100 PCIe': 756.0, 'H100 NVL': 835.5, 'H100': 989.4, 'A100': 312.0}


def tiny_model(mode: str, base: str) -> InternVL_V1_5:
    common = dict(freeze_visual_encoder=True, use_activation_checkpointing=True)
    if mode == 'full':
        return InternVL_V1_5(base, torch_dtype='float32', **common)
    lora = dict(llm_lora=dict(r=16, lora_alpha=32, lora_dropout=0.05), freeze_mlp=True, **common)
    if mode == 'lora':
        return InternVL_V1_5(base, torch_dtype='float32', **lora)
    return InternVL_V1_5(base, torch_dtype='bfloat16', quantization_llm=True, **lora)


def recipe_path(size: str, mode: str) -> str:
    return os.path.join(CONFIG_DIR, SIZE_RECIPES[size] + MODE_SUFFIXES[mode])


def recipe_model(model_cfg: Dict[str, Any], shape_dir: str, device: torch.device, attn: str) -> InternVL_V1_5:
    """The config's model dict, random-initialised from the size's shapes, built on `device` (4-bit weights are
    quantised by the move there)."""
    kwargs = {k: v for k, v in model_cfg.items() if k != 'type'}
    kwargs.update(model_path=shape_dir, random_init=True, attn_implementation=attn)
    with torch.device(device):
        model = InternVL_V1_5(**kwargs)
    return model.to(device)


def worst_case_batch(dataset: InternVL_V1_5_Dataset, batch_size: int, max_length: int,
                     tiles: int) -> List[Dict[str, Any]]:
    """`batch_size` samples of `max_length` tokens, each with one image of `tiles` tiles and every token supervised."""
    tokenizer = dataset.tokenizer
    context = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>')
    ordinary = (max(tokenizer.all_special_ids) + 1, len(tokenizer))  # the tiny tokenizers number specials first
    image_tokens, side = tiles * dataset.image.tokens_per_tile, dataset.image.image_size
    samples = []
    for seed in range(batch_size):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(*ordinary, (max_length,), generator=generator)
        ids[1:1 + image_tokens] = context
        samples.append({'input_ids': ids, 'labels': ids.clone(), 'image_flags': torch.ones(tiles, dtype=torch.long),
                        'pixel_values': torch.randint(0, 256, (tiles, 3, side, side), dtype=torch.uint8,
                                                      generator=generator),
                        'pad_token_id': tokenizer.pad_token_id})
    return samples


def shuffled_batches(dataset: Any, batch_size: int) -> List[List[Dict]]:
    """The dataset's items (samples or packs) in a fixed random order, `batch_size` a batch."""
    order = random.Random(0).sample(range(len(dataset)), len(dataset))
    return [[dataset[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def bf16_peak_flops(device: torch.device, override_tflops: Optional[float]) -> Optional[float]:
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for word, tflops in BF16_PEAK_TFLOPS.items() if word in name), None)


def run(model: InternVL_V1_5, batches: List[List[Dict]], device: torch.device) -> Dict[str, float]:
    """Trains on every batch; times all but the first (which warms up allocators and kernels). Batches are
    collated and counted before the clock starts, as dataloader workers collate beside the training loop."""
    if len(batches) < 2:
        raise ValueError(f'{len(batches)} batch(es): the first only warms up; raise --samples for at least 2')
    collated = [internvl_collate_fn(batch) for batch in batches]
    timed = [batch['data'] for batch in collated[1:]]
    real = sum(int(data['attention_mask'].sum()) for data in timed)
    padded = sum(data['input_ids'].numel() for data in timed)
    flops = sum(training_step_flops(model.model, data).total for data in timed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    start = 0.0
    for step, batch in enumerate(collated):
        if step == 1:
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        loss = model(**model.data_preprocessor(batch, True), mode='loss')['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {'tokens_per_s': real / seconds, 'padding': 1 - real / padded, 'flops_per_s': flops / seconds}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def measure_tiny(mode: str, packed: bool, samples: int, steps: int) -> Dict[str, float]:
    """One CPU run (packed or not) from scratch: its own workload, model and process."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, 'tiny')
        build_tiny_checkpoint(base, llm='qwen2')
        dataset = InternVL_V1_5_Dataset(model_path=base, data_paths=[write_mixed_workload(folder, samples)],
                                        max_length=4096, max_dynamic_patch=4)
        if packed:
            batches = shuffled_batches(PackedDataset(dataset, max_packed_tokens=4096, max_packed_tiles=16), 1)
        else:
            batches = shuffled_batches(dataset, 4)
        result = run(tiny_model(mode, base), batches[:steps + 1], torch.device('cpu'))
    result['peak_gib'] = peak_memory_gib(torch.device('cpu'))
    result['batches'] = len(batches)
    return result


def measure_size(size: str, mode: str, kind: str, shape_dir: str, samples: int, device_name: str,
                 attn: str) -> Dict[str, float]:
    """One real-shape run in its own process; `kind` is 'unpacked', 'packed' or 'worst' (the config's batch of
    max_length-token samples)."""
    from mmengine.config import Config
    torch.manual_seed(0)
    device = torch.device(device_name)
    cfg = Config.fromfile(recipe_path(size, mode))
    with tempfile.TemporaryDirectory() as folder:
        dataset = InternVL_V1_5_Dataset(model_path=shape_dir, data_paths=[write_mixed_workload(folder, samples)],
                                        max_length=cfg.max_length, max_dynamic_patch=cfg.max_dynamic_patch)
        if kind == 'packed':
            batches = shuffled_batches(PackedDataset(dataset, max_packed_tokens=PACK_TOKENS,
                                                     max_packed_tiles=PACK_TILES), 1)
        elif kind == 'unpacked':
            batches = shuffled_batches(dataset, cfg.batch_size)
        else:
            batches = [worst_case_batch(dataset, cfg.batch_size, cfg.max_length, cfg.max_dynamic_patch + 1)] * 3
    model = recipe_model(cfg.model, shape_dir, device, attn)
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = run(model, batches, device)
    result['peak_gib'] = peak_memory_gib(device)
    result['batches'] = len(batches)
    return result


def _end_with_the_benchmark() -> None:
    """The measuring process gets SIGKILL when the benchmark ends (Linux): a time limit (`subprocess.run(timeout=)`)
    kills only the benchmark, and its measurement would go on competing for the CPU with whatever runs next."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != multiprocessing.parent_process().pid:  # it ended before the signal was asked for
            os._exit(1)


def in_own_process(function, *args) -> Dict[str, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context('spawn'),
                             initializer=_end_with_the_benchmark) as pool:
        return pool.submit(function, *args).result()


def report_tiny(args: argparse.Namespace) -> None:
    unpacked = in_own_process(measure_tiny, args.mode, False, args.samples or 96, args.steps * 3)
    packed = in_own_process(measure_tiny, args.mode, True, args.samples or 96, args.steps)
    print(f'mode {args.mode}, {args.samples or 96} samples ({packed["batches"]} packs of <= 4096 tokens / 16 tiles), '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    for name, result in (('unpacked (4 samples a batch)', unpacked), ('packed (1 pack a step)', packed)):
        print(f"{name:<30}{result['tokens_per_s']:8.0f} tokens/s, padding {result['padding']:5.1%}, "
              f"peak RSS {result['peak_gib'] * 1024:6.0f} MB")
    print(f"packed / unpacked tokens/s: {packed['tokens_per_s'] / unpacked['tokens_per_s']:.2f}x")


def report_size(args: argparse.Namespace) -> None:
    import transformers
    from mmengine.config import Config
    from transformers.utils import is_flash_attn_2_available
    device = torch.device(args.device)
    attn = args.attn or ('flash_attention_2' if device.type == 'cuda' and is_flash_attn_2_available() else 'sdpa')
    cfg = Config.fromfile(recipe_path(args.size, args.mode))
    samples = args.samples or 384
    peak = bf16_peak_flops(device, args.peak_tflops)
    with tempfile.TemporaryDirectory() as folder:
        shape_dir = os.path.join(folder, args.size)
        write_shape_checkpoint(shape_dir, args.size)
        results = {kind: in_own_process(measure_size, args.size, args.mode, kind, shape_dir, samples, args.device,
                                        attn) for kind in ('unpacked', 'packed', 'worst')}
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f"{RELEASED_SHAPES[args.size]['model']} shapes (random init), mode {args.mode}, "
          f"{os.path.relpath(recipe_path(args.size, args.mode))}: batch {cfg.batch_size}, max_length "
          f"{cfg.max_length}, max_dynamic_patch {cfg.max_dynamic_patch}; {attn}; {samples} samples; {name}, "
          f'torch {torch.__version__}, transformers {transformers.__version__}')
    rows = (('unpacked', f'unpacked ({cfg.batch_size} samples a batch)'),
            ('packed', f'packed (1 pack <= {PACK_TOKENS} tokens / {PACK_TILES} tiles)'),
            ('worst', f'worst case ({cfg.batch_size} x {cfg.max_length} tokens, '
                      f'{cfg.max_dynamic_patch + 1} tiles each)'))
    for kind, label in rows:
        result = results[kind]
        mfu = f"{result['flops_per_s'] / peak:6.1%}" if peak else '   n/a'
        print(f"{label:<52}{result['tokens_per_s']:10.0f} tokens/s, padding {result['padding']:5.1%}, MFU {mfu}, "
              f"peak memory {result['peak_gib']:6.2f} GiB")
    print(f"packed / unpacked tokens/s: {results['packed']['tokens_per_s'] / results['unpacked']['tokens_per_s']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mode', choices=sorted(MODE_SUFFIXES), default='full')
    parser.add_argument('--size', choices=sorted(SIZE_RECIPES), help='real shapes under the size\'s config')
    parser.add_argument('--samples', type=int, help='workload size (default 96 tiny, 384 with --size)')
    parser.add_argument('--steps', type=int, default=6, help='timed packed steps without --size')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--attn', choices=['flash_attention_2', 'sdpa', 'eager'],
                        help='default: flash_attention_2 where flash_attn is installed on a GPU, else sdpa')
    parser.add_argument('--peak-tflops', type=float, help='the device\'s dense bf16 peak, where not known')
    args = parser.parse_args()
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: torch {torch.__version__} sees no CUDA device')
    if args.size:
        report_size(args)
    else:
        report_tiny(args)


if __name__ == '__main__':
    main()
