"""--resume reads the run's own checkpoint in full; every other torch.load keeps torch's weights_only default."""
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import FlexibleRunner, Runner

import xtuner.tools.utils

from internvl_plugin.resume import trust_resume_reads, trusting


def save_training_state(path) -> str:
    """What mmengine puts beside the weights: history buffers (bound methods inside) that weights_only refuses."""
    torch.save({'message_hub': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}, 'state_dict': {'w': torch.ones(1)}}, path)
    return str(path)


def test_only_the_resumed_checkpoint_unpickles_fully(tmp_path):
    own, other = save_training_state(tmp_path / 'iter_5.pth'), save_training_state(tmp_path / 'other.pth')
    original = torch.load
    with trusting(own):
        assert torch.load(own, weights_only=True)['state_dict']['w'].item() == 1.0
        with pytest.raises(pickle.UnpicklingError):
            torch.load(other, weights_only=True)
    assert torch.load is original
    with pytest.raises(pickle.UnpicklingError):
        torch.load(own, weights_only=True)


def test_a_deepspeed_folder_is_trusted_with_what_it_holds(tmp_path):
    folder = tmp_path / 'iter_5.pth'
    (folder / 'global_step5').mkdir(parents=True)
    inside = save_training_state(folder / 'global_step5' / 'mp_rank_00_model_states.pt')
    beside = save_training_state(tmp_path / 'iter_5.pth.bak')  # shares the name's prefix, not the folder
    with trusting(str(folder)):
        assert torch.load(inside, weights_only=True)['state_dict']['w'].item() == 1.0
        with pytest.raises(pickle.UnpicklingError):
            torch.load(beside, weights_only=True)


def test_resume_reads_are_wrapped_once():
    trust_resume_reads(xtuner.tools.utils)
    trust_resume_reads(xtuner.tools.utils)
    for read in (Runner.resume, FlexibleRunner.resume, xtuner.tools.utils.get_seed_from_checkpoint):
        assert not hasattr(read.__wrapped__, '__wrapped__')
