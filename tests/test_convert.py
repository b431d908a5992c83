import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import needs_gpt_oss, needs_native_internvl, needs_qwen3
from helpers import image_batch

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.checkpoint import export
from internvl_plugin.model.checkpoint.export import TOKENIZER_FILES
from internvl_plugin.model.checkpoint.convert import convert_checkpoint
from internvl_plugin.model.checkpoint.trained import load_trained_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA = "dict(r=8, lora_alpha=16, lora_dropout=0.0)"


def write_config(folder, model_path, template='internvl2_5', **model_args):
    args = ''.join(f', {k}={v}' for k, v in model_args.items())
    path = os.path.join(folder, 'config.py')
    with open(path, 'w') as f:
        f.write('from internvl_plugin import InternVL_V1_5\n\n'
                f"model = dict(type=InternVL_V1_5, model_path={model_path!r}, torch_dtype='float32',\n"
                f'             use_activation_checkpointing=False{args})\n'
                f"train_dataloader = dict(dataset=dict(template={template!r}, max_dynamic_patch=6))\n")
    return path


def train_and_save(model, folder, steps=3):
    """A few SGD steps, then an mmengine-style checkpoint of what trains."""
    batch = image_batch(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch)['loss'].backward()
        optimizer.step()
    path = os.path.join(folder, f'iter_{steps}.pth')
    torch.save({'meta': {'iter': steps}, 'state_dict': model.state_dict()}, path)
    return batch, path


def mlp_only_run(base, folder):
    """A checkpoint of one step that trains only mlp1, and its config: (base, model, checkpoint, config)."""
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True)
    _, ckpt = train_and_save(model, str(folder), steps=1)
    return base, model, ckpt, write_config(str(folder), base, freeze_llm=True, freeze_visual_encoder=True)


@pytest.mark.parametrize('family,vit,lora', [('qwen2', '300m', True), ('internlm2', '6b', True),
                                             ('phi3', '300m', False), ('llama', '6b', True),
                                             pytest.param('qwen3', '300m', True, marks=needs_qwen3),
                                             pytest.param('qwen3_moe', '300m', True, marks=needs_qwen3),
                                             pytest.param('qwen3_moe', '300m', False, marks=needs_qwen3),
                                             pytest.param('gpt_oss', '300m', True, marks=needs_gpt_oss)])
def test_round_trip_logits_match_the_merged_model(tiny_checkpoint, tmp_path, family, vit, lora):
    base = tiny_checkpoint(family, vit)
    args = {'llm_lora': LORA, 'freeze_visual_encoder': True} if lora else {}
    config = write_config(str(tmp_path), base, **args)
    model = InternVL_V1_5(base, torch_dtype='float32', use_activation_checkpointing=False,
                          **({'llm_lora': dict(r=8, lora_alpha=16, lora_dropout=0.0), 'freeze_visual_encoder': True}
                             if lora else {}))
    batch, ckpt = train_and_save(model, str(tmp_path))
    model.eval()
    with torch.no_grad():
        trained_logits = model(batch, mode='predict')
        merged_logits = model.merged_network()(batch['input_ids'], batch['pixel_values'], batch['image_flags'])[0]
    assert torch.allclose(trained_logits, merged_logits, atol=1e-4)

    out = str(tmp_path / 'converted')
    convert_checkpoint(config, ckpt, out, dtype=torch.float32)
    reloaded = InternVL_V1_5(out, torch_dtype='float32', use_activation_checkpointing=False).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(batch, mode='predict')
    assert (reloaded_logits - merged_logits).abs().max().item() < 1e-4
    original = InternVL_V1_5(base, torch_dtype='float32').eval()
    with torch.no_grad():  # training changed the answer: the converter did not save the base model
        assert (original(batch, mode='predict') - merged_logits).abs().max().item() > 1e-3

    written = json.load(open(os.path.join(out, 'config.json')))
    assert written['model_type'] == 'internvl_chat'
    assert written['use_llm_lora'] == 0 and written['use_backbone_lora'] == 0
    assert written['template'] == 'internvl2_5' and written['max_dynamic_patch'] == 6
    base_keys = set(json.load(open(os.path.join(base, 'config.json'))))
    assert base_keys <= set(written)
    from safetensors import safe_open
    with safe_open(os.path.join(out, 'model.safetensors'), 'pt') as f, \
            safe_open(os.path.join(base, 'model.safetensors'), 'pt') as g:
        assert set(f.keys()) == set(g.keys())  # official names again (InternLM2: wqkv, output, ...)


