"""bitsandbytes' nf4 layer as fake tensors can hold it: the storage Linear4bit keeps, and the work it does.

bitsandbytes cannot quantise a meta or fake tensor (it needs the values), so in a network built on the meta device
(the memory estimate's) each layer it would quantise becomes a `Packed4bitLinear`: uint8 codes two weights a byte,
plus the double-quantised statistics (one uint8 absmax per 64 weights, one fp32 absmax per 256 of those, the two
code tables), as Linear4bit stores them; its forward and backward make the dequantised weight in the input's dtype
for one matmul, as bitsandbytes' 4-bit matmul does.
"""
import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 64            # weights per absmax (bitsandbytes' 4-bit blocksize)
NESTED_BLOCK = 256    # absmax values per fp32 absmax (double quantisation)
CODE_BYTES = 16 * 4 + 256 * 4 + 4   # the nf4 code table, the 8-bit code of the nested absmax, its offset


def nf4_bytes(numel: int) -> int:
    """Bytes bitsandbytes holds for `numel` weights in nf4 with double quantisation."""
    blocks = -(-numel // BLOCK)
    return -(-numel // 2) + blocks + 4 * -(-blocks // NESTED_BLOCK) + CODE_BYTES


class _Dequantized4bitMatmul(torch.autograd.Function):
    """x @ W^T with W dequantised for the matmul only, in forward and again in backward; only x's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, codes: torch.Tensor, out_features: int) -> torch.Tensor:
        ctx.shape = (out_features, x.shape[-1])
        ctx.codes = codes
        return F.linear(x, codes.new_zeros(ctx.shape, dtype=x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.codes.new_zeros(ctx.shape, dtype=grad.dtype), None, None


class Packed4bitLinear(nn.Linear):
    """A frozen nn.Linear whose weight is held as bitsandbytes holds nf4 weights (see the module docstring).
    It stays an nn.Linear so that peft puts LoRA adapters on it as on any linear layer."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        device = linear.weight.device
        numel = self.in_features * self.out_features
        self.weight = nn.Parameter(torch.zeros(-(-numel // 2), 1, dtype=torch.uint8, device=device),
                                   requires_grad=False)
        statistics = nf4_bytes(numel) - self.weight.numel()
        self.register_buffer('statistics', torch.zeros(statistics, dtype=torch.uint8, device=device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Dequantized4bitMatmul.apply(x, self.weight, self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)
