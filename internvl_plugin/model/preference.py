"""Preference losses (DPO family and MPO's mix) as pure functions of per-sequence log-probabilities.

MPO (InternVL 2.5 onwards) trains on sigmoid DPO x 0.8 + BCO-pair x 0.2 + SFT on the chosen answer x 1.0, beta 0.1,
the reference being the initial model. The formulas follow the official trainer (on TRL's DPO loss):
- rewards r_c = beta * (log pi(chosen) - log ref(chosen)), r_r likewise; log-probs are summed over answer tokens;
- sigmoid: -log sigmoid(r_c - r_r); hinge: relu(1 - (r_c - r_r)); ipo: ((a_c - a_r) - 1 / (2 beta))^2 with a the
  log-ratios averaged per answer token;
- bco_pair: -log sigmoid(r_c - delta) - log sigmoid(-(r_r - delta)), delta the running mean of the batches' mean
  reward (chosen and rejected together), updated with the batch before it is used (`RewardShift`);
- sft: the mean negative log-likelihood per chosen answer token over the batch (official `rpo_alpha`).
Each term is the mean over the batch's pairs, weighed and summed.
"""
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .modeling.segments import IGNORE_INDEX, token_cross_entropy

PREFERENCE_LOSSES = ('sigmoid', 'bco_pair', 'hinge', 'ipo', 'sft')
MPO_LOSS_WEIGHTS: Dict[str, float] = {'sigmoid': 0.8, 'bco_pair': 0.2, 'sft': 1.0}


def check_loss_weights(weights: Optional[Mapping[str, float]]) -> Dict[str, float]:
    """{loss type: weight}; None gives MPO's. Unknown types, negative weights or no positive one are refused."""
    if weights is None:
        return dict(MPO_LOSS_WEIGHTS)
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f'loss_weights is {weights!r}; expected a dict such as {MPO_LOSS_WEIGHTS}')
    unknown = sorted(set(weights) - set(PREFERENCE_LOSSES))
    if unknown:
        raise ValueError(f'loss_weights names unknown loss type(s) {unknown}; expected some of {PREFERENCE_LOSSES}')
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"loss_weights['{name}'] is {weight!r}; expected a number >= 0")
    if not any(weight > 0 for weight in weights.values()):
        raise ValueError(f'loss_weights {dict(weights)} has no positive weight; nothing would train')
    return {name: float(weight) for name, weight in weights.items()}


def sequence_logps(hidden: torch.Tensor, output_layer: nn.Module, labels: torch.Tensor,
                   sequence_ids: torch.Tensor, n_sequences: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each sequence's supervised tokens, and how many there are.

    hidden (B, L, H) the LLM's last hidden states, labels (B, L) with -100 off the answers, sequence_ids (B, L)
    the sequence 0..n_sequences-1 each token belongs to (several per row when packed). Logits are made only at
    supervised positions, as for the SFT loss."""
    shift_labels = labels[:, 1:].to(hidden.device)
    shift_sequences = sequence_ids[:, 1:].to(hidden.device)
    supervised = shift_labels != IGNORE_INDEX
    token_logps = -token_cross_entropy(output_layer, hidden[:, :-1][supervised], shift_labels[supervised])
    owners = shift_sequences[supervised]
    if bool((owners < 0).any()) or bool((owners >= n_sequences).any()):
        raise ValueError(f'a supervised token belongs to no sequence 0..{n_sequences - 1} (sequence_ids)')
    sums = torch.zeros(n_sequences, dtype=token_logps.dtype, device=hidden.device).index_add(0, owners, token_logps)
    counts = torch.bincount(owners, minlength=n_sequences)
    return sums, counts


class RewardShift(nn.Module):
    """BCO's delta: the running mean of the batches' mean reward, over every rank (each rank's batch one value, as
    the official trainer's RunningMoments). Buffers, so checkpoints carry it and a resumed run goes on from it."""

    def __init__(self):
        super().__init__()
        self.register_buffer('mean', torch.zeros((), dtype=torch.float64))
        self.register_buffer('count', torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """Adds this batch's mean reward (all ranks') and returns the new running mean."""
        value = batch_mean.detach().to(self.mean.device, torch.float64).reshape(1)
        ranks = 1
        if dist.is_available() and dist.is_initialized():
            ranks = dist.get_world_size()
            dist.all_reduce(value)
            value = value / ranks
        self.count += ranks
        self.mean += (value[0] - self.mean) * ranks / self.count
        return self.mean.clone()


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
                    weights: Mapping[str, float], beta: float = 0.1,
                    reward_shift: Optional[RewardShift] = None) -> Dict[str, torch.Tensor]:
    """The weighed loss and its parts from per-pair summed log-probs (P,) and answer token counts (P,).

    Returns 'loss' (with a graph), each 'term_<type>' of a weighed type (no 'loss' in the name: MMEngine sums every
    key that holds it) and the metrics 'rewards_chosen',
    'rewards_rejected', 'rewards_margin', 'rewards_accuracy' (the share of pairs whose chosen reward is higher),
    'logps_chosen', 'logps_rejected' (batch means, detached); 'reward_shift' too when bco_pair is weighed.
    `reward_shift` holds bco_pair's running mean; it is required when bco_pair is weighed."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
    out: Dict[str, torch.Tensor] = {}
    total = policy_chosen.new_zeros(())
    for name, weight in weights.items():
        if name == 'sigmoid':
            term = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        elif name == 'hinge':
            term = torch.relu(1 - (chosen_rewards - rejected_rewards)).mean()
        elif name == 'ipo':
            per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
            term = ((per_token - 1 / (2 * beta)) ** 2).mean()
        elif name == 'bco_pair':
            if reward_shift is None:
                raise ValueError('bco_pair needs a RewardShift (its running mean of rewards)')
            batch_mean = torch.cat([chosen_rewards, rejected_rewards]).mean()
            delta = reward_shift.update(batch_mean).to(chosen_rewards.dtype)
            term = (-F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))).mean()
            out['reward_shift'] = delta.detach()
        elif name == 'sft':
            term = -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)
        else:
            raise ValueError(f"unknown preference loss '{name}'; expected one of {PREFERENCE_LOSSES}")
        out[f'term_{name}'] = term.detach()
        if weight:
            total = total + weight * term
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    out.update(loss=total, rewards_chosen=chosen_rewards.mean(), rewards_rejected=rejected_rewards.mean(),
               rewards_margin=(chosen_rewards - rejected_rewards).mean(),
               rewards_accuracy=(chosen_rewards > rejected_rewards).float().mean(),
               logps_chosen=policy_chosen.detach().mean(), logps_rejected=policy_rejected.detach().mean())
    return out
