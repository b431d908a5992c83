"""Dynamic tiling: grids worked out by hand from the official rule, tile order, thumbnail, normalisation, and the
fast pixel path against the exact one on photos."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from internvl_plugin.dataset.image import (candidate_grids, choose_grid, count_tiles, decode, dynamic_tiles,
                                           jpeg_recompress, pixels_of)
from internvl_plugin.tiny import photo_paths, write_photos

# (width, height, min tiles, max tiles) -> (cols, rows); comments give the reasoning at 448 px tiles.
GRIDS = [
    ((448, 448, 1, 12), (1, 1)),     # ratio 1 ties with 2x2, 3x3; 448^2 is not > half of 4 tiles
    ((600, 600, 1, 6), (1, 1)),      # 360000 <= 0.5 * 448^2 * 4 = 401408: stays 1x1
    ((800, 800, 1, 6), (2, 2)),      # 640000 > 401408: the tie goes to 2x2; 3x3 is over budget
    ((1000, 1000, 1, 12), (3, 3)),   # 1e6 > 0.5 * 448^2 * 9 = 903168: on to 3x3
    ((1344, 448, 1, 6), (3, 1)),     # ratio 3 exactly
    ((448, 1792, 1, 12), (1, 4)),    # ratio 1/4 exactly
    ((672, 448, 1, 6), (3, 2)),      # ratio 1.5: 3x2 is exact, even though it upsamples
    ((672, 448, 1, 2), (2, 1)),      # 1x1 and 2x1 are equally far from 1.5; 301056 > 200704 takes 2x1
    ((150, 100, 1, 2), (1, 1)),      # the same tie for a small image keeps 1x1
    ((448, 448, 4, 6), (2, 2)),      # min_dynamic_patch 4 leaves 2x2 as the square grid
    ((1920, 1080, 1, 12), (4, 2)),   # 16:9: 2x1 and 4x2 (ratio 2) are closest; a 2 MP photo takes the larger
    ((1080, 1920, 1, 6), (1, 2)),    # portrait 9:16: 1x2 (0.5) beats 2x3 (0.667); 2x4 is over budget
]


@pytest.mark.parametrize('size,grid', GRIDS, ids=[f'{w}x{h}-{lo}-{hi}' for (w, h, lo, hi), _ in GRIDS])
def test_grid_choice_matches_the_official_rule(size, grid):
    width, height, min_tiles, max_tiles = size
    assert choose_grid(width, height, min_tiles, max_tiles, 448) == grid


def test_candidates_are_ordered_by_tile_count_and_respect_the_budget():
    grids = candidate_grids(2, 6)
    counts = [c * r for c, r in grids]
    assert counts == sorted(counts) and min(counts) == 2 and max(counts) == 6
    assert set(grids) == {(c, r) for c in range(1, 7) for r in range(1, 7) if 2 <= c * r <= 6}


def _gradient(width, height):
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def _hwc(tile: torch.Tensor) -> np.ndarray:
    return tile.permute(1, 2, 0).numpy()


def test_exact_tiles_are_cut_row_by_row_from_the_pil_bicubic_resize_and_end_with_a_thumbnail():
    image = _gradient(1000, 700)
    cols, rows = choose_grid(1000, 700, 1, 6, 448)
    assert (cols, rows) == (3, 2)
    tiles = dynamic_tiles(image, 1, 6, 448, use_thumbnail=True, exact=True)
    assert tiles.shape == (7, 3, 448, 448) and tiles.dtype == torch.uint8
    resized = np.asarray(image.resize((3 * 448, 2 * 448), Image.BICUBIC))
    assert np.array_equal(_hwc(tiles[3]), resized[448:896, 0:448])    # second row, first column
    assert np.array_equal(_hwc(tiles[2]), resized[0:448, 896:1344])
    assert np.array_equal(_hwc(tiles[-1]), np.asarray(image.resize((448, 448), Image.BICUBIC)))
    assert len(dynamic_tiles(image, 1, 6, 448, use_thumbnail=False)) == 6


def test_fast_tiles_stay_within_the_stated_tolerance_of_the_official_ones_on_photos(tmp_path):
    """Torch's uint8 bicubic and the draft decode against a full decode + PIL resize (image.py states the bound)."""
    chosen = [p for p in photo_paths() if any(name in p for name in ('hubble', 'grace_hopper', 'coffee'))]
    names = write_photos(str(tmp_path), sizes=[None, (4032, 3024), (1920, 1080), (3000, 1000)], photos=chosen)
    means, far = [], []
    for name in names:
        for budget in (1, 6, 12):
            exact = dynamic_tiles(Image.open(tmp_path / name), 1, budget, 448, True, exact=True)
            fast = dynamic_tiles(Image.open(tmp_path / name), 1, budget, 448, True)
            assert fast.shape == exact.shape and fast.dtype == torch.uint8
            difference = (fast.int() - exact.int()).abs().float()
            means.append(difference.mean().item())
            far.append((difference > 2).float().mean().item())
    assert max(means) < 0.25 and max(far) <= 0.001, (max(means), max(far))
    assert max(means) > 0   # a different computation; equality everywhere would mean it is not in use


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_twice_the_grid(tmp_path):
    write_photos(str(tmp_path), sizes=[(4032, 3024)], photos=[photo_paths()[0]])
    path = tmp_path / 'astronaut_4032x3024.jpg'
    assert decode(Image.open(path), (448, 448), exact=False).size == (2016, 1512)   # 1/2 scale: 1/4 is < 896
    assert decode(Image.open(path), (448, 448), exact=True).size == (4032, 3024)
    assert decode(Image.open(path), (1792, 1344), exact=False).size == (4032, 3024)


def test_single_tile_images_get_no_thumbnail():
    assert len(dynamic_tiles(_gradient(448, 448), 1, 12, 448, use_thumbnail=True)) == 1


def test_counting_tiles_from_the_size_agrees_with_tiling():
    rng = random.Random(0)
    for _ in range(40):
        width, height = rng.randint(20, 2400), rng.randint(20, 2400)
        budget = rng.choice([1, 4, 6, 12])
        tiles = dynamic_tiles(Image.new('RGB', (width, height)), 1, budget, 448, use_thumbnail=True)
        assert count_tiles(width, height, 1, budget, 448, use_thumbnail=True) == len(tiles), (width, height, budget)


def test_uint8_tiles_normalised_by_the_model_equal_the_official_transform(tiny_checkpoint):
    from torchvision import transforms as T

    from internvl_plugin import InternVL_V1_5
    from internvl_plugin.model.modeling.internvl_chat import IMAGENET_MEAN, IMAGENET_STD
    tile = _gradient(448, 448)
    official = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(tile)
    uint8 = pixels_of(tile)[None]
    assert uint8.dtype == torch.uint8 and uint8.shape == (1, 3, 448, 448)
    model = InternVL_V1_5(tiny_checkpoint(), torch_dtype='float32', use_activation_checkpointing=False)
    assert torch.allclose(model.model.normalize(uint8)[0], official, atol=1e-6)


def test_jpeg_recompression_changes_pixels_a_little_and_keeps_the_size():
    tile = pixels_of(_gradient(448, 448))
    out = jpeg_recompress(tile, random.Random(0))
    assert out.shape == tile.shape and out.dtype == torch.uint8
    difference = (out.int() - tile.int()).abs().float()
    assert 0 < difference.mean() < 4
