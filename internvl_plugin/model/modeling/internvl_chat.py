"""Vision encoder + pixel shuffle + `mlp1` + language model: the InternVL network.

Attribute names (`vision_model`, `mlp1`, `language_model`) are the official ones, so for Qwen2, Llama and
Phi3 the official state-dict keys are this module's keys; InternLM2 goes through the key map.
"""
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .intern_vit import InternVisionModel
from .moe import RouterAuxLoss
from .segments import block_causal_masks, causal_lm_loss, install_segment_sdpa, is_packed, per_sample_mask_marker

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_shuffle(x: torch.Tensor, ratio: float, ps_version: str = 'v2') -> torch.Tensor:
    """Space-to-depth on a (N, W, H, C) grid: (N, W*r, H*r, C/r^2) for r = `ratio` (0.5 -> 4x channels).

    'v2' (InternVL2 onwards) transposes the grid back afterwards; 'v1' (InternVL-Chat-V1-2) leaves it transposed.
    """
    n, w, h, c = x.shape
    scale = int(round(1 / ratio))
    if w % scale or h % scale:
        raise ValueError(f'a {w}x{h} patch grid cannot be pixel-shuffled with downsample_ratio {ratio}')
    x = x.reshape(n, w, h // scale, c * scale).transpose(1, 2)
    x = x.reshape(n, h // scale, w // scale, c * scale * scale)
    if ps_version == 'v1':
        return x
    if ps_version != 'v2':
        raise ValueError(f"ps_version is '{ps_version}', expected 'v1' or 'v2'")
    return x.transpose(1, 2)


def build_mlp1(vit_hidden: int, llm_hidden: int, downsample_ratio: float) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear; state-dict keys mlp1.0, mlp1.1, mlp1.3 as in official checkpoints."""
    width = vit_hidden * int(round(1 / downsample_ratio)) ** 2
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


class InternVLChatModel(nn.Module):

    def __init__(self, vision_model: InternVisionModel, mlp1: nn.Sequential, language_model: nn.Module,
                 img_context_token_id: int, select_layer: int = -1, downsample_ratio: float = 0.5,
                 ps_version: str = 'v2', router_aux_loss: Optional[RouterAuxLoss] = None):
        super().__init__()
        self.vision_model = vision_model
        self.mlp1 = mlp1
        self.language_model = language_model
        self.img_context_token_id = img_context_token_id
        self.select_layer = select_layer
        self.downsample_ratio = downsample_ratio
        self.ps_version = ps_version
        self.router_aux_loss = router_aux_loss
        self.register_buffer('pixel_mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('pixel_std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        install_segment_sdpa()

    @property
    def tokens_per_tile(self) -> int:
        grid = self.vision_model.config.image_size // self.vision_model.config.patch_size
        return int(grid * grid * self.downsample_ratio ** 2)

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 tiles (0..255) are normalised here, on the model's device; float tiles arrive normalised."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        return (pixel_values.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, S, S) -> (tiles, tokens_per_tile, llm_hidden)."""
        hidden = self.vision_model(self.normalize(pixel_values), select_layer=self.select_layer)[:, 1:, :]
        side = int(hidden.shape[1] ** 0.5)
        hidden = hidden.reshape(hidden.shape[0], side, side, -1)
        hidden = pixel_shuffle(hidden, self.downsample_ratio, self.ps_version)
        hidden = hidden.reshape(hidden.shape[0], -1, hidden.shape[-1])
        return self.mlp1(hidden)

    def embed(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
              image_flags: Optional[torch.Tensor] = None, tile_order: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with each real tile's visual tokens written into the <IMG_CONTEXT> positions, the real
        tiles taken in order, or in `tile_order` (indices into them: a tile encoded once can fill several spans, as
        a preference pair's two answers share their prompt's images)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        context = input_ids == self.img_context_token_id
        n_context = int(context.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_context:
                raise ValueError(f'the batch has {n_context} <IMG_CONTEXT> tokens but no pixel_values')
            return embeds
        features = self.extract_feature(pixel_values)
        anchor = 0.0
        if image_flags is not None:
            real = image_flags.reshape(-1).bool()
            # Dummy tiles (flag 0, text-only samples) still touch the graph so every rank has gradients for mlp1.
            anchor = features[~real].sum() * 0.0
            features = features[real]
        if tile_order is not None:
            features = features[tile_order.to(features.device)]
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != n_context:
            raise ValueError(
                f'the batch has {n_context} <IMG_CONTEXT> tokens but its {features.shape[0] // self.tokens_per_tile} '
                f'real tiles give {features.shape[0]} visual tokens ({self.tokens_per_tile} per tile)')
        embeds = embeds.masked_scatter(context.unsqueeze(-1), features.to(embeds.dtype))
        return embeds + anchor

    def _llm_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor],
                    image_flags: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
                    position_ids: Optional[torch.Tensor], segment_ids: Optional[torch.Tensor],
                    tile_order: Optional[torch.Tensor]) -> Dict[str, Any]:
        embeds = self.embed(input_ids, pixel_values, image_flags, tile_order)
        if is_packed(segment_ids):
            attn = self.language_model.config._attn_implementation
            if attn == 'eager':
                attention_mask = block_causal_masks(segment_ids.to(embeds.device), embeds.dtype,
                                                    self.language_model.config)
            else:
                if position_ids is None:
                    raise ValueError('packed rows need position_ids that restart at each sample')
                embeds = embeds.reshape(1, -1, embeds.shape[-1])
                position_ids = position_ids.reshape(1, -1)
                attention_mask = per_sample_mask_marker(embeds.device, embeds.dtype) if attn == 'sdpa' else None
        return dict(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)

    def hidden_states(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                      image_flags: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                      position_ids: Optional[torch.Tensor] = None, segment_ids: Optional[torch.Tensor] = None,
                      tile_order: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The LLM's last hidden states (B, L, H), and an MoE LLM's router load-balancing loss over the real tokens
        (None without a router). Packed rows as in `forward`."""
        inputs = self._llm_inputs(input_ids, pixel_values, image_flags, attention_mask, position_ids, segment_ids,
                                  tile_order)
        if self.router_aux_loss is not None:
            inputs['output_router_logits'] = True
        outputs = self.language_model.get_decoder()(**inputs)
        hidden = outputs.last_hidden_state.reshape(*input_ids.shape, -1)
        if self.router_aux_loss is None:
            return hidden, None
        real_tokens = segment_ids > 0 if segment_ids is not None else attention_mask
        return hidden, self.router_aux_loss(outputs.router_logits, real_tokens)

    def forward(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                image_flags: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                segment_ids: Optional[torch.Tensor] = None, loss_reduction: str = 'token'):
        """(logits, None) without labels; (None, loss) with them, the loss weighing labels != -100 per
        `loss_reduction` (logits then exist only where a label is supervised, see causal_lm_loss), plus the router's
        load-balancing loss of an MoE LLM (`router_aux_loss`) over the real tokens.

        Packed rows (several samples, `segment_ids` > 1) attend within each sample. For flash attention 2 and
        SDPA the rows go in as one row with restarting `position_ids` (variable-length flash attention, or one
        SDPA per sample, see segments.py); eager attention gets a block-diagonal causal mask."""
        if labels is None:
            inputs = self._llm_inputs(input_ids, pixel_values, image_flags, attention_mask, position_ids,
                                      segment_ids, None)
            return self.language_model(**inputs).logits.reshape(*input_ids.shape, -1), None
        hidden, router_loss = self.hidden_states(input_ids, pixel_values, image_flags, attention_mask, position_ids,
                                                 segment_ids)
        loss = causal_lm_loss(hidden, self.language_model.get_output_embeddings(), labels, segment_ids, loss_reduction)
        if router_loss is not None:
            loss = loss + router_loss
        return None, loss

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, **generate_kwargs) -> torch.Tensor:
        """New token ids only (the prompt is not repeated)."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
