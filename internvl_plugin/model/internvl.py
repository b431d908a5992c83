"""InternVL_V1_5: the MMEngine model that configs build (a drop-in for XTuner's class of the same name)."""
from collections import OrderedDict
from typing import Any, Dict, Optional, Union

import torch
from mmengine.model import BaseModel
from peft import LoraConfig, get_peft_model

from ..checkpoint_layout import OFFICIAL, checkpoint_layout
from ..files import load_tokenizer, resolve_model_path
from .checkpoint.load import build_network, img_context_token_id, load_checkpoint_weights, read_internvl_config
from .checkpoint.parts import assemble_config_and_weights
from .checkpoint.trained import apply_trained_state, load_trained_state
from .lora import LLM_LORA_TARGETS, VISION_LORA_TARGETS, build_lora_config, expert_parameters, lora_language_model
from .modeling.internvl_chat import InternVLChatModel
from .modeling.llm import llm_family
from .modeling.segments import LOSS_REDUCTIONS
from .optim import mark_parts
from .quantization import bnb_4bit_config, keep_training_layout, quantize_linears_4bit

LoraSpec = Optional[Union[LoraConfig, Dict[str, Any]]]
_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': torch.float32}


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"torch_dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _freeze(module: torch.nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


class InternVL_V1_5(BaseModel):
    """InternVL 1.5 / 2 / 2.5 / 3 / 3.5 for training with MMEngine / XTuner.

    Loads an official checkpoint folder or hub id (`model_path`), or assembles a new model from a vision
    checkpoint and an LLM checkpoint (`vision_model_path` + `llm_path`, with a fresh `mlp1`), as the
    InternVL-Chat-V1-2 recipe does. `state_dict()` holds only what trains, so LoRA checkpoints stay small.
    `loss_reduction` weighs each supervised token 1 ('token'), 1/n ('sample') or 1/sqrt(n) ('square') for a sample
    of n supervised tokens, as InternVL 2.5's packed training does. `random_init` builds the network from
    `model_path`'s config.json with random weights (a folder without weights: real-size benchmarks). An MoE LLM
    (Qwen3-MoE, GPT-OSS) adds its router's load-balancing loss x `router_aux_loss_coef` (None: its config's; 0: off).
    `expert_linears` holds a Qwen3-MoE's experts as nn.Linear layers on transformers 5 too (None: when quantising,
    which needs them; otherwise transformers 5's 3-D experts run its faster grouped kernels).
    """

    def __init__(self, model_path: Optional[str] = None, freeze_llm: bool = False,
                 freeze_visual_encoder: bool = False, freeze_mlp: bool = False, llm_lora: LoraSpec = None,
                 visual_encoder_lora: LoraSpec = None, quantization_llm: bool = False, quantization_vit: bool = False,
                 pretrained_pth: Optional[str] = None, use_activation_checkpointing: bool = True,
                 torch_dtype: Union[str, torch.dtype] = 'bfloat16', attn_implementation: str = 'sdpa',
                 drop_path_rate: Optional[float] = None, vision_model_path: Optional[str] = None,
                 llm_path: Optional[str] = None, template: Optional[str] = None, ps_version: str = 'v2',
                 downsample_ratio: float = 0.5, select_layer: int = -1, loss_reduction: str = 'token',
                 random_init: bool = False, trust_remote_code: bool = False,
                 router_aux_loss_coef: Optional[float] = None, expert_linears: Optional[bool] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction '{loss_reduction}' is not one of {LOSS_REDUCTIONS}")
        self.loss_reduction = loss_reduction
        self.dtype = parse_dtype(torch_dtype)
        if model_path is not None:
            if vision_model_path or llm_path:
                raise ValueError('give either model_path or vision_model_path + llm_path, not both')
            self.model_path = resolve_model_path(model_path)
            self.config = read_internvl_config(self.model_path)
            self.layout = checkpoint_layout(self.model_path)
            self.tokenizer = load_tokenizer(self.model_path, trust_remote_code=trust_remote_code)
            weights = None if random_init else load_checkpoint_weights(self.model_path, self.config, self.layout)
            source = self.model_path
        elif random_init:
            raise ValueError('random_init builds the network from model_path\'s config.json; give model_path')
        elif vision_model_path and llm_path:
            self.model_path = None
            self.layout = OFFICIAL
            self.config, weights, self.tokenizer = assemble_config_and_weights(
                resolve_model_path(vision_model_path), resolve_model_path(llm_path), template=template,
                ps_version=ps_version, downsample_ratio=downsample_ratio, select_layer=select_layer,
                trust_remote_code=trust_remote_code)
            source = f'{vision_model_path} + {llm_path}'
        else:
            raise ValueError('InternVL_V1_5 needs model_path (an InternVL checkpoint) or both vision_model_path '
                             'and llm_path')
        self.family = llm_family(self.config['llm_config'])
        self.model: InternVLChatModel = build_network(
            self.config, weights, img_context_token_id(self.tokenizer, source), source, dtype=self.dtype,
            attn_implementation=attn_implementation,
            quantization_config=bnb_4bit_config() if quantization_llm else None, drop_path_rate=drop_path_rate,
            router_aux_loss_coef=router_aux_loss_coef,
            expert_linears=quantization_llm if expert_linears is None else expert_linears)
        del weights
        self._grow_vocabulary()
        if quantization_vit:
            quantize_linears_4bit(self.model.vision_model)
        keep_training_layout(self.model)

        if freeze_llm or quantization_llm or llm_lora:
            _freeze(self.model.language_model)
        if freeze_visual_encoder or quantization_vit or visual_encoder_lora:
            _freeze(self.model.vision_model)
        if freeze_mlp:
            _freeze(self.model.mlp1)
        if use_activation_checkpointing:
            self.model.language_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={'use_reentrant': False})
            self.model.vision_model.encoder.gradient_checkpointing = True
        if llm_lora:
            lora = build_lora_config(llm_lora, LLM_LORA_TARGETS[self.family], self.family,
                                     expert_parameters(self.model.language_model))
            self.model.language_model = lora_language_model(self.model.language_model, lora)
        if visual_encoder_lora:
            lora = build_lora_config(visual_encoder_lora, VISION_LORA_TARGETS)
            self.model.vision_model = get_peft_model(self.model.vision_model, lora)
        if pretrained_pth:
            apply_trained_state(self, load_trained_state(pretrained_pth), pretrained_pth)
        mark_parts(self.model)

    def _grow_vocabulary(self) -> None:
        """Embeddings get rows for tokens the tokenizer has beyond the LLM's vocabulary (added InternVL tokens)."""
        rows = self.model.language_model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows:
            self.model.language_model.resize_token_embeddings(len(self.tokenizer))

    def init_weights(self) -> None:
        """The weights come from checkpoints; MMEngine's default initialisation would overwrite them."""

    def state_dict(self, *args, **kwargs) -> 'OrderedDict[str, torch.Tensor]':
        """Only the parameters that train (LoRA adapters, unfrozen modules)."""
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        trainable = {prefix + name for name, param in self.named_parameters() if param.requires_grad}
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((k, v) for k, v in full.items() if k in trainable)

    def forward(self, data: Dict[str, Any], data_samples: Any = None, mode: str = 'loss'):
        """'loss': {'loss': cross-entropy weighed per `loss_reduction`}; 'predict' / 'tensor': the logits."""
        logits, loss = self.model(
            input_ids=data['input_ids'], pixel_values=data.get('pixel_values'),
            image_flags=data.get('image_flags'), attention_mask=data.get('attention_mask'),
            position_ids=data.get('position_ids'), labels=data.get('labels') if mode == 'loss' else None,
            segment_ids=data.get('segment_ids'), loss_reduction=self.loss_reduction)
        if mode == 'loss':
            return {'loss': loss}
        if mode in ('predict', 'tensor'):
            return logits
        raise ValueError(f"mode '{mode}' is not one of 'loss', 'predict', 'tensor'")

    def merged_network(self) -> InternVLChatModel:
        """The network with LoRA adapters merged into the base weights (for export)."""
        for name in ('language_model', 'vision_model'):
            module = getattr(self.model, name)
            if hasattr(module, 'merge_and_unload'):
                setattr(self.model, name, module.merge_and_unload())
        return self.model
