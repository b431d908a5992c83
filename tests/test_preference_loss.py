"""Preference losses: equal to TRL's DPO (loss and gradients) on one tiny model and batch, bco_pair to the official
formula with its running reward mean, hinge / ipo to their formulas; the weights and the running mean's state."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_trl
from internvl_plugin.model.preference import (MPO_LOSS_WEIGHTS, RewardShift, check_loss_weights, preference_loss,
                                              sequence_logps)

# fp32 on CPU, TRL 1.16: TRL's fused log-softmax and ours differ in summation order only (measured: losses within
# 2.3e-7 relative, every gradient within 1.2e-6 of the largest gradient entry).
TRL_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _tiny_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from internvl_plugin.tiny.tokenizer import build_tiny_tokenizer
    tokenizer = build_tiny_tokenizer('qwen2', internvl_tokens=False)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config), tokenizer


def _trl_trainer(tmp_path, loss_types, loss_weights):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    model, tokenizer = _tiny_lm()
    reference = copy.deepcopy(model)
    with torch.no_grad():  # the policy moves away from the reference, so every log-ratio is non-zero
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    pairs = Dataset.from_dict({
        'prompt': ['What colour is the sky?', 'Name a fruit.', 'Which animal barks?'],
        'chosen': [' Blue, on a clear day.', ' An apple', ' A dog'],
        'rejected': [' Green', ' A car, surely not a fruit', ' The cat, loudly']})
    args = DPOConfig(output_dir=str(tmp_path / 'trl'), beta=0.1, loss_type=loss_types, loss_weights=loss_weights,
                     report_to=[], per_device_train_batch_size=3, use_cpu=True, bf16=False, save_strategy='no')
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
    return trainer, next(iter(trainer.get_train_dataloader()))


def _our_logps(model, batch):
    labels = batch['input_ids'].masked_fill(batch['completion_mask'] == 0, -100)
    rows = torch.arange(labels.shape[0])[:, None].expand_as(labels)
    hidden = model.model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).last_hidden_state
    sums, counts = sequence_logps(hidden, model.lm_head, labels, rows, labels.shape[0])
    return sums.chunk(2), counts.chunk(2)


@needs_trl
@pytest.mark.parametrize('weights', [{'sigmoid': 1.0}, {'hinge': 1.0}, {'ipo': 1.0}, {'sigmoid': 0.8, 'sft': 1.0}])
def test_loss_and_gradients_equal_trl_dpo(tmp_path, weights):
    trainer, batch = _trl_trainer(tmp_path, list(weights), list(weights.values()))
    model = trainer.model
    trl_loss = trainer.compute_loss(model, batch)
    trl_loss.backward()
    trl_grads = [param.grad.clone() for param in model.parameters()]
    model.zero_grad()

    (chosen, rejected), (chosen_tokens, rejected_tokens) = _our_logps(model, batch)
    with torch.no_grad():
        (ref_chosen, ref_rejected), _ = _our_logps(trainer.ref_model, batch)
    ours = preference_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, weights,
                           beta=0.1)
    ours['loss'].backward()
    assert abs(float(trl_loss.detach()) - 0.6931) > 1e-3 or 'sigmoid' not in weights  # policy != reference
    torch.testing.assert_close(ours['loss'], trl_loss.detach(), **TRL_TOLERANCE)
    for ours_grad, trl_grad in zip((param.grad for param in model.parameters()), trl_grads):
        torch.testing.assert_close(ours_grad, trl_grad, **TRL_TOLERANCE)
    metrics = trainer._metrics['train']
    for name in ('chosen', 'rejected', 'margins', 'accuracies'):
        key = {'margins': 'rewards_margin', 'accuracies': 'rewards_accuracy'}.get(name, f'rewards_{name}')
        assert float(ours[key]) == pytest.approx(metrics[f'rewards/{name}'][-1], rel=1e-5, abs=1e-6)


def _logps(seed: int, pairs: int = 4):
    generator = torch.Generator().manual_seed(seed)
    values = [-20 * torch.rand(pairs, generator=generator, dtype=torch.float64) for _ in range(4)]
    tokens = [torch.randint(1, 9, (pairs,), generator=generator) for _ in range(2)]
    return values, tokens


def test_bco_pair_equals_the_official_formula_with_its_running_mean_over_steps():
    """The official trainer: rewards = beta * log-ratios; RunningMoments takes the mean of chosen and rejected
    rewards each step, and delta is its mean after that update."""
    beta, shift, seen = 0.1, RewardShift(), []
    for step in range(3):
        (chosen, rejected, ref_chosen, ref_rejected), (chosen_tokens, rejected_tokens) = _logps(step)
        out = preference_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
                              {'bco_pair': 1.0}, beta=beta, reward_shift=shift)
        chosen_rewards, rejected_rewards = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        seen.append(float(torch.cat([chosen_rewards, rejected_rewards]).mean()))
        delta = sum(seen) / len(seen)
        official = (-F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))).mean()
        torch.testing.assert_close(out['loss'], official, rtol=1e-12, atol=1e-12)
        assert float(out['reward_shift']) == pytest.approx(delta, rel=1e-12)


def test_hinge_ipo_sft_and_the_mpo_mix_follow_their_formulas():
    beta = 0.25
    (chosen, rejected, ref_chosen, ref_rejected), (chosen_tokens, rejected_tokens) = _logps(7)
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))

    def loss(weights, shift=None):
        return preference_loss(chosen, rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, weights,
                               beta=beta, reward_shift=shift)

    torch.testing.assert_close(loss({'hinge': 1})['loss'], torch.relu(1 - margin).mean())
    per_token = (chosen - ref_chosen) / chosen_tokens - (rejected - ref_rejected) / rejected_tokens
    torch.testing.assert_close(loss({'ipo': 1})['loss'], ((per_token - 1 / (2 * beta)) ** 2).mean())
    torch.testing.assert_close(loss({'sft': 1})['loss'], -chosen.sum() / chosen_tokens.sum())
    mix = loss(MPO_LOSS_WEIGHTS, RewardShift())
    expected = 0.8 * mix['term_sigmoid'] + 0.2 * mix['term_bco_pair'] + 1.0 * mix['term_sft']
    torch.testing.assert_close(mix['loss'], expected)
    torch.testing.assert_close(mix['term_sigmoid'], -F.logsigmoid(margin).mean())
    assert float(mix['rewards_accuracy']) == float((margin > 0).double().mean())


def test_a_zero_weight_logs_its_term_without_training_on_it():
    values, tokens = _logps(3)
    chosen = values[0].clone().requires_grad_()
    out = preference_loss(chosen, *values[1:], *tokens, {'sigmoid': 1.0, 'sft': 0.0}, beta=0.1)
    out['loss'].backward()
    alone = chosen.detach().clone().requires_grad_()
    preference_loss(alone, *values[1:], *tokens, {'sigmoid': 1.0}, beta=0.1)['loss'].backward()
    assert float(out['term_sft']) > 0
    torch.testing.assert_close(chosen.grad, alone.grad)


def test_the_running_mean_is_state_that_a_checkpoint_carries():
    shift = RewardShift()
    for value in (1.0, 2.0, 6.0):
        shift.update(torch.tensor(value))
    resumed = RewardShift()
    resumed.load_state_dict(shift.state_dict())
    assert float(resumed.mean) == pytest.approx(3.0) and float(resumed.count) == 3
    assert float(resumed.update(torch.tensor(7.0))) == pytest.approx(4.0)


def test_sequence_logps_sum_each_sequence_of_a_packed_row():
    torch.manual_seed(0)
    output_layer = torch.nn.Linear(8, 11)
    hidden = torch.randn(1, 7, 8)
    labels = torch.tensor([[-100, 3, 4, -100, -100, 5, 6]])
    sequence_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    sums, counts = sequence_logps(hidden, output_layer, labels, sequence_ids, 2)
    logps = torch.log_softmax(output_layer(hidden[0]), dim=-1)
    assert counts.tolist() == [2, 2]
    torch.testing.assert_close(sums, torch.stack([logps[0, 3] + logps[1, 4], logps[4, 5] + logps[5, 6]]))


@pytest.mark.parametrize('weights, message', [
    ({'dpo': 1.0}, "unknown loss type(s) ['dpo']"), ({'sigmoid': -1}, "loss_weights['sigmoid'] is -1"),
    ({'sigmoid': 0}, 'has no positive weight'), ([('sigmoid', 1)], 'expected a dict')])
def test_bad_loss_weights_are_refused_in_one_line(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_loss_weights(weights)
    assert check_loss_weights(None) == MPO_LOSS_WEIGHTS
