"""InternViT with the official parameter names, so official weights load by name.

One module serves both published styles: the 300M style (LayerNorm, qkv bias) and the 6B style
(RMSNorm, query/key normalisation, no qkv bias). Attention runs through PyTorch's SDPA.
"""
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class InternVisionConfig:
    """The fields of the official `vision_config` that change the network."""
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = 'layer_norm'
    layer_norm_eps: float = 1e-6
    initializer_factor: float = 1.0
    initializer_range: float = 0.02
    drop_path_rate: float = 0.0
    attention_dropout: float = 0.0
    dropout: float = 0.0
    hidden_act: str = 'gelu'

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> 'InternVisionConfig':
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


class InternRMSNorm(nn.Module):
    """RMSNorm computed in fp32, as the 6B checkpoints were trained with."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def build_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    if norm_type == 'rms_norm':
        return InternRMSNorm(dim, eps)
    if norm_type == 'layer_norm':
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"vision_config.norm_type is '{norm_type}', expected 'rms_norm' or 'layer_norm'")


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class InternVisionEmbeddings(nn.Module):

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        dim = config.hidden_size
        self.grid = config.image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embedding = nn.Conv2d(config.num_channels, dim, config.patch_size, config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))

    def _patch_positions(self, height: int, width: int) -> torch.Tensor:
        pos = self.position_embedding[:, 1:, :]
        if (height, width) == (self.grid, self.grid):
            return pos
        # Other input sizes: bicubic resampling of the position grid, as the official encoder does.
        grid = pos.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode='bicubic', align_corners=False)
        return grid.flatten(2).transpose(1, 2).to(pos.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))
        batch, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).expand(batch, 1, -1)
        positions = torch.cat([self.position_embedding[:, :1, :], self._patch_positions(height, width)], dim=1)
        return torch.cat([cls, patches], dim=1) + positions.to(dtype)


class InternAttention(nn.Module):

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        if self.head_dim * self.num_heads != dim:
            raise ValueError(f'vision_config.hidden_size {dim} is not divisible by num_attention_heads {self.num_heads}')
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            # Normalises over all heads at once (the full width), not per head.
            self.q_norm = InternRMSNorm(dim, config.layer_norm_eps)
            self.k_norm = InternRMSNorm(dim, config.layer_norm_eps)
        self.attention_dropout = config.attention_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class InternMLP(nn.Module):

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        if config.hidden_act != 'gelu':
            raise ValueError(f"vision_config.hidden_act is '{config.hidden_act}', expected 'gelu'")
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):

    def __init__(self, config: InternVisionConfig, drop_path_rate: float):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = build_norm(config.norm_type, dim, config.layer_norm_eps)
        self.attn = InternAttention(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(dim))
        self.norm2 = build_norm(config.norm_type, dim, config.layer_norm_eps)
        self.mlp = InternMLP(config)
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(dim))
        self.drop_path1 = DropPath(drop_path_rate)
        self.drop_path2 = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x + self.drop_path1(self.attn(self.norm1(x).to(dtype)) * self.ls1)
        return x + self.drop_path2(self.mlp(self.norm2(x).to(dtype)) * self.ls2)


class InternVisionEncoder(nn.Module):

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(InternVisionEncoderLayer(config, rate) for rate in rates)
        self.gradient_checkpointing = False


class InternVisionModel(nn.Module):
    """Embeddings + encoder; returns the hidden state after a chosen layer (CLS token included)."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def layers_run(self, select_layer: int) -> int:
        """How many layers run for `select_layer`, which indexes hidden states as the official model does: 0 is the
        embedding output, -1 the last layer. Layers after the selected one are not run."""
        depth = len(self.encoder.layers)
        stop = select_layer if select_layer >= 0 else depth + 1 + select_layer
        if not 0 <= stop <= depth:
            raise ValueError(f'select_layer {select_layer} is out of range for a {depth}-layer vision model')
        return stop

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:self.layers_run(select_layer)]:
            if self.encoder.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x

    def init_random_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """Random initialisation for fresh (tiny) models; named apart from init_weights, which MMEngine calls."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=std, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embeddings.class_embedding, std=std, generator=generator)
        nn.init.normal_(self.embeddings.position_embedding, std=std, generator=generator)
