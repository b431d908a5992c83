"""Will a config fit? Its model at the real size and its worst-case batch, stepped under fake tensors.

The network comes from the real config.json shapes: a local `model_path` folder's, a `--model-config` file's, or
the released checkpoint's (internvl_plugin/released.py; the hub is never asked). The peak of the step is measured
(step.py); a preference config's step is InternVLPreference's, its reference pass and frozen copy included.
DeepSpeed's share is computed from the measured sizes: ZeRO-1 partitions the fp32 master weights and Adam moments
(12 bytes per trainable parameter) over the GPUs, ZeRO-2 the gradients too, ZeRO-3 the parameters as well, plus
the largest module, which is gathered whole while it runs; the activations and logits at their measured peak are
added. Without DeepSpeed the step's own peak is the answer (AdamW states in the parameters'
dtype, no master weights), plus DDP's gradient buckets (one more copy of the gradients) on several GPUs.
"""
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from ..files import read_json
from ..model.internvl import InternVL_V1_5
from ..model.preference_model import InternVLPreference
from ..model.modeling.llm import llm_family
from ..released import RELEASED, RELEASED_PARTS
from ..tiny import shape_config, write_config_checkpoint
from .moe_routing import estimated_routing
from .step import StepMemory, build_fake_model, measure_step, worst_case_batch
from .tracking import CATEGORIES, FakeFloatMode

GIB = 2 ** 30
ADAM_FP32_BYTES = 12          # DeepSpeed: fp32 master weight + two fp32 Adam moments per trainable parameter
_PART_ARGUMENTS = ('vision_model_path', 'llm_path', 'template', 'ps_version', 'downsample_ratio', 'select_layer')
_MAX_SEARCHED_BATCH = 512
_MODEL_CLASSES = {'InternVL_V1_5': InternVL_V1_5, 'InternVLPreference': InternVLPreference}


@dataclass
class ZeroSettings:
    """What a DeepSpeed json says about memory: the ZeRO stage and what it offloads to the CPU."""
    name: str
    stage: int
    offload_optimizer: bool = False
    offload_parameters: bool = False


@dataclass
class Workload:
    """The worst-case batch of a config: `batch_size` rows of `max_length` tokens (packs when `pack_tiles`)."""
    batch_size: int
    max_length: int
    tiles: int
    pack_tiles: Optional[int]
    accumulative_counts: int
    data_samples: int = 0   # > 0: rows and tiles from the config's own data (data_workload), of that many samples
    pack_pairs: Optional[bool] = None   # preference pairs (chosen and rejected of max_length each): in one row or two

    def batch(self, model: InternVL_V1_5) -> Dict[str, Any]:
        """This workload's worst-case batch for `model`."""
        return worst_case_batch(model, self.batch_size, self.max_length, self.tiles, self.pack_tiles, self.pack_pairs)

    def describe(self) -> str:
        if self.pack_pairs is not None:
            rows = 'one row' if self.pack_pairs else 'two rows'
            return (f'{self.batch_size} pair(s) of 2 x {self.max_length} tokens ({rows} each), '
                    f'{self.tiles} tiles each')
        if self.pack_tiles is not None:
            return (f'{self.batch_size} pack(s) of {self.max_length} tokens and {self.pack_tiles} tiles '
                    f'(samples of {self.tiles} tiles)')
        return f'{self.batch_size} x {self.max_length} tokens, {self.tiles} tiles each'


@dataclass
class Estimate:
    """The peak per GPU by category, for `gpus` GPUs and DeepSpeed `zero` (None: no DeepSpeed)."""
    config: str
    model: str
    workload: Workload
    gpus: int
    zero: Optional[ZeroSettings]
    per_gpu: Dict[str, int]
    step: StepMemory
    quantized: bool

    @property
    def total(self) -> int:
        return sum(self.per_gpu.values())


