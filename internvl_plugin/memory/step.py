"""One training step of a config's model on its worst-case batch, measured without memory (see tracking.py).

The step is the one `xtuner train` runs: the model's data preprocessor and loss forward, backward, the config's
gradient clipping and optimizer step, measured as every step after the first runs (see measure_step).
"""
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from ..dataset.collate import internvl_collate_fn, preference_collate_fn
from ..dataset.templates import IGNORE_INDEX
from ..model.internvl import InternVL_V1_5
from .moe_routing import representative_experts, stack_experts
from .tracking import FakeFloatMode, StorageTracker

IMAGE_START, IMAGE_END = '<img>', '</img>'


@dataclass
class StepMemory:
    """Bytes of one measured step, per category, at its peak and at the peak of activations + logits / loss."""
    peak: Dict[str, int]
    transient_peak: Dict[str, int]
    parameter_bytes: int
    trainable_parameters: int
    trainable_bytes: int
    largest_module_bytes: int
    seconds: float


def worst_case_sample(model: InternVL_V1_5, length: int, tiles: int) -> Dict[str, Any]:
    """A `length`-token sample with one image of `tiles` tiles and every text token supervised."""
    tokenizer = model.tokenizer
    image_tokens = tiles * model.model.tokens_per_tile
    if image_tokens + 3 > length:
        raise ValueError(f'{tiles} tiles take {image_tokens} tokens, more than a {length}-token sample holds')
    context = model.model.img_context_token_id
    start, end = tokenizer.convert_tokens_to_ids(IMAGE_START), tokenizer.convert_tokens_to_ids(IMAGE_END)
    text = next(i for i in range(len(tokenizer)) if i not in (context, start, end))
    ids = torch.full((length,), text, dtype=torch.long)
    ids[1], ids[2:2 + image_tokens], ids[2 + image_tokens] = start, context, end
    labels = ids.clone()
    labels[:3 + image_tokens] = IGNORE_INDEX
    side = model.model.vision_model.config.image_size
    return {'input_ids': ids, 'labels': labels, 'pixel_values': torch.zeros(tiles, 3, side, side, dtype=torch.uint8),
            'image_flags': torch.ones(tiles, dtype=torch.long), 'pad_token_id': tokenizer.pad_token_id or 0}


