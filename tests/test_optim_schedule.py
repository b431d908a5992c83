from types import SimpleNamespace

import pytest
import torch
from mmengine.optim import OptimWrapper

from internvl_plugin import CosineLR, InternVL_V1_5, InternVLAdamW, ProgressLoggerHook, WarmupLR


def _part_of(model, param):
    return next(part for part in ('vision_model', 'mlp1', 'language_model')
                if any(param is p for p in getattr(model.model, part).parameters()))


def test_each_part_gets_its_learning_rate_and_one_dimensional_weights_no_decay(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('internlm2'), torch_dtype='float32', use_activation_checkpointing=False,
                          freeze_visual_encoder=True)
    optimizer = InternVLAdamW(model.parameters(), lr=1e-4, mlp_lr=1e-3, weight_decay=0.05)
    seen = 0
    for group in optimizer.param_groups:
        for param in group['params']:
            seen += 1
            assert group['lr'] == (1e-3 if _part_of(model, param) == 'mlp1' else 1e-4)
            assert group['weight_decay'] == (0.05 if param.ndim > 1 else 0.0)
    assert seen == sum(p.requires_grad for p in model.parameters())  # the frozen ViT is left out
    assert not any(_part_of(model, p) == 'vision_model' for g in optimizer.param_groups for p in g['params'])


def test_lora_parameters_belong_to_their_part(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=False,
                          freeze_visual_encoder=True, freeze_mlp=True, llm_lora=dict(r=4, lora_alpha=8))
    optimizer = InternVLAdamW(model.parameters(), lr=1e-4, llm_lr=3e-4)
    params = [p for g in optimizer.param_groups for p in g['params']]
    assert params and all(g['lr'] == 3e-4 for g in optimizer.param_groups)
    assert len(params) == sum(p.requires_grad for p in model.parameters())


def test_everything_frozen_is_an_error():
    layer = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match='no parameter trains'):
        InternVLAdamW(layer.parameters(), lr=1e-3)


def _learning_rates(epoch_length: int, warmup_ratio: float = 0.03):
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=1.0))
    schedulers = [
        WarmupLR.build_iter_from_epoch(wrapper, start_factor=1e-5, begin=0, end=warmup_ratio,
                                       epoch_length=epoch_length),
        CosineLR.build_iter_from_epoch(wrapper, eta_min=0.0, begin=warmup_ratio, end=1, epoch_length=epoch_length),
    ]
    rates = []
    for _ in range(epoch_length):
        rates.append(wrapper.param_groups[0]['lr'])
        param.grad = torch.zeros(1)
        wrapper.step()
        for scheduler in schedulers:
            scheduler.step()
    return rates


@pytest.mark.parametrize('epoch_length', [1, 5, 16, 33])
def test_short_epochs_warm_up_for_one_iteration_then_decay(epoch_length):
    """MMEngine's LinearLR/CosineAnnealingLR fail here ('end should be larger than begin') or stay at 1e-5."""
    rates = _learning_rates(epoch_length)
    assert rates[0] == pytest.approx(1e-5)
    if epoch_length > 1:
        assert rates[1] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(rates[1:], rates[2:]))
        assert rates[-1] < (0.5 if epoch_length > 4 else 1.01)


def test_long_epochs_warm_up_over_the_rounded_up_fraction():
    rates = _learning_rates(1000)  # ceil(0.03 * 1000) = 30 warmup iterations, peak at iteration 30
    assert rates[0] == pytest.approx(1e-5) and rates[15] == pytest.approx(0.5, abs=0.01)
    assert rates[30] == pytest.approx(1.0) and max(rates) == pytest.approx(1.0)
    assert rates[-1] < 1e-4


@pytest.mark.parametrize('max_iters,interval', [(8, 1), (50, 5), (100, 10), (5000, 10)])
def test_short_runs_log_often_enough_to_show_progress(max_iters, interval):
    """The configs log every 10 iterations; an 8-iteration run then printed nothing until it had ended."""
    hook = ProgressLoggerHook(interval=10)
    hook.before_train(SimpleNamespace(max_iters=max_iters))
    assert hook.interval == interval