def test_bf16_sharded_output_with_remote_code(tiny_checkpoint, tmp_path):
    base = str(tmp_path / 'base')
    shutil.copytree(tiny_checkpoint('internlm2'), base)
    remote_code = ['configuration_internvl_chat.py', 'modeling_internvl_chat.py', 'conversation.py']
    for name in remote_code:
        with open(os.path.join(base, name), 'w') as f:
            f.write(f'# {name} of the base checkpoint\n')
    config = write_config(str(tmp_path), base, llm_lora=LORA)
    model = InternVL_V1_5(base, torch_dtype='float32', llm_lora=dict(r=8, lora_alpha=16, lora_dropout=0.0))
    _, ckpt = train_and_save(model, str(tmp_path), steps=1)
    out = str(tmp_path / 'bf16')
    summary = convert_checkpoint(config, ckpt, out, max_shard_bytes=200_000)
    assert summary['remote_code'] == sorted(remote_code)
    files = os.listdir(out)
    for name in remote_code:
        assert open(os.path.join(out, name)).read() == f'# {name} of the base checkpoint\n'
    index = json.load(open(os.path.join(out, 'model.safetensors.index.json')))
    shards = sorted(set(index['weight_map'].values()))
    assert len(shards) > 1 and set(shards) <= set(files)
    assert 'tokenizer.model' in files and json.load(open(os.path.join(out, 'config.json')))['torch_dtype'] == 'bfloat16'
    reloaded = InternVL_V1_5(out, torch_dtype='bfloat16')
    assert next(reloaded.model.language_model.parameters()).dtype == torch.bfloat16
    assert not any(name.startswith('.') for name in os.listdir(tmp_path))  # no temporary folders left


@needs_native_internvl
@pytest.mark.parametrize('family', ['qwen2', 'internlm2', pytest.param('qwen3', marks=needs_qwen3),
                                    pytest.param('qwen3_moe', marks=needs_qwen3),
                                    pytest.param('gpt_oss', marks=needs_gpt_oss)])
def test_hf_format_loads_with_the_native_class_and_gives_the_same_logits(tiny_checkpoint, tmp_path, family):
    from transformers import AutoModelForImageTextToText
    base = tiny_checkpoint(family, '6b' if family == 'internlm2' else '300m')
    config = write_config(str(tmp_path), base, llm_lora=LORA)
    model = InternVL_V1_5(base, torch_dtype='float32', use_activation_checkpointing=False,
                          llm_lora=dict(r=8, lora_alpha=16, lora_dropout=0.0))
    batch, ckpt = train_and_save(model, str(tmp_path))
    model.eval()
    with torch.no_grad():
        merged_logits = model.merged_network()(batch['input_ids'], batch['pixel_values'], batch['image_flags'])[0]
    out = str(tmp_path / 'hf')
    convert_checkpoint(config, ckpt, out, fmt='hf', dtype=torch.float32)
    assert json.load(open(os.path.join(out, 'config.json')))['model_type'] == 'internvl'
    native = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert type(native).__name__ == 'InternVLForConditionalGeneration'
    with torch.no_grad():
        native_logits = native(input_ids=batch['input_ids'], pixel_values=batch['pixel_values']).logits
    assert (native_logits - merged_logits).abs().max().item() < 1e-4

    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer
    text = '<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat colour is it?<|im_end|><|im_start|>assistant\n red 12'
    assert AutoTokenizer.from_pretrained(out)(text)['input_ids'] == model.tokenizer(text)['input_ids']
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == 'InternVLProcessor' and processor.image_token == '<IMG_CONTEXT>'
    # The processor tiles as training did (the config's max_dynamic_patch 6), not as the base's config.json (12).
    assert json.load(open(os.path.join(out, 'preprocessor_config.json')))['max_patches'] == 6
    inputs = processor(text=['<IMG_CONTEXT>\nWhat colour?'], images=[Image.new('RGB', (900, 450), (200, 10, 10))],
                       return_tensors='pt')
    assert inputs['pixel_values'].shape == (3, 3, 448, 448)  # a 2x1 grid for a 2:1 image, plus the thumbnail
    n_context = int((inputs['input_ids'] == processor.image_token_id).sum())
    assert n_context == 3 * 256
    with torch.no_grad():
        assert native(**inputs).logits.shape[1] == inputs['input_ids'].shape[1]