def read_zero_settings(name: str) -> ZeroSettings:
    """xtuner's bundled `deepspeed_zeroK[_offload]` or a DeepSpeed json path."""
    path = name
    if not os.path.isfile(path):
        import xtuner
        path = os.path.join(os.path.dirname(xtuner.__file__), 'configs', 'deepspeed', f'{name}.json')
        if not os.path.isfile(path):
            raise ValueError(f"--deepspeed '{name}' is neither a json file nor one of xtuner's deepspeed_zero1, "
                             'deepspeed_zero2, deepspeed_zero2_offload, deepspeed_zero3, deepspeed_zero3_offload')
    zero = read_json(path).get('zero_optimization', {})
    stage = zero.get('stage', 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f'{path}: zero_optimization.stage is {stage!r}, expected 0, 1, 2 or 3')
    offloaded = [(zero.get(key) or {}).get('device', 'none') in ('cpu', 'nvme')
                 for key in ('offload_optimizer', 'offload_param')]
    return ZeroSettings(name, stage, *offloaded)


def recipe_defaults(config_path: str) -> Tuple[int, Optional[str]]:
    """(GPUs, DeepSpeed json name) of the config's own recipe comments: its accumulative_counts line's
    ('# 8 GPUs x 4 x 4 = 128'; else the first 'N GPUs x', which may be an official run's) and '--deepspeed ...'."""
    text = open(config_path, encoding='utf-8').read()
    gpus = re.search(r'^accumulative_counts = \d+ +# (\d+) GPUs? x', text, re.M) or re.search(r'(\d+) GPUs? x', text)
    deepspeed = re.search(r'--deepspeed (deepspeed_zero\w+)', text)
    return int(gpus.group(1)) if gpus else 1, deepspeed.group(1) if deepspeed else None


def read_workload(cfg: Any, config_path: str, checkpoint_config: Dict[str, Any]) -> Workload:
    """The config's batch size, max_length, tiles per image (max_dynamic_patch + the thumbnail) or packing budgets."""
    loader = cfg.get('train_dataloader')
    if not loader or 'dataset' not in loader:
        raise ValueError(f'{config_path}: train_dataloader.dataset is missing; expected an InternVL training config')
    dataset = loader['dataset']
    packed = 'max_packed_tokens' in dataset
    samples = dataset['dataset'] if packed else dataset
    tile_limit = samples.get('max_dynamic_patch') or checkpoint_config.get('max_dynamic_patch', 12)
    thumbnail = samples.get('use_thumbnail')
    thumbnail = checkpoint_config.get('use_thumbnail', True) if thumbnail is None else thumbnail
    tiles = tile_limit + (1 if thumbnail and tile_limit > 1 else 0)
    accumulate = cfg.get('optim_wrapper', {}).get('accumulative_counts', 1)
    if is_preference(cfg.model):
        pack_pairs = (loader.get('collate_fn') or {}).get('pack_pairs', True)
        return Workload(loader['batch_size'], samples['max_length'], tiles, None, accumulate, pack_pairs=pack_pairs)
    if packed:
        return Workload(loader['batch_size'], dataset['max_packed_tokens'], tiles, dataset['max_packed_tiles'],
                        accumulate)
    return Workload(loader['batch_size'], samples['max_length'], tiles, None, accumulate)


def data_workload(cfg: Any, workload: Workload) -> Optional[Workload]:
    """The worst batch of the config's own data, where it is there (the dataset's meta file, and a local model
    folder for its tokenizer): rows as long as the longest sample (at most max_length; packs keep their budgets)
    with as many tiles as the sample with the most (multi-image and video samples may hold more than
    max_dynamic_patch + 1). The dataset's own estimates (no image is opened); None where the data is not there."""
    from mmengine.registry import DATASETS
    dataset = cfg['train_dataloader']['dataset']
    samples = dataset['dataset'] if 'max_packed_tokens' in dataset else dataset
    meta, model_path = samples.get('meta_path'), samples.get('model_path')
    if not (meta and os.path.isfile(meta) and model_path and os.path.isdir(model_path)):
        return None
    built = DATASETS.build(samples)
    lengths, tiles = built.length, built.tile_counts
    longest = workload.max_length if workload.pack_tiles is not None else min(max(lengths), workload.max_length)
    return replace(workload, max_length=longest, tiles=max(tiles), data_samples=len(lengths))


