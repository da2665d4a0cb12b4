"""Video helpers built on a real ``ffmpeg`` binary: trim a clip, count frames, sample frames.

The binary is ``ffmpeg`` on ``PATH`` when there is one (Debian: ``apt-get install ffmpeg``),
else the static build shipped in the ``imageio-ffmpeg`` wheel from PyPI. Every writer is
idempotent (finished outputs are kept) and atomic (a clip or a frame folder appears under its
final name only when complete), so an interrupted preparation resumes without leaving anything
half-written that looks finished.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from biobench.atomic import atomic_directory, atomic_file


class VideoError(RuntimeError):
    """ffmpeg failed or was not found; the message names the file and what to do."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``ffmpeg`` on PATH, else imageio-ffmpeg's bundled build."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    raise VideoError("ffmpeg was not found. Install it with `pip install imageio-ffmpeg` "
                     "or `apt-get install ffmpeg`.")


def run_ffmpeg(args: Sequence[str], *, what: str) -> subprocess.CompletedProcess:
    """Run ffmpeg with ``args``; on failure raise ``VideoError`` naming ``what`` and ffmpeg's
    last lines of output."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise VideoError(f"ffmpeg failed on {what} (exit {proc.returncode}):\n{tail}")
    return proc


def count_frames(video: Path) -> int:
    """Number of decodable video frames (decodes the stream once; exact, not from metadata)."""
    proc = run_ffmpeg(["-i", video, "-map", "0:v:0", "-f", "null", "-"], what=str(video))
    counts = re.findall(r"frame=\s*(\d+)", proc.stderr)
    if not counts:
        raise VideoError(f"could not count the frames of {video}: no video stream decoded")
    return int(counts[-1])


def trim_clip(source: Path, dest: Path, start_s: float, end_s: float) -> Path:
    """Cut ``[start_s, end_s)`` of ``source`` into ``dest`` (H.264, CRF 23, no audio).

    Skips the work when ``dest`` exists: it can only exist complete, because the clip is
    encoded under a temporary name and renamed at the end.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists():
        return dest
    if not end_s > start_s:
        raise ValueError(f"empty segment [{start_s}, {end_s}) for {dest.name} from {source}")
    if not source.exists():
        raise VideoError(f"source video {source} is missing; cannot make {dest.name}")
    with atomic_file(dest, suffix=".tmp.mp4") as tmp:
        run_ffmpeg(["-y", "-ss", f"{start_s:.3f}", "-i", source, "-t", f"{end_s - start_s:.3f}",
                    "-map", "0:v:0", "-an", "-c:v", "libx264", "-crf", "23", "-preset", "veryfast",
                    # x264 with 4:2:0 chroma needs even sides
                    "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", "-f", "mp4", tmp],
                   what=f"{source} -> {dest.name}")
    return dest


def uniform_frame_indices(n_available: int, n_wanted: int) -> list[int]:
    """``n_wanted`` frame indices spread evenly over ``n_available`` frames: the centre frame
    of each of ``n_wanted`` equal slices. Indices repeat only when the clip is shorter than
    ``n_wanted`` frames."""
    if n_available < 1:
        raise ValueError("a clip without frames cannot be sampled")
    return [min(n_available - 1, int((i + 0.5) * n_available / n_wanted)) for i in range(n_wanted)]


def frame_names(n_frames: int) -> list[str]:
    """``frame_01.jpg`` ... (two digits, or more when ``n_frames`` > 99)."""
    width = max(2, len(str(n_frames)))
    return [f"frame_{i:0{width}d}.jpg" for i in range(1, n_frames + 1)]


def sample_frames(video: Path, dest_dir: Path, n_frames: int = 32) -> Path:
    """Write ``n_frames`` evenly spaced JPEG frames of ``video`` to ``dest_dir/frame_01.jpg``...

    Idempotent and atomic: a finished folder is kept as is; otherwise the frames are written to
    a temporary folder that is renamed to ``dest_dir`` only when every frame is there.
    """
    video, dest_dir = Path(video), Path(dest_dir)
    names = frame_names(n_frames)
    if dest_dir.is_dir() and all((dest_dir / n).exists() for n in names):
        return dest_dir
    indices = uniform_frame_indices(count_frames(video), n_frames)
    unique = sorted(set(indices))
    with atomic_directory(dest_dir) as tmp:
        # select=eq(n,i1)+eq(n,i2)+... keeps exactly those decoded frames, in order
        select = "select=" + "+".join(f"eq(n\\,{i})" for i in unique)
        run_ffmpeg(["-i", video, "-map", "0:v:0", "-vf", select, "-fps_mode", "vfr",
                    "-q:v", "2", tmp / "u_%05d.jpg"], what=f"frames of {video}")
        written = sorted(tmp.glob("u_*.jpg"))
        if len(written) != len(unique):
            raise VideoError(f"expected {len(unique)} frames from {video}, ffmpeg wrote "
                             f"{len(written)}; the file may be truncated")
        by_index = dict(zip(unique, written))
        for name, index in zip(names, indices):
            shutil.copyfile(by_index[index], tmp / name)  # copies: a short clip repeats frames
        for f in written:
            f.unlink()
    return dest_dir