def test_deepspeed_checkpoint_folder_is_accepted(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint('qwen2')
    config = write_config(str(tmp_path), base, freeze_llm=True, freeze_visual_encoder=True)
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True)
    batch, pth = train_and_save(model, str(tmp_path))
    folder = tmp_path / 'iter_3.pth.ds'
    (folder / 'global_step3').mkdir(parents=True)
    torch.save({'module': torch.load(pth, weights_only=False)['state_dict']},
               folder / 'global_step3' / 'mp_rank_00_model_states.pt')
    out = str(tmp_path / 'from_ds')
    assert convert_checkpoint(config, str(folder), out, dtype=torch.float32)['trained_tensors'] == 6  # mlp1: LayerNorm + 2 Linear
    reloaded = InternVL_V1_5(out, torch_dtype='float32')
    assert torch.equal(reloaded.model.mlp1[1].weight, model.model.mlp1[1].weight)


def save_deepspeed_states(folder, tag: str, value: float) -> None:
    (folder / tag).mkdir(parents=True)
    torch.save({'module': {'mlp1.1.weight': torch.full((2,), value)}}, folder / tag / 'mp_rank_00_model_states.pt')


def test_a_folder_of_several_deepspeed_checkpoints_converts_the_latest_or_refuses(tmp_path):
    work = tmp_path / 'work'
    save_deepspeed_states(work / 'iter_1500.pth', 'global_step1500', 1500.0)
    save_deepspeed_states(work / 'iter_2000.pth', 'global_step2000', 2000.0)
    with pytest.raises(ValueError, match=r'holds 2 DeepSpeed checkpoints \(iter_1500\.pth/global_step1500, '
                                         r'iter_2000\.pth/global_step2000\) and no latest / last_checkpoint'):
        load_trained_state(str(work))
    (work / 'last_checkpoint').write_text(str(work / 'iter_2000.pth'))  # what mmengine writes into the work dir
    assert load_trained_state(str(work))['mlp1.1.weight'][0].item() == 2000.0
    # One checkpoint folder with two tags: DeepSpeed's `latest` names the one to use.
    tags = tmp_path / 'iter_9.pth'
    save_deepspeed_states(tags, 'global_step8', 8.0)
    save_deepspeed_states(tags, 'global_step9', 9.0)
    (tags / 'latest').write_text('global_step9')
    assert load_trained_state(str(tags))['mlp1.1.weight'][0].item() == 9.0


