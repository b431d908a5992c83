"""The training loss at a released size's vocabulary: logits for every token against logits where a label is
supervised (ours, internvl_plugin.model.modeling.segments.causal_lm_loss).

    python benchmarks/loss_logits.py [--size 1b|2b|8b|26b] [--tokens 4096] [--supervised 0.103] [--steps 3]

Every token's logits, cast to fp32 for the cross-entropy, is what transformers' CausalLM loss (the official
InternVL scripts, XTuner 0.2.0) computes and what ours computed before. The default supervised share is the mixed
workload's (internvl_plugin.tiny.write_mixed_workload: 10.3 % of its tokens are answers; image and prompt tokens
are the rest). One row of `--tokens` tokens (a pack), bf16 hidden states and output layer of the size's LLM,
forward + backward, the output layer trained (a full fine-tune: the peak includes its weight's gradient); each way
runs in its own process, so its peak memory is its own. Prints both losses (equal), ms per step and the step's peak
memory above what its inputs and weights hold.
"""
import argparse
import time
from typing import Dict

import torch
import torch.nn.functional as F
from train_step import in_own_process, peak_memory_gib

from internvl_plugin.model.modeling.segments import IGNORE_INDEX, causal_lm_loss
from internvl_plugin.tiny import RELEASED_SHAPES


def every_token_loss(hidden: torch.Tensor, output_layer: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    logits = output_layer(hidden).float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def measure(size: str, tokens: int, supervised: float, ours: bool, device_name: str,
            steps: int) -> Dict[str, float]:
    device = torch.device(device_name)
    config = RELEASED_SHAPES[size]['shape'].llm_config
    torch.manual_seed(0)  # the output layer's initialisation
    generator = torch.Generator().manual_seed(0)
    output_layer = torch.nn.Linear(config['hidden_size'], config['vocab_size'], bias=False, dtype=torch.bfloat16)
    output_layer.to(device)
    hidden = torch.randn(1, tokens, config['hidden_size'], generator=generator, dtype=torch.bfloat16).to(device)
    hidden.requires_grad_(True)
    labels = torch.randint(0, config['vocab_size'], (1, tokens), generator=generator)
    labels[torch.rand(1, tokens, generator=generator) >= supervised] = IGNORE_INDEX
    labels = labels.to(device)
    before = peak_memory_gib(device)
    seconds = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        if ours:
            loss = causal_lm_loss(hidden, output_layer, labels)
        else:
            loss = every_token_loss(hidden, output_layer, labels)
        loss.backward()
        hidden.grad = output_layer.weight.grad = None
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if step:  # the first step warms up
            seconds += time.perf_counter() - start
    return {'loss': loss.item(), 'ms': seconds / steps * 1000, 'peak_gib': peak_memory_gib(device) - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=[size for size in RELEASED_SHAPES if size != 'tiny'], default='1b')
    parser.add_argument('--tokens', type=int, default=4096)
    parser.add_argument('--supervised', type=float, default=0.103, help='share of tokens with a label')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--steps', type=int, default=3, help='timed steps, after one warm-up step')
    args = parser.parse_args()
    config = RELEASED_SHAPES[args.size]['shape'].llm_config
    every = in_own_process(measure, args.size, args.tokens, args.supervised, False, args.device, args.steps)
    ours = in_own_process(measure, args.size, args.tokens, args.supervised, True, args.device, args.steps)
    print(f"{RELEASED_SHAPES[args.size]['model']} output layer ({config['hidden_size']} x {config['vocab_size']}, "
          f'bf16), {args.tokens} tokens, {args.supervised:.1%} supervised, {args.device}, torch {torch.__version__}')
    for name, result in (('logits for every token', every), ('logits where supervised', ours)):
        print(f"{name:<26} loss {result['loss']:.4f}, {result['ms']:8.1f} ms/step, peak {result['peak_gib']:6.2f} GiB")
    print(f"every token / where supervised: {every['ms'] / ours['ms']:.2f}x time, "
          f"{every['peak_gib'] / ours['peak_gib']:.2f}x memory")


if __name__ == '__main__':
    main()
