"""Video samples: segment-based frame sampling, decoding with OpenCV, or frames stored as image files."""
import os
import random
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image

FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def sample_frame_indices(n_frames: int, total: int, rng: random.Random) -> List[int]:
    """One random frame from each of `n_frames` equal segments of the clip (all frames if it has fewer)."""
    n_frames = min(n_frames, total)
    bounds = [i * total // n_frames for i in range(n_frames + 1)]
    return [rng.randrange(start, end) for start, end in zip(bounds, bounds[1:])]


def frame_files(folder: str) -> List[str]:
    """The frame images of a folder, in name order."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise ValueError(f'the frame folder {folder} has no {"/".join(FRAME_EXTENSIONS)} files')
    return [os.path.join(folder, name) for name in names]


class VideoFile:
    """A decodable video (mp4, avi, mkv, webm ... whatever OpenCV's FFmpeg reads), optionally a clip of it."""

    def __init__(self, path: str, clip: Optional[Sequence[float]] = None):
        import cv2
        self.path = path
        self._capture = cv2.VideoCapture(path)
        if not self._capture.isOpened():
            raise ValueError(f'cannot open video {path}')
        total = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = self._capture.get(cv2.CAP_PROP_FPS) or 1.0
        self.first = 0
        if clip is not None:
            start, end = clip
            self.first = min(int(start * fps), total)
            total = min(int(end * fps), total)
        self.total = total - self.first
        if self.total <= 0:
            raise ValueError(f'video {path} has no frames' + (f' in clip {list(clip)}' if clip else ''))

    def frames(self, indices: Sequence[int]) -> List[Image.Image]:
        import cv2
        frames = []
        try:
            for index in indices:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, self.first + index)
                ok, frame = self._capture.read()
                if not ok:
                    raise ValueError(f'cannot decode frame {self.first + index} of video {self.path}')
                frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
        finally:
            self._capture.release()
        return frames


ReadFrames = Callable[[Sequence[int]], List[Image.Image]]


def open_video(path_or_frames: Sequence[str], clip: Optional[Sequence[float]]) -> Tuple[int, ReadFrames]:
    """(frame count, frames(indices)) for a video file, a folder of frames or a list of frame files."""
    if len(path_or_frames) == 1 and os.path.isfile(path_or_frames[0]):
        video = VideoFile(path_or_frames[0], clip)
        return video.total, video.frames
    files = frame_files(path_or_frames[0]) if len(path_or_frames) == 1 else list(path_or_frames)
    return len(files), (lambda indices: [Image.open(files[i]).convert('RGB') for i in indices])