def test_checkpoint_from_another_config_is_refused(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint('qwen2')
    lora_model = InternVL_V1_5(base, torch_dtype='float32', llm_lora=dict(r=8, lora_alpha=16))
    _, ckpt = train_and_save(lora_model, str(tmp_path), steps=1)
    full_config = write_config(str(tmp_path), base)
    out = str(tmp_path / 'never')
    with pytest.raises(ValueError) as error:
        convert_checkpoint(full_config, ckpt, out)
    assert str(error.value) == (f'{ckpt} (loaded for {full_config}): the checkpoint holds LoRA adapters, but the '
                                'config trains without LoRA: a LoRA run and a full fine-tune were mixed up; give the '
                                "config the run was trained with (the work dir's copy)")
    assert not os.path.exists(out)
    # The same LoRA config with another rank: the keys match, a shape does not.
    other_rank = write_config(str(tmp_path), base, llm_lora='dict(r=4, lora_alpha=8)')
    with pytest.raises(ValueError, match=r'lora_A.* has shape \(8, 64\), the model built by the config has \(4, 64\)'):
        convert_checkpoint(other_rank, ckpt, out)


def test_refuses_the_base_folder_and_non_empty_folders(tiny_checkpoint, tmp_path):
    base, model, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    with pytest.raises(ValueError, match='it is the base model folder'):
        convert_checkpoint(config, ckpt, base, overwrite=True)
    occupied = tmp_path / 'occupied'
    occupied.mkdir()
    (occupied / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='exists and is not empty; pass --overwrite'):
        convert_checkpoint(config, ckpt, str(occupied))
    assert (occupied / 'keep.txt').read_text() == 'precious'
    convert_checkpoint(config, ckpt, str(occupied), overwrite=True)
    assert not (occupied / 'keep.txt').exists() and (occupied / 'config.json').exists()


@pytest.mark.parametrize('family', ['qwen2', 'internlm2'])
def test_the_tokenizer_files_are_the_base_checkpoints_byte_for_byte(tiny_checkpoint, tmp_path, family):
    """Saved again by transformers 5 they would say TokenizersBackend, which the official toolchain's transformers 4
    cannot load; fine-tuning changes no token, so the base's files go as they are."""
    base, _, ckpt, config = mlp_only_run(tiny_checkpoint(family), tmp_path)
    convert_checkpoint(config, ckpt, str(tmp_path / 'out'))
    names = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(base, name))]
    assert 'tokenizer_config.json' in names and len(names) >= 2
    for name in names:
        assert open(os.path.join(tmp_path / 'out', name), 'rb').read() == open(os.path.join(base, name), 'rb').read()


@pytest.mark.parametrize('alias,official', [('internlm2_chat', 'internlm2-chat'), ('hermes2', 'Hermes-2'),
                                            ('phi3_chat', 'phi3-chat'), ('internvl2.5', 'internvl2_5')])
def test_config_json_gets_the_official_template_name(tiny_checkpoint, tmp_path, alias, official):
    base = tiny_checkpoint('qwen2')
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True)
    _, ckpt = train_and_save(model, str(tmp_path), steps=1)
    config = write_config(str(tmp_path), base, template=alias, freeze_llm=True, freeze_visual_encoder=True)
    convert_checkpoint(config, ckpt, str(tmp_path / 'out'))
    assert json.load(open(tmp_path / 'out' / 'config.json'))['template'] == official


def test_refuses_outputs_that_contain_or_lie_inside_what_it_reads(tiny_checkpoint, tmp_path):
    base = str(tmp_path / 'models' / 'base')
    shutil.copytree(tiny_checkpoint('qwen2'), base)
    work = tmp_path / 'work'
    work.mkdir()
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True)
    _, ckpt = train_and_save(model, str(work), steps=1)
    config = write_config(str(work), base, freeze_llm=True, freeze_visual_encoder=True)
    before = sorted(str(p) for p in tmp_path.rglob('*'))
    for out, expected in [(str(work), 'contains the checkpoint'), (str(tmp_path / 'models'), 'contains the base model'),
                          (os.path.join(base, 'converted'), 'is inside the base model folder'),
                          (str(tmp_path), 'contains the base model folder')]:
        with pytest.raises(ValueError, match=f'refusing to write into {re.escape(out)}: it {expected}'):
            convert_checkpoint(config, ckpt, out, overwrite=True)
    assert sorted(str(p) for p in tmp_path.rglob('*')) == before


