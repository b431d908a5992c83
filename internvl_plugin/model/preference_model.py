"""InternVLPreference: MPO / DPO training of InternVL under MMEngine / XTuner (batches from preference_collate_fn).

The reference model is the initial model, in one of two forms:
- 'adapters' (LoRA / QLoRA): the same network with its adapters disabled, run under no_grad; no second copy of the
  weights, one more forward pass per step (a third of a step's compute).
- 'copy' (full fine-tuning): a frozen copy of the network made after loading, in the training dtype: one more
  copy of the weights (2 bytes per parameter in bf16: 16 GB for an 8B model), no gradients or optimizer state.
Both run in eval mode (no dropout or drop path), as the official reference model does.
"""
import contextlib
import copy
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch

from .checkpoint.trained import apply_trained_state, load_trained_state
from .internvl import InternVL_V1_5
from .modeling.internvl_chat import InternVLChatModel
from .preference import RewardShift, check_loss_weights, preference_loss, sequence_logps

REFERENCE_MODES = ('auto', 'adapters', 'copy')
# The model settings InternVL_V1_5 does not take, and the state that is training bookkeeping rather than weights:
# left out when a preference run's checkpoint is exported.
PREFERENCE_FIELDS = ('beta', 'loss_weights', 'reference')
TRAINING_STATE_PREFIX = 'reward_shift.'


def network_sequence_logps(network: InternVLChatModel, data: Dict[str, Any]
                           ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Summed log-probs and answer token counts of every sequence of a preference_collate_fn batch (chosen ones
    first), and an MoE LLM's router loss (None without a router)."""
    hidden, router_loss = network.hidden_states(
        input_ids=data['input_ids'], pixel_values=data.get('pixel_values'), image_flags=data.get('image_flags'),
        attention_mask=data.get('attention_mask'), position_ids=data.get('position_ids'),
        segment_ids=data.get('segment_ids'), tile_order=data.get('tile_order'))
    sums, counts = sequence_logps(hidden, network.language_model.get_output_embeddings(), data['labels'],
                                  data['sequence_ids'], int(data['sequence_ids'].max()) + 1)
    return sums, counts, router_loss


class InternVLPreference(InternVL_V1_5):
    """InternVL_V1_5 trained on preference pairs: `loss_weights` {type: weight} over 'sigmoid', 'bco_pair', 'hinge',
    'ipo', 'sft' (default MPO's {'sigmoid': 0.8, 'bco_pair': 0.2, 'sft': 1.0}), `beta` (0.1), `reference` 'auto'
    ('adapters' with LoRA / QLoRA, else 'copy'), see the module docstring. Every InternVL_V1_5 argument applies.
    Each step logs the loss terms (term_<type>), rewards_chosen / rejected / margin / accuracy, logps_chosen /
    rejected and bco_pair's reward_shift; checkpoints carry the reward shift, so a resumed run goes on from it."""

    def __init__(self, beta: float = 0.1, loss_weights: Optional[Mapping[str, float]] = None,
                 reference: str = 'auto', pretrained_pth: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference '{reference}' is not one of {REFERENCE_MODES}")
        if not beta > 0:
            raise ValueError(f'beta is {beta!r}; expected a number > 0 (0.1 in the MPO recipes)')
        self.beta = float(beta)
        self.loss_weights = check_loss_weights(loss_weights)
        self.reward_shift = RewardShift()
        if pretrained_pth:
            self._load_pretrained(pretrained_pth)
        adapters = [module for module in (self.model.language_model, self.model.vision_model)
                    if hasattr(module, 'disable_adapter')]
        if reference == 'auto':
            reference = 'adapters' if adapters else 'copy'
        self.reference_mode = reference
        self.reference_model: Optional[InternVLChatModel] = None
        if reference == 'adapters':
            beyond = [name for name, param in self.model.named_parameters()
                      if param.requires_grad and 'lora_' not in name]
            if not adapters:
                raise ValueError("reference='adapters' needs LoRA (llm_lora / visual_encoder_lora), but no LoRA is "
                                 "set; use reference='copy' (a frozen copy of the model)")
            if beyond:
                raise ValueError("reference='adapters' needs LoRA and nothing else training, but "
                                 f"{beyond[:3]} train; freeze them or use reference='copy'")
            self._adapters = adapters
        else:
            self.reference_model = copy.deepcopy(self.model).eval()
            for param in self.reference_model.parameters():
                param.requires_grad_(False)

    def _load_pretrained(self, path: str) -> None:
        """Weights from an SFT or preference run; the reward shift starts afresh (a new reference, a new scale)."""
        trained = weights_only(load_trained_state(path))
        trained.update(self.reward_shift.state_dict(prefix=TRAINING_STATE_PREFIX))
        apply_trained_state(self, trained, path)

    def state_dict(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """What trains, and the reward shift (training state a resumed run needs)."""
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        state = super().state_dict(*args, **kwargs)
        state.update(self.reward_shift.state_dict(prefix=prefix + TRAINING_STATE_PREFIX))
        return state

    def train(self, mode: bool = True) -> 'InternVLPreference':
        super().train(mode)
        if getattr(self, 'reference_model', None) is not None:
            self.reference_model.eval()
        return self

    @contextlib.contextmanager
    def _as_reference(self) -> Iterator[InternVLChatModel]:
        """The reference network, in eval mode, without gradients."""
        if self.reference_model is not None:
            with torch.no_grad():
                yield self.reference_model
            return
        was_training = self.model.training
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for module in self._adapters:
                stack.enter_context(module.disable_adapter())
            self.model.eval()
            try:
                yield self.model
            finally:
                self.model.train(was_training)

    def reference_logps(self, data: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of each chosen (first half) and rejected (second half) sequence under the reference."""
        with self._as_reference() as network:
            sums, counts, _ = network_sequence_logps(network, data)
        return sums, counts

    def forward(self, data: Dict[str, Any], data_samples: Any = None, mode: str = 'loss'):
        """'loss': the weighed preference loss (+ an MoE router's loss) and the step's metrics; other modes as
        InternVL_V1_5 (on SFT-style batches)."""
        if mode != 'loss':
            return super().forward(data, data_samples, mode)
        sequences = int(data['sequence_ids'].max()) + 1
        if sequences % 2:
            raise ValueError(f'sequence_ids number {sequences} sequences; expected chosen and rejected of each pair')
        policy, counts, router_loss = network_sequence_logps(self.model, data)
        reference, _ = self.reference_logps(data)
        pairs = sequences // 2
        out = preference_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], counts[:pairs],
                              counts[pairs:], self.loss_weights, beta=self.beta, reward_shift=self.reward_shift)
        if router_loss is not None:
            out['loss'] = out['loss'] + router_loss
        return out


def export_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
    """A preference config's model fields as InternVL_V1_5 takes them (for export: no reference copy)."""
    return {key: value for key, value in fields.items() if key not in PREFERENCE_FIELDS}


def weights_only(trained: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A checkpoint's trained state without the preference bookkeeping (the reward shift)."""
    return {key: value for key, value in trained.items() if not key.startswith(TRAINING_STATE_PREFIX)}