def _write_checkpoint(folder: str, config: Dict[str, Any]) -> str:
    write_config_checkpoint(folder, config, llm_family(config['llm_config']))
    return folder


def _type_name(model_cfg: Dict[str, Any]) -> str:
    return getattr(model_cfg.get('type'), '__name__', model_cfg.get('type'))


def is_preference(model_cfg: Dict[str, Any]) -> bool:
    return _type_name(model_cfg) == 'InternVLPreference'


def model_arguments(model_cfg: Dict[str, Any], config_path: str, folder: str,
                    model_config: Optional[str] = None) -> Tuple[type, Dict[str, Any], str]:
    """The model dict's class, its arguments with `model_path` pointing at real shapes, and the name of those
    shapes."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ('type', 'pretrained_pth')}
    model_class = _MODEL_CLASSES.get(_type_name(model_cfg))
    if model_class is None:
        raise ValueError(f'{config_path}: model.type is {_type_name(model_cfg)!r}; expected '
                         f"{' or '.join(_MODEL_CLASSES)}")
    source = kwargs.get('model_path') or f"{kwargs.get('vision_model_path')} + {kwargs.get('llm_path')}"
    parts = {k: kwargs.pop(k) for k in _PART_ARGUMENTS if k in kwargs}
    if model_config is not None:
        path = os.path.join(model_config, 'config.json') if os.path.isdir(model_config) else model_config
        try:
            config = read_json(path)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f'--model-config {model_config}: {error}') from error
        if not isinstance(config.get('llm_config'), dict) or not isinstance(config.get('vision_config'), dict):
            raise ValueError(f'--model-config {path}: expected an InternVL config.json with vision_config and '
                             'llm_config')
        kwargs['model_path'], name = _write_checkpoint(folder, config), path
    elif kwargs.get('model_path') and os.path.isfile(os.path.join(str(kwargs['model_path']), 'config.json')):
        name = kwargs['model_path']
    elif source in RELEASED or source in RELEASED_PARTS:
        config = shape_config(RELEASED.get(source) or RELEASED_PARTS[source])
        config.update({k: v for k, v in parts.items() if k in ('ps_version', 'downsample_ratio', 'select_layer')})
        kwargs['model_path'], name = _write_checkpoint(folder, config), f'{source} (released config.json shapes)'
    else:
        raise ValueError(f"{config_path}: model '{source}' is not a local folder with a config.json nor a released "
                         'checkpoint this tool knows; give --model-config PATH (its config.json)')
    return model_class, kwargs, name


class ConfigModel:
    """A config's model with fake weights and its optimizer, ready to be stepped on batches of any size."""

    def __init__(self, config_path: str, model_config: Optional[str] = None, use_data: bool = True):
        from mmengine.config import Config
        from mmengine.optim import build_optim_wrapper
        self.config_path = config_path
        cfg = Config.fromfile(config_path)
        self._folder = tempfile.TemporaryDirectory(prefix='estimate-memory-')
        model_class, kwargs, self.name = model_arguments(cfg.model, config_path, self._folder.name, model_config)
        self.mode = FakeFloatMode()
        self.model = build_fake_model(self.mode, model_class, **kwargs)
        self.quantized = bool(kwargs.get('quantization_llm') or kwargs.get('quantization_vit'))
        workload = read_workload(cfg, config_path, read_json(os.path.join(kwargs['model_path'], 'config.json')))
        workload = (data_workload(cfg, workload) if use_data else None) or workload
        # A sample holds at most the tiles whose tokens fit max_length (the dataset refuses longer ones).
        fitting = (workload.max_length - 4) // self.model.model.tokens_per_tile
        self.workload = replace(workload, tiles=min(workload.tiles, fitting)) if workload.pack_tiles is None \
            else workload
        self.optim_wrapper = build_optim_wrapper(self.model, cfg.optim_wrapper)

    def measure(self, workload: Workload, zero: Optional[ZeroSettings] = None) -> StepMemory:
        """The step's memory; under ZeRO (stage 1 and up) without the config's optimizer step, which DeepSpeed's
        replaces (per_gpu_memory computes its states)."""
        with estimated_routing(self.model):
            return measure_step(self.mode, self.model, self.optim_wrapper, workload.batch(self.model),
                                workload.accumulative_counts, optimizer_step=zero is None or zero.stage == 0)

    def close(self) -> None:
        self._folder.cleanup()