def test_a_folder_filled_by_another_writer_meanwhile_is_never_replaced(tiny_checkpoint, tmp_path, monkeypatch):
    base, model, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    out = tmp_path / 'out'

    def other_writer_finishes_first(base_dir, folder):
        out.mkdir()
        (out / 'config.json').write_text('{"first": true}')
        return []

    monkeypatch.setattr(export, 'copy_remote_code', other_writer_finishes_first)
    with pytest.raises(FileExistsError, match='was filled by another process while this conversion ran'):
        convert_checkpoint(config, ckpt, str(out))
    assert (out / 'config.json').read_text() == '{"first": true}' and os.listdir(out) == ['config.json']
    assert not [name for name in os.listdir(tmp_path) if name.startswith('.')]


def test_temporaries_of_a_killed_conversion_are_removed_and_nothing_else(tiny_checkpoint, tmp_path):
    base, model, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    finished = subprocess.Popen(['true'])
    finished.wait()
    host = socket.gethostname()
    owners = {'.out.tmp-killed': f'{host} {finished.pid}', '.out.tmp-running': f'{host} {os.getpid()}',
              '.out.tmp-elsewhere': f'another-host {finished.pid}', '.out.tmp-not-ours': None}
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / 'model.safetensors').write_bytes(b'0' * 1000)
        if owner:
            (tmp_path / name / '.internvl-owner').write_text(owner + '\n')
    convert_checkpoint(config, ckpt, str(tmp_path / 'out'))
    left = sorted(name for name in os.listdir(tmp_path) if name.startswith('.'))
    assert left == ['.out.tmp-elsewhere', '.out.tmp-not-ours', '.out.tmp-running']
    assert '.internvl-owner' not in os.listdir(tmp_path / 'out')


def test_a_crash_while_writing_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    base, model, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    existing = tmp_path / 'existing'
    existing.mkdir()
    (existing / 'config.json').write_text('{"old": true}')

    def crash(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(export, 'copy_remote_code', crash)
    with pytest.raises(OSError, match='disk full'):
        convert_checkpoint(config, ckpt, str(existing), overwrite=True)
    assert (existing / 'config.json').read_text() == '{"old": true}'
    assert sorted(os.listdir(tmp_path)) == sorted(['config.py', 'iter_1.pth', 'existing'])


def test_cli_reports_one_error_line(tmp_path, tiny_checkpoint):
    config = write_config(str(tmp_path), tiny_checkpoint('qwen2'))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_to_official.py'), config,
                             str(tmp_path / 'iter_9.pth'), str(tmp_path / 'out')], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"convert_to_official: error: checkpoint {tmp_path / 'iter_9.pth'} does not exist"


def convert_cli(config, checkpoint, out):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_to_official.py'), str(config),
                           str(checkpoint), str(out)], capture_output=True, text=True, timeout=300)


def test_cli_one_line_for_empty_truncated_and_foreign_files(tmp_path, tiny_checkpoint):
    base, _, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    empty, cut = tmp_path / 'iter_5.pth', tmp_path / 'iter_6.pth'
    empty.write_bytes(b'')
    cut.write_bytes(open(ckpt, 'rb').read()[:2000])
    script = tmp_path / 'train_script.py'
    script.write_text('print("not a config")\n')
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(type=\n')
    cases = [(config, empty, f'{empty}: the file is empty; expected a checkpoint'),
             (config, cut, f'{cut}: not a readable checkpoint ('),
             (script, ckpt, f'{script}: not a training config (it defines no model dict)'),
             (broken, ckpt, f'{broken}: cannot be read as a training config (')]
    for config_file, checkpoint, expected in cases:
        result = convert_cli(config_file, checkpoint, tmp_path / 'out')
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and lines[-1].startswith(f'convert_to_official: error: {expected}'), \
            result.stderr[-1500:]
        assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


def test_cli_one_line_when_the_output_cannot_be_written(tmp_path, tiny_checkpoint):
    """An output under a file stands in for a read-only or full disk (root may write anywhere): the OS error is
    one line, and nothing is left behind."""
    _, _, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    result = convert_cli(config, ckpt, blocker / 'out')
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-1500:]
    assert lines[-1] == f'convert_to_official: error: cannot write {blocker / "out"}: File exists ({blocker})'
    assert sorted(os.listdir(tmp_path)) == ['a-file', 'config.py', 'iter_1.pth']


