"""Dynamic tiling as InternVL's `dynamic_preprocess`: the same grid (tie rule included), tiles and thumbnail.

Tiles leave here as uint8 (tiles, 3, S, S); the model normalises them with the ImageNet mean and std on its
device, which is the official ToTensor + Normalize arithmetic, done where it is cheap.
"""
import io
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

JPEG_QUALITIES = range(75, 101)
TileLimits = Tuple[int, int, bool]   # min tiles, max tiles, thumbnail


def candidate_grids(min_tiles: int, max_tiles: int) -> List[Tuple[int, int]]:
    """(cols, rows) with min <= cols*rows <= max, ordered by tile count as the official code orders them.

    Grids with equal counts keep the order of iterating a Python set of the tuples, which is what the official
    code sorts from; it decides between mirrored grids that are equally close to the image's aspect ratio.
    """
    grids = {(cols, rows) for n in range(min_tiles, max_tiles + 1)
             for cols in range(1, n + 1) for rows in range(1, n + 1) if min_tiles <= cols * rows <= max_tiles}
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_grid(width: int, height: int, min_tiles: int, max_tiles: int, image_size: int) -> Tuple[int, int]:
    """The grid closest in aspect ratio; on an exact tie the later (larger) grid wins when the image has more
    pixels than half of that grid's."""
    aspect = width / height
    best, best_diff = (1, 1), float('inf')
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def count_tiles(width: int, height: int, min_tiles: int, max_tiles: int, image_size: int,
                use_thumbnail: bool) -> int:
    """How many tiles an image of this size gives, without opening it."""
    cols, rows = choose_grid(width, height, min_tiles, max_tiles, image_size)
    return cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)


def tile_budget(max_dynamic_patch: int, n_images: int) -> int:
    """Each of several images gets an equal share of the sample's tile budget, at least one tile."""
    return max(1, max_dynamic_patch // max(1, n_images))


def dynamic_tiles(image: Image.Image, min_tiles: int, max_tiles: int, image_size: int,
                  use_thumbnail: bool) -> List[Image.Image]:
    """The image resized (bicubic) to the chosen grid and cut row by row, plus a whole-image thumbnail tile."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, image_size)
    resized = image.resize((cols * image_size, rows * image_size), Image.BICUBIC)
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size), Image.BICUBIC))
    return tiles


def jpeg_recompress(tile: Image.Image, rng: random.Random) -> Image.Image:
    """The official training augmentation: a JPEG round trip at a random quality from 75 to 100."""
    buffer = io.BytesIO()
    tile.save(buffer, format='JPEG', quality=rng.choice(JPEG_QUALITIES))
    buffer.seek(0)
    return Image.open(buffer).convert('RGB')


def resize_tile(image: Image.Image, image_size: int) -> Image.Image:
    """A video frame or a fixed-size image: one tile, the whole picture resized (bicubic)."""
    return image.resize((image_size, image_size), Image.BICUBIC)


def tiles_to_tensor(tiles: Sequence[Image.Image]) -> torch.Tensor:
    """RGB tiles -> uint8 (tiles, 3, S, S)."""
    array = np.stack([np.asarray(tile.convert('RGB')) for tile in tiles])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@dataclass
class ImageSettings:
    """How images become tiles and tokens; the checkpoint's config.json gives the defaults."""
    image_size: int = 448
    patch_size: int = 14
    downsample_ratio: float = 0.5
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6

    @property
    def tokens_per_tile(self) -> int:
        return int((self.image_size // self.patch_size) ** 2 * self.downsample_ratio ** 2)

    def limits(self, n_images: int, max_dynamic_patch: Optional[int] = None,
               min_dynamic_patch: Optional[int] = None, use_thumbnail: Optional[bool] = None) -> TileLimits:
        """(min tiles, max tiles, thumbnail) for each of `n_images` images; None arguments take the settings."""
        max_tiles = tile_budget(max_dynamic_patch or self.max_dynamic_patch, n_images)
        min_tiles = min(min_dynamic_patch or self.min_dynamic_patch, max_tiles)
        return min_tiles, max_tiles, self.use_thumbnail if use_thumbnail is None else use_thumbnail

    def count(self, size: Optional[Tuple[int, int]], limits: TileLimits) -> int:
        """Tiles of an image of `size` (width, height) without opening it; no size: the most it can get."""
        min_tiles, max_tiles, thumbnail = limits
        if not self.dynamic_image_size:
            return 1
        if size is None:
            return max_tiles + (1 if thumbnail and max_tiles > 1 else 0)
        return count_tiles(size[0], size[1], min_tiles, max_tiles, self.image_size, thumbnail)

    def tile(self, image: Image.Image, limits: TileLimits) -> List[Image.Image]:
        """An RGB image as its training tiles: dynamic tiles, or one resized tile without dynamic_image_size."""
        if not self.dynamic_image_size:
            return [resize_tile(image, self.image_size)]
        return dynamic_tiles(image, *limits[:2], self.image_size, limits[2])

    @classmethod
    def from_checkpoint(cls, config: Dict[str, Any]) -> 'ImageSettings':
        vision = config.get('vision_config', {})
        defaults = cls()
        return cls(image_size=config.get('force_image_size') or vision.get('image_size', defaults.image_size),
                   patch_size=vision.get('patch_size', defaults.patch_size),
                   downsample_ratio=config.get('downsample_ratio', defaults.downsample_ratio),
                   dynamic_image_size=config.get('dynamic_image_size', defaults.dynamic_image_size),
                   use_thumbnail=config.get('use_thumbnail', defaults.use_thumbnail),
                   min_dynamic_patch=config.get('min_dynamic_patch', defaults.min_dynamic_patch),
                   max_dynamic_patch=config.get('max_dynamic_patch', defaults.max_dynamic_patch))