def per_gpu_memory(step: StepMemory, gpus: int, zero: Optional[ZeroSettings]) -> Dict[str, int]:
    """The peak per GPU by category (see the module docstring for what is measured and what is computed)."""
    if zero is None or zero.stage == 0:
        memory = dict(step.peak)
        if gpus > 1:
            memory['gradients'] += step.trainable_bytes
        return memory
    if zero.offload_parameters:
        params = step.largest_module_bytes
    elif zero.stage == 3:
        params = step.parameter_bytes // gpus + step.largest_module_bytes
    else:
        params = step.parameter_bytes
    grads = step.trainable_bytes if zero.stage == 1 else step.trainable_bytes // gpus
    optimizer = 0 if zero.offload_optimizer else ADAM_FP32_BYTES * step.trainable_parameters // gpus
    transient = step.transient_peak
    return {'parameters': params, 'gradients': grads, 'optimizer states': optimizer,
            'activations': transient['activations'], 'logits / loss': transient['logits / loss']}


def largest_fitting(model: ConfigModel, first: Estimate, budget: int, tries: int = 3) -> Optional[Workload]:
    """The largest batch (or, when one row does not fit, the longest max_length) that fits `budget`, found by
    measuring: the growth per row (per token) of the nearest measurement predicts a candidate, which is measured,
    at most `tries` times for batches and twice as often for lengths. A predicted length outside the lengths
    already ruled out (too long to fit, too short for the tiles: eager attention grows faster than the tokens) is
    halved between them instead. None when no measured candidate fits."""
    def measure(workload: Workload) -> int:
        return sum(per_gpu_memory(model.measure(workload, first.zero), first.gpus, first.zero).values())

    base = first.workload
    fixed = first.total - first.per_gpu['activations'] - first.per_gpu['logits / loss']
    if fixed >= budget:
        return None
    measured = {base.batch_size: first.total}
    best = base.batch_size if first.total <= budget else 0
    for _ in range(tries):
        nearest = max(measured) if best else min(measured)
        rows = min(_MAX_SEARCHED_BATCH, int((budget - fixed) / max(1.0, (measured[nearest] - fixed) / nearest)))
        if rows < 1 or rows in measured:
            break
        measured[rows] = measure(replace(base, batch_size=rows))
        if measured[rows] <= budget:
            best = max(best, rows)
    if best:
        return replace(base, batch_size=best)
    nearest = min(measured)
    per_token = (measured[nearest] - fixed) / nearest / base.max_length
    too_short, too_long = 0, base.max_length
    length = int((budget - fixed) / per_token)
    for _ in range(2 * tries):
        length = length // 1024 * 1024
        if not too_short < length < too_long:
            length = (too_short + too_long) // 2 // 1024 * 1024
        if length < 1024 or length in (too_short, too_long):
            return None
        tiles = None if base.pack_tiles is None else max(1, base.pack_tiles * length // base.max_length)
        candidate = replace(base, batch_size=1, max_length=length, pack_tiles=tiles)
        try:
            total = measure(candidate)
        except ValueError:   # its tiles no longer fit the row: only longer rows hold them
            too_short = length
            continue
        if total <= budget:
            return candidate
        too_long, per_token = length, (total - fixed) / length
        length = int((budget - fixed) / per_token)
    return None


def estimate_config(config_path: str, gpus: Optional[int] = None, deepspeed: Optional[str] = None,
                    model_config: Optional[str] = None, workload: Optional[Workload] = None,
                    model: Optional[ConfigModel] = None) -> Estimate:
    """The estimate of a config's worst-case batch; GPUs and DeepSpeed default to the config's own recipe."""
    recipe_gpus, recipe_deepspeed = recipe_defaults(config_path)
    zero_name = recipe_deepspeed if deepspeed is None else deepspeed
    zero = None if zero_name in (None, 'none') else read_zero_settings(zero_name)
    gpus = recipe_gpus if gpus is None else gpus
    if gpus < 1:
        raise ValueError(f'--gpus {gpus}: expected at least 1')
    model = model or ConfigModel(config_path, model_config)
    workload = workload or model.workload
    step = model.measure(workload, zero)
    return Estimate(config_path, model.name, workload, gpus, zero, per_gpu_memory(step, gpus, zero), step,
                    model.quantized)


def report(estimate: Estimate, gpu_memory_gib: float, largest: Optional[Workload], searched: bool) -> List[str]:
    """The printed answer: the peak per GPU by category, fits / does not fit, and the largest batch that fits."""
    budget = gpu_memory_gib * GIB
    zero = estimate.zero
    sharing = (f'DeepSpeed {zero.name} (ZeRO-{zero.stage}) over {estimate.gpus} GPU(s): optimizer states, '
               'gradients and parameters partitioned as that stage does, computed from the measured sizes'
               if zero else f'no DeepSpeed, {estimate.gpus} GPU(s): the measured step as it is')
    lines = [f'{estimate.config}', f'  model: {estimate.model}',
             f'  worst-case batch: {estimate.workload.describe()}' + (
                 f' (the longest and the most tiled of the data\'s {estimate.workload.data_samples} samples)'
                 if estimate.workload.data_samples else ''), f'  {sharing}']
    if estimate.quantized:
        lines.append('  4-bit layers counted at bitsandbytes\' nf4 storage (0.5 byte a weight + double-quantised '
                     'statistics); everything else measured under fake tensors')
    lines.append(f'peak per GPU: {estimate.total / GIB:.2f} GiB')
    lines += [f'  {category:<17}{estimate.per_gpu[category] / GIB:8.2f} GiB' for category in CATEGORIES]
    verdict = 'fits' if estimate.total <= budget else 'does not fit'
    lines.append(f'{verdict} in {gpu_memory_gib:g} GiB ({estimate.total / budget:.0%})')
    if searched:
        if largest is None:
            lines.append('no batch fits: not even one row of 1024 tokens')
        else:
            lines.append(f'largest that fits: {largest.describe()}')
    lines.append(f'measured in {estimate.step.seconds:.1f} s (the step under fake tensors)')
    return lines


TABLE_HEADER = ('| config | worst-case batch | GPUs, DeepSpeed | parameters | gradients | optimizer | activations | '
                'logits / loss | peak per GPU | on {gib:g} GiB |\n|---|---|---|---|---|---|---|---|---|---|')


def table_row(estimate: Estimate, gpu_memory_gib: float, largest: Optional[Workload], searched: bool = True) -> str:
    """One markdown row of the README's "Will it fit?" table (GiB per GPU)."""
    gib = [f'{estimate.per_gpu[c] / GIB:.1f}' for c in CATEGORIES]
    zero = f'ZeRO-{estimate.zero.stage}' if estimate.zero else 'no DeepSpeed'
    if estimate.total <= gpu_memory_gib * GIB:
        verdict = 'fits'
    elif not searched:
        verdict = '**does not fit** (smaller batches not tried)'
    else:
        verdict = '**does not fit**' + (f': {largest.describe()} does' if largest else ': nothing does')
    name = os.path.relpath(estimate.config)
    return (f'| {name} | {estimate.workload.describe()} | {estimate.gpus}, {zero} | ' + ' | '.join(gib) +
            f' | {estimate.total / GIB:.1f} | {verdict} |')
