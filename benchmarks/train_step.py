"""Training throughput, packed against unpacked, on the same mixed workload and the same tiny model (CPU).

    python benchmarks/train_step.py [--mode full|lora|qlora] [--samples 96] [--steps 6]

The workload mixes text-only, one-image, two-image and long-answer samples (lengths from width/height, so packing
plans exactly). Unpacked: 4 samples a batch in random order (padding to the longest). Packed: one pack of up to
4096 tokens a step. Reports real (non-padding) tokens per second of forward + backward + optimizer step, the
padding share, the peak resident memory of each run (each runs in its own process, so the peaks are its own), and
the packed / unpacked ratio, in one run. Absolute times on a CPU say little about a GPU; the ratio is the result.
Real-shape GPU numbers (--size) are not implemented yet.
"""
import argparse
import multiprocessing
import os
import random
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List

import torch

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, PackedDataset, internvl_collate_fn
from internvl_plugin.tiny import build_tiny_checkpoint, write_mixed_workload


def model_for(mode: str, base: str) -> InternVL_V1_5:
    common = dict(freeze_visual_encoder=True, use_activation_checkpointing=True)
    if mode == 'full':
        return InternVL_V1_5(base, torch_dtype='float32', **common)
    lora = dict(llm_lora=dict(r=16, lora_alpha=32, lora_dropout=0.05), freeze_mlp=True, **common)
    if mode == 'lora':
        return InternVL_V1_5(base, torch_dtype='float32', **lora)
    return InternVL_V1_5(base, torch_dtype='bfloat16', quantization_llm=True, **lora)


def run(model: InternVL_V1_5, batches: List[List[Dict]], steps: int) -> Dict[str, float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    real = padded = 0
    start = None
    for step, batch in enumerate(batches[:steps + 1]):
        if step == 1:  # the first step warms up allocators and kernels
            start, real, padded = time.perf_counter(), 0, 0
        data = internvl_collate_fn(batch)
        real += int(data['data']['attention_mask'].sum())
        padded += data['data']['input_ids'].numel()
        loss = model(**data, mode='loss')['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return {'tokens_per_s': real / seconds, 'padding': 1 - real / padded}


def measure(mode: str, packed: bool, samples: int, steps: int) -> Dict[str, float]:
    """One run (packed or not) from scratch: its own workload, model and process."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, 'tiny')
        build_tiny_checkpoint(base, llm='qwen2')
        dataset = InternVL_V1_5_Dataset(model_path=base, data_paths=[write_mixed_workload(folder, samples)],
                                        max_length=4096, max_dynamic_patch=4)
        if packed:
            packs = PackedDataset(dataset, max_packed_tokens=4096, max_packed_tiles=16)
            batches = [[packs[k]] for k in random.Random(0).sample(range(len(packs)), len(packs))]
        else:
            order = random.Random(0).sample(range(len(dataset)), len(dataset))
            batches = [[dataset[i] for i in order[k:k + 4]] for k in range(0, len(order), 4)]
        result = run(model_for(mode, base), batches, steps)
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result['batches'] = len(batches)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mode', choices=['full', 'lora', 'qlora'], default='full')
    parser.add_argument('--samples', type=int, default=96)
    parser.add_argument('--steps', type=int, default=6)
    args = parser.parse_args()
    context = multiprocessing.get_context('spawn')
    results = {}
    for packed, steps in ((False, args.steps * 3), (True, args.steps)):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results[packed] = pool.submit(measure, args.mode, packed, args.samples, steps).result()
    unpacked, packed = results[False], results[True]
    print(f'mode {args.mode}, {args.samples} samples ({packed["batches"]} packs of <= 4096 tokens / 16 tiles), torch '
          f'{torch.__version__}, {torch.get_num_threads()} threads')
    for name, result in (('unpacked (4 samples a batch)', unpacked), ('packed (1 pack a step)', packed)):
        print(f"{name:<30}{result['tokens_per_s']:8.0f} tokens/s, padding {result['padding']:5.1%}, "
              f"peak RSS {result['peak_rss_mb']:6.0f} MB")
    print(f"packed / unpacked tokens/s: {packed['tokens_per_s'] / unpacked['tokens_per_s']:.2f}x")


if __name__ == '__main__':
    main()