class _RunsCode:
    """What a crafted checkpoint holds: unpickling it calls a function of the file's choosing."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_crafted_checkpoint_runs_no_code_in_the_converter_or_at_model_build(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint('qwen2')
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True)
    _, ckpt = train_and_save(model, str(tmp_path), steps=1)
    marker = tmp_path / 'code-ran'
    crafted = str(tmp_path / 'iter_2.pth')
    state = torch.load(ckpt, weights_only=True)['state_dict']
    torch.save({'state_dict': state, 'message_hub': _RunsCode(marker), 'meta': {'iter': 2}}, crafted)
    config = write_config(str(tmp_path), base, freeze_llm=True, freeze_visual_encoder=True)
    convert_checkpoint(config, crafted, str(tmp_path / 'out'))
    InternVL_V1_5(base, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True, pretrained_pth=crafted)
    assert not marker.exists()
    poisoned = str(tmp_path / 'iter_3.pth')
    torch.save({'state_dict': {**state, 'mlp1.1.weight': _RunsCode(marker)}}, poisoned)
    with pytest.raises(ValueError, match=r"iter_3.pth: state_dict entries \['mlp1.1.weight'\] are objects the file "
                                         'builds with code, not tensors'):
        load_trained_state(poisoned)
    assert not marker.exists()


def test_a_base_model_it_cannot_find_names_the_config_line_to_change(tmp_path):
    """The converter takes the base model from the config, so the fix is that config's model.model_path."""
    config = write_config(str(tmp_path), 'OpenGVLab/InternVL2_5-1B')
    checkpoint = str(tmp_path / 'iter_1.pth')
    torch.save({'state_dict': {'mlp1.1.weight': torch.zeros(2)}}, checkpoint)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'hub'))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_to_official.py'), config, checkpoint,
                             str(tmp_path / 'out')], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("convert_to_official: error: model_path 'OpenGVLab/InternVL2_5-1B' is neither a local "
                           'folder nor in the Hugging Face cache')
    assert line.endswith(f'(the converter reads the base model from model.model_path in {config}: set it to the '
                         'local folder there)')


def test_the_converter_where_xtuners_guide_looks_takes_its_three_arguments_and_shows_progress(tiny_checkpoint,
                                                                                              tmp_path):
    """`python configs/v1_5/convert_to_official.py CONFIG PTH SAVE_PATH`, as XTuner's InternVL README says (its own
    script of that name fails on this plugin's model)."""
    base, model, ckpt, config = mlp_only_run(tiny_checkpoint('qwen2'), tmp_path)
    out = tmp_path / 'official'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'configs', 'v1_5', 'convert_to_official.py'), config,
                             ckpt, str(out), '--dtype', 'float32'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if 'real_accelerator' not in line]  # deepspeed's import
    assert lines == [f'reading the trained weights of {ckpt}',
                     f'building the model of {config} from {base}',
                     f'loaded {len(load_trained_state(ckpt))} trained tensors',
                     f'writing the official layout to {out}',
                     f'wrote official checkpoint to {out}']
    converted = InternVL_V1_5(str(out), torch_dtype='float32')
    assert torch.equal(converted.model.mlp1[1].weight, model.model.mlp1[1].weight)
