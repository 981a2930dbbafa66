"""Writing videos of frames, atomically (a temporary name, then a rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".gif")


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 20.0) -> Path:
    """Write uint8 (H, W, 3) frames as ``.mp4`` (H.264 through imageio-ffmpeg) or ``.gif``.

    The file appears under its final name only once complete, so a crash never leaves
    a truncated video where a good one is expected.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video path {str(path)!r} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            imageio.mimsave(tmp_name, list(frames), duration=1000.0 / fps, loop=0)
        else:
            # H.264 wants even sizes; macro_block_size=1 keeps small frames unscaled.
            with imageio.get_writer(tmp_name, fps=fps, codec="libx264", macro_block_size=1, quality=7) as writer:
                for frame in frames:
                    writer.append_data(_even(frame))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes it private; a video is not
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    return frame[: height - height % 2, : width - width % 2]
