"""Talk to a checkpoint (original or converted) with the same template and tiles the training data uses."""
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image

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
    def ask(self, question: str, max_new_tokens: int = 512) -> str:
        ids, turns = self.prompt(question)
        end_id = self.tokenizer.convert_tokens_to_ids(self.template.end)
        pixels = self.pixel_values.to(self.device) if self.pixel_values is not None else None
        out = self.model.model.generate(torch.tensor([ids], device=self.device), pixels,
                                        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_id,
                                        pad_token_id=self.tokenizer.pad_token_id)
        answer = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        self.turns = turns + [Turn('gpt', answer)]
        self.unplaced_images = 0
        return answer
