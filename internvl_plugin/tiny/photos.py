"""Real photographs shipped with scikit-image and matplotlib (both in xtuner's dependency tree), written as JPEGs
at the sizes and aspect ratios training data has, for the tests and benchmarks that need real image content."""
import os
from typing import List, Optional, Sequence, Tuple

from PIL import Image

SKIMAGE_PHOTOS = ['astronaut.png', 'coffee.png', 'chelsea.png', 'motorcycle_left.png', 'hubble_deep_field.jpg',
                  'retina.jpg', 'rocket.jpg']
# None: the photo's own size; then a 12 MP phone photo both ways, full HD, a 3:1 panorama and 800x600.
PHOTO_SIZES: List[Optional[Tuple[int, int]]] = [None, (4032, 3024), (3024, 4032), (1920, 1080), (3000, 1000),
                                                (800, 600)]


def photo_paths() -> List[str]:
    """The shipped photographs (PNG and JPEG, 451x300 to 1411x1411)."""
    import matplotlib
    import skimage
    skimage_data = os.path.join(os.path.dirname(skimage.__file__), 'data')
    return ([os.path.join(skimage_data, name) for name in SKIMAGE_PHOTOS]
            + [os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')])


def write_photos(folder: str, sizes: Sequence[Optional[Tuple[int, int]]] = tuple(PHOTO_SIZES),
                 photos: Optional[Sequence[str]] = None, quality: int = 90) -> List[str]:
    """Every photo at every size (resized bicubic) as a JPEG in `folder`; returns the file names, photo-major."""
    names = []
    for path in photos or photo_paths():
        photo = Image.open(path).convert('RGB')
        stem = os.path.splitext(os.path.basename(path))[0]
        for size in sizes:
            image = photo if size is None else photo.resize(size, Image.BICUBIC)
            name = f'{stem}_{image.width}x{image.height}.jpg'
            image.save(os.path.join(folder, name), quality=quality)
            names.append(name)
    return names
