"""Talk to a checkpoint (original or converted) with the same template and tiles the training data uses."""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from transformers import TextStreamer

from .dataset.image import ImageSettings
from .dataset.templates import IMAGE_PLACEHOLDER, TemplateEncoder, Turn, get_template
from .model.internvl import InternVL_V1_5


class ChatSession:
    """A conversation about some images: each answer sees the images and the earlier turns."""

    def __init__(self, model_path: str, device: Optional[str] = None, torch_dtype: Optional[str] = None,
                 trust_remote_code: bool = False):
        self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        dtype = torch_dtype or ('bfloat16' if self.device.startswith('cuda') else 'float32')
        self.model = InternVL_V1_5(model_path, torch_dtype=dtype, use_activation_checkpointing=False,
                                   trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval()
        self.tokenizer = self.model.tokenizer
        self.template = get_template(self.model.config.get('template') or 'internvl2_5')
        self.encoder = TemplateEncoder(self.template, self.tokenizer)
        self.image = ImageSettings.from_checkpoint(self.model.config)
        self.turns: List[Turn] = []
        self.pixel_values: Optional[torch.Tensor] = None
        self.image_tokens: List[int] = []
        self.unplaced_images = 0   # shown images whose placeholders the next question gets

    def show(self, images: Sequence[Image.Image]) -> None:
        """Tiles the images as training does (a JPEG not loaded yet is decoded at the scale its tiles need);
        they go before the next question."""
        tiles = []
        limits = self.image.limits(len(images))
        for image in images:
            tiles.append(self.image.tile(image, limits))
            self.image_tokens.append(len(tiles[-1]) * self.image.tokens_per_tile)
        shown = torch.cat(tiles)
        self.pixel_values = shown if self.pixel_values is None else torch.cat([self.pixel_values, shown])
        self.unplaced_images += len(images)

    def prompt(self, question: str) -> Tuple[List[int], List[Turn]]:
        """The token ids to generate from, and the turns they hold."""
        if self.unplaced_images and IMAGE_PLACEHOLDER not in question:
            question = (IMAGE_PLACEHOLDER + '\n') * self.unplaced_images + question
        turns = self.turns + [Turn('human', question)]
        return self.encoder.encode(None, turns, self.image_tokens, add_generation_prompt=True).input_ids, turns

    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int = 1024, on_text: Optional[Callable[[str], None]] = None) -> str:
        """The answer (greedy, up to the template's end token). `on_text` hears it piece by piece while it is
        generated, so a long answer shows as it comes."""
        ids, turns = self.prompt(question)
        end_id = self.tokenizer.convert_tokens_to_ids(self.encoder.stop_token)
        pixels = self.pixel_values.to(self.device) if self.pixel_values is not None else None
        streamer = _TextPieces(self.tokenizer, on_text, self.encoder) if on_text else None
        out = self.model.model.generate(torch.tensor([ids], device=self.device), pixels,
                                        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_id,
                                        pad_token_id=self.tokenizer.pad_token_id, streamer=streamer)
        answer = self.encoder.answer_text(out[0].tolist())
        self.turns = turns + [Turn('gpt', answer)]
        self.unplaced_images = 0
        return answer


class _TextPieces(TextStreamer):
    """transformers' streamer, giving each decoded piece of text to a callback instead of printing it. For a
    harmony template (`final_channel`) only the final channel's message is given, as answer_text returns it: the
    analysis channel, headers and end tokens are held back."""

    def __init__(self, tokenizer, on_text: Callable[[str], None], encoder: TemplateEncoder) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=not encoder.template.final_channel)
        self.on_text = on_text
        self.encoder = encoder
        self.text, self.shown = '', 0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.encoder.template.final_channel:
            if text:
                self.on_text(text)
            return
        self.text += text
        if self.encoder.template.final_channel not in self.text:
            return
        answer = self.encoder.final_message(self.text).lstrip()
        if not stream_end:   # a piece that may be the start of an end token waits for the next one
            ends = self.encoder.end_tokens()
            held = max((n for end in ends for n in range(1, len(end)) if answer.endswith(end[:n])), default=0)
            answer = answer[:len(answer) - held]
        if len(answer) > self.shown:
            self.on_text(answer[self.shown:])
            self.shown = len(answer)
