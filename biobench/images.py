"""Open one ``ImageRef`` as an RGB PIL image: the single place where image files are decoded.

Every backbone transform expects 3-channel RGB. Grayscale (plankton, microscopy) is repeated
over the channels; transparent images (Tux Paint stamps, cut-outs) are composited onto white,
so the background does not turn black; 16-bit images are scaled down to 8 bits. A file that
cannot be decoded raises ``UnreadableImage`` naming it, which ``extract_features(...,
skip_unreadable=True)`` can catch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from biobench.tasks.base import ImageRef

# PIL modes that carry transparency.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class UnreadableImage(OSError):
    """An image file is missing, truncated, corrupt, or its crop box is empty."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):
        # OSError pickles through ``args``; keep both fields across worker processes.
        return type(self), (self.path, self.reason)


def load_image(ref: ImageRef) -> Image.Image:
    """Decode ``ref.path`` to RGB and crop ``ref.box`` (left, top, right, bottom) when set."""
    path = Path(ref.path)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so truncated files fail here and not later
            image = to_rgb(opened)
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(path, f"{type(exc).__name__}: {exc}") from exc
    if ref.box is not None:
        image = _crop(image, ref.box, path)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    # PIL's own I/F -> L conversion clips at 255, which turns 16-bit microscopy white.
    values = values.astype(np.float64)
    if values.max(initial=0) > 255:
        high = 65535.0 if values.max() <= 65535 and values.min() >= 0 else values.max()
        low = 0.0 if high == 65535.0 else values.min()
        values = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _crop(image: Image.Image, box: tuple[int, int, int, int], path: Path) -> Image.Image:
    left, top, right, bottom = (int(round(v)) for v in box)
    # Annotations often overhang the border by a pixel or two: clip rather than pad black.
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right <= left or bottom <= top:
        raise UnreadableImage(
            path, f"crop box {tuple(box)} is empty inside the {image.width}x{image.height} image"
        )
    return image.crop((left, top, right, bottom))
