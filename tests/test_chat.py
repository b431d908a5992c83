"""tools/chat.py and ChatSession: the prompt is the training prompt, answers come from the model."""
import os
import subprocess
import sys

import torch
from conftest import needs_gpt_oss
from helpers import qa, save_image, write_jsonl

from internvl_plugin import InternVL_V1_5_Dataset
from internvl_plugin.chat import ChatSession
from internvl_plugin.dataset.templates import IGNORE_INDEX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_chat_prompt_equals_the_training_sample_up_to_its_answer(tiny_checkpoint, tmp_path):
    from PIL import Image
    for family in ('qwen2', 'internlm2'):
        image = save_image(tmp_path / 'photo.png', 900, 450)
        data = write_jsonl(tmp_path / 'a.jsonl', [qa('What is it?', 'A cat.', image='photo.png')])
        item = InternVL_V1_5_Dataset(model_path=tiny_checkpoint(family), data_paths=[data])[0]
        answer_start = int((item['labels'] != IGNORE_INDEX).nonzero()[0])
        session = ChatSession(tiny_checkpoint(family), device='cpu')
        session.show([Image.open(image)])
        ids, _ = session.prompt('What is it?')
        assert ids == item['input_ids'][:answer_start].tolist()
        assert session.pixel_values.equal(item['pixel_values'])


@needs_gpt_oss
def test_gpt_oss_chat_prompts_as_training_stops_at_return_and_answers_with_the_final_channel(tiny_checkpoint,
                                                                                            tmp_path):
    data = write_jsonl(tmp_path / 'a.jsonl', [qa('What is it?', 'A cat.')])
    item = InternVL_V1_5_Dataset(model_path=tiny_checkpoint('gpt_oss'), data_paths=[data])[0]
    answer_start = int((item['labels'] != IGNORE_INDEX).nonzero()[0])
    session = ChatSession(tiny_checkpoint('gpt_oss'), device='cpu')
    assert session.prompt('What is it?')[0] == item['input_ids'][:answer_start].tolist()
    generated = ('<|channel|>analysis<|message|>Looks feline.<|end|><|start|>assistant<|channel|>final<|message|>'
                 'A cat.<|return|>')
    calls = []

    def generate(ids, pixels, streamer=None, **kwargs):
        calls.append(kwargs['eos_token_id'])
        out = session.tokenizer(generated, add_special_tokens=False)['input_ids']
        if streamer is not None:   # as transformers' generate feeds it: the prompt, then one token at a time
            streamer.put(ids)
            for token in out:
                streamer.put(torch.tensor([token]))
            streamer.end()
        return torch.tensor([out])

    session.model.model.generate = generate
    assert session.ask('What is it?') == 'A cat.'
    assert calls == [session.tokenizer.convert_tokens_to_ids('<|return|>')]
    assert session.turns[-1].text == 'A cat.'
    pieces = []
    assert session.ask('And now?', on_text=pieces.append) == 'A cat.'
    assert pieces and ''.join(pieces) == 'A cat.'   # streamed: the final channel only, no headers or thinking


def test_follow_up_questions_carry_the_conversation(tiny_checkpoint, tmp_path):
    from PIL import Image
    session = ChatSession(tiny_checkpoint(), device='cpu')
    session.show([Image.open(save_image(tmp_path / 'photo.png', 448, 448))])
    pieces = []
    first = session.ask('What is it?', max_new_tokens=4, on_text=pieces.append)
    assert isinstance(first, str) and [t.role for t in session.turns] == ['human', 'gpt']
    assert pieces and ''.join(pieces).strip() == first  # streamed as it was generated, the same answer
    ids, turns = session.prompt('And the colour?')
    assert len(turns) == 3 and turns[0].text.startswith('<image>\n') and not turns[2].text.startswith('<image>')
    assert ids.count(session.encoder.img_context_id) == 256


def test_chat_tool_answers_a_question(tiny_checkpoint, tmp_path):
    image = save_image(tmp_path / 'photo.png', 448, 448)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'chat.py'), tiny_checkpoint(),
                             '--image', image, '--question', 'What is it?', '--max-new-tokens', '3'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    session = ChatSession(tiny_checkpoint(), device='cpu')
    from PIL import Image
    session.show([Image.open(image)])
    assert result.stdout.splitlines()[-1].strip() == session.ask('What is it?', max_new_tokens=3)
    missing = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'chat.py'), str(tmp_path / 'nowhere'),
                              '--question', 'Hi'], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and 'chat: error:' in missing.stderr and 'nowhere' in missing.stderr


def test_images_shown_later_join_the_earlier_ones(tiny_checkpoint, tmp_path):
    from PIL import Image
    session = ChatSession(tiny_checkpoint(), device='cpu')
    session.show([Image.open(save_image(tmp_path / 'a.png', 448, 448))])
    session.ask('What is it?', max_new_tokens=2)
    session.show([Image.open(save_image(tmp_path / 'b.png', 448, 448, seed=1))])
    ids, turns = session.prompt('And this one?')
    assert session.pixel_values.shape[0] == 2 and turns[2].text.startswith('<image>\n')
    assert ids.count(session.encoder.img_context_id) == 2 * 256


def test_a_native_layout_checkpoint_chats_with_the_prompt_and_answer_of_its_official_twin(tmp_path):
    """What `convert_to_official.py --format hf` writes (and the -HF releases) chats as the official layout does."""
    from PIL import Image

    from internvl_plugin.tiny import build_tiny_checkpoint
    official, native = str(tmp_path / 'official'), str(tmp_path / 'native')
    build_tiny_checkpoint(official, seed=5)
    build_tiny_checkpoint(native, seed=5, layout='hf')
    image = Image.open(save_image(tmp_path / 'photo.png', 900, 450))
    sessions = [ChatSession(folder, device='cpu') for folder in (official, native)]
    for session in sessions:
        session.show([image])
    assert sessions[0].prompt('What is it?')[0] == sessions[1].prompt('What is it?')[0]
    assert sessions[0].pixel_values.equal(sessions[1].pixel_values)
    assert sessions[0].ask('What is it?', max_new_tokens=6) == sessions[1].ask('What is it?', max_new_tokens=6)