def worst_case_pack(model: InternVL_V1_5, max_tokens: int, max_tiles: int, tiles_per_sample: int) -> Dict[str, Any]:
    """A pack that fills both budgets: samples of `tiles_per_sample` tiles (the last takes the rest) sharing
    `max_tokens` tokens evenly. Fewer tiles when their tokens alone would not leave room for text."""
    per_tile = model.model.tokens_per_tile
    samples = -(-max_tiles // tiles_per_sample)
    max_tiles = min(max_tiles, (max_tokens - 4 * samples) // per_tile)
    counts = [tiles_per_sample] * (max_tiles // tiles_per_sample) + ([max_tiles % tiles_per_sample] if
                                                                     max_tiles % tiles_per_sample else [])
    lengths = [max_tokens // len(counts)] * len(counts)
    lengths[-1] += max_tokens - sum(lengths)
    if any(tiles * per_tile + 3 > length for tiles, length in zip(counts, lengths)):
        lengths = [tiles * per_tile + 4 for tiles in counts]
        lengths[-1] += max_tokens - sum(lengths)
    parts = [worst_case_sample(model, length, tiles) for length, tiles in zip(lengths, counts)]
    pack = {key: torch.cat([part[key] for part in parts]) for key in ('input_ids', 'labels', 'pixel_values',
                                                                       'image_flags')}
    return dict(pack, pad_token_id=parts[0]['pad_token_id'], sample_lengths=torch.tensor(lengths))


def worst_case_pair(model: InternVL_V1_5, length: int, tiles: int) -> Dict[str, Any]:
    """A preference pair whose chosen and rejected sequences are both `length` tokens: one image of `tiles` tiles
    in the prompt, every answer token supervised (PreferenceDataset's item)."""
    sample = worst_case_sample(model, length, tiles)
    start = 3 + tiles * model.model.tokens_per_tile
    answer = {'ids': sample['input_ids'][start:], 'labels': sample['labels'][start:]}
    return {'prompt_ids': sample['input_ids'][:start], 'chosen_ids': answer['ids'], 'chosen_labels': answer['labels'],
            'rejected_ids': answer['ids'], 'rejected_labels': answer['labels'],
            **{key: sample[key] for key in ('pixel_values', 'image_flags', 'pad_token_id')}}


def worst_case_batch(model: InternVL_V1_5, batch_size: int, max_length: int, tiles: int,
                     pack_tiles: Optional[int] = None, pack_pairs: Optional[bool] = None) -> Dict[str, Any]:
    """The collated batch of `batch_size` worst-case samples, or packs when `pack_tiles` (the tile budget) is set,
    or preference pairs when `pack_pairs` is set (True: each pair in one row, False: in two)."""
    if pack_pairs is not None:
        return preference_collate_fn([worst_case_pair(model, max_length, tiles)] * batch_size, pack_pairs=pack_pairs)
    if pack_tiles is None:
        instances: List[Dict[str, Any]] = [worst_case_sample(model, max_length, tiles)] * batch_size
    else:
        instances = [worst_case_pack(model, max_length, pack_tiles, tiles)] * batch_size
    return internvl_collate_fn(instances)


def build_fake_model(mode: FakeFloatMode, model_class: type = InternVL_V1_5, **model_kwargs: Any) -> InternVL_V1_5:
    """The config's model (InternVL_V1_5 or a subclass: InternVLPreference with its reference) from `model_path`'s
    config.json with fake CPU weights, nothing allocated.

    It is built on the meta device (`random_init`), its per-expert MoE layers stacked (moe_routing.stack_experts,
    built with one expert per group), then each parameter and buffer becomes a fake tensor of the same shape on the
    CPU: modules with fake parameters cannot be moved or cast (torch 2.15 refuses to swap them), which building the
    model needs, while fake inputs need fake weights on a real device."""
    with torch.device('meta'), representative_experts():
        model = model_class(random_init=True, **model_kwargs)
        stack_experts(model)
    converter, cpu, done = mode.fake.fake_tensor_converter, torch.device('cpu'), {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in done:
            done[id(tensor)] = converter.from_meta_and_device(mode.fake, tensor, cpu)
        return done[id(tensor)]

    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and not isinstance(param, FakeTensor):
                swapped = nn.Parameter(fake(param), requires_grad=param.requires_grad)
                swapped.__dict__.update(param.__dict__)
                module._parameters[name] = done[id(param)] = swapped
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = fake(buffer)
    return model


def _fused_dropout(module: nn.Dropout) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.native_dropout(x, module.p, True)[0] if module.training else x
    return forward


@contextmanager
def dropout_as_on_a_gpu(model: nn.Module) -> Iterator[None]:
    """Dropout layers run the kernel a GPU runs (`native_dropout`), on any device. It saves a one-byte mask for
    backward; the CPU's own dropout saves its noise in the input's dtype, four bytes an element for LoRA's fp32
    input, and takes four operations where the GPU's takes one."""
    replaced = [m for m in model.modules() if isinstance(m, nn.Dropout) and 0 < m.p < 1 and not m.inplace]
    for module in replaced:
        module.forward = _fused_dropout(module)
    try:
        yield
    finally:
        for module in replaced:
            del module.forward


def _largest_module_bytes(model: torch.nn.Module) -> int:
    """The bytes of the largest module's own parameters (a StackedExperts projection: of one expert's)."""
    return max(sum(p.untyped_storage().nbytes() for p in module.parameters(recurse=False)) //
               getattr(module, 'stacked', 1) for module in model.modules())


def measure_step(mode: Optional[FakeFloatMode], model: InternVL_V1_5, optim_wrapper: Any, batch: Dict[str, Any],
                 accumulative_counts: int, held: Sequence[torch.Tensor] = (),
                 on_start: Optional[Callable[[], None]] = None, optimizer_step: bool = True) -> StepMemory:
    """The peak of a step after the first (`optim_wrapper`: the config's, built for `model`; `mode` None: real
    tensors): the optimizer states exist, and with gradient accumulation the previous micro-batch's gradients too.
    They are made by one optimizer step on zero gradients, which allocates what a first training step leaves behind.
    Clipping and AdamW run their foreach (multi-tensor) versions, torch's default on a GPU. `held`: tensors the
    model keeps besides its parameters and buffers (bitsandbytes' quantisation statistics of a real 4-bit model);
    `on_start` is called where the measured step starts (to reset a device's own peak statistics). Dropout runs as
    on a GPU (dropout_as_on_a_gpu), whatever the device.
    `optimizer_step` False leaves out the optimizer's steps and clipping, where DeepSpeed's optimizer replaces the
    config's and its states are computed from the sizes (estimate.per_gpu_memory): their measurement would be read
    by nothing, and with thousands of LoRA tensors (the MoE configs) they took a fifth of the step's time."""
    started = time.perf_counter()
    tracker = StorageTracker(logits_width=model.model.language_model.get_output_embeddings().out_features)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer, clip = optim_wrapper.optimizer, getattr(optim_wrapper, 'clip_grad_kwargs', None) or None
    for group in optimizer.param_groups:
        if group.get('foreach') is None:
            group['foreach'] = True
    model.train()
    with dropout_as_on_a_gpu(model), tracker if mode is None else mode.reporting_to(tracker):
        for tensor in [*params, *model.buffers(), *held]:
            tracker.track(tensor, 'parameters')
        for tensor in batch['data'].values():   # on the GPU with the step
            tracker.track(tensor, 'activations')
        with tracker.counting_as('gradients'):
            for param in trainable:
                param.grad = torch.zeros_like(param)
        if optimizer_step:
            with tracker.counting_as('optimizer states'):
                optimizer.step()
        if accumulative_counts == 1:
            optimizer.zero_grad(set_to_none=True)
        hooks = tracker.track_gradients(trainable)
        tracker.reset_peaks()
        if on_start is not None:
            on_start()
        data = model.data_preprocessor(batch, True)
        loss = model(**data, mode='loss')['loss']
        loss.backward()
        del loss, data
        if optimizer_step:
            with tracker.counting_as('optimizer states'):
                if clip:
                    torch.nn.utils.clip_grad_norm_(trainable, **{'foreach': True, **clip})
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for hook in hooks:
            hook.remove()
    return StepMemory(
        peak=tracker.peak, transient_peak=tracker.transient_peak,
        parameter_bytes=sum(p.untyped_storage().nbytes() for p in params),
        trainable_parameters=sum(p.numel() for p in trainable),
        trainable_bytes=sum(p.untyped_storage().nbytes() for p in trainable),
        largest_module_bytes=_largest_module_bytes(model), seconds=time.perf_counter() - started)
