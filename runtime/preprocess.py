"""Image preprocessing from a bundle manifest (Pillow + numpy, no torch).

Mirrors transformers' PIL CLIP image processor: RGB, resize the shortest edge
(keeping aspect), centre crop, rescale, normalise, HWC -> CHW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atp.errors import InputError


def load_image(image):
    """A path, PIL image or ``HxWx3`` uint8 array -> PIL image.

    Raises:
        InputError: missing or unreadable file, or an array of the wrong shape/dtype.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise InputError(f"image array must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
        return Image.fromarray(image[..., :3])
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image {path} does not exist")
        try:
            img = Image.open(path)
            _check_pixels(img.width, img.height, f"image {path}")  # from the header, before decoding anything
            img.load()
            return img
        except Image.DecompressionBombError:
            raise InputError(f"image {path} declares more pixels than Pillow decodes safely (a decompression bomb?)") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {path}: {exc.__class__.__name__}: not a readable image file") from None
    raise InputError(f"unsupported image type {type(image).__name__}; give a path, PIL image or HxWx3 uint8 array")


#: The most pixels an input image or its resized form may have (8192 x 8192): bounded memory for any input.
MAX_PIXELS = 8192 * 8192


def _check_pixels(w: int, h: int, what: str) -> None:
    if w < 1 or h < 1:
        raise InputError(f"{what} is {w}x{h}: it has no pixels")
    if w * h > MAX_PIXELS:
        raise InputError(f"{what} is {w}x{h} = {w * h / 1e6:.0f} MPixels; atp takes at most {MAX_PIXELS / 1e6:.0f} MPixels "
                         "(8192 x 8192): downscale it first")


def _resize_shape(w: int, h: int, size: dict) -> tuple[int, int]:
    if "shortest_edge" in size:
        short, long = (w, h) if w <= h else (h, w)
        new_short = size["shortest_edge"]
        new_long = int(new_short * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    return size["width"], size["height"]


def _rgb(image, spec: dict):
    from PIL import Image

    img = load_image(image)
    if spec.get("convert_rgb", True) and img.mode != "RGB":
        if "A" in img.getbands() or img.info.get("transparency") is not None:  # composite on white, as transformers does
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    return img


def preprocess(image, spec: dict) -> np.ndarray:
    """Image -> ``[1, 3, H, W]`` float32 pixel values per the manifest's ``preprocessing`` (one fixed-size view)."""
    return _view(_rgb(image, spec), spec)


def preprocess_views(image, spec: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Image -> (``[V, 3, H, W]`` float32 views, the image's ``(height, width)``): one view for fixed-size
    preprocessing, base view + tiles for ``preprocessing.anyres`` (:mod:`atp.runtime.anyres`), tiles + global view
    for ``preprocessing.tiling`` (:mod:`atp.runtime.tiling`); for ``preprocessing.dynamic`` (Qwen2.5-VL,
    :mod:`atp.runtime.dynamic`) the one view's ``[P, 3 * temporal * patch * patch]`` patches."""
    img = _rgb(image, spec)
    if spec.get("dynamic"):
        return _dynamic_view(img, spec), (img.height, img.width)
    if spec.get("tiling"):
        from atp.runtime.tiling import TilingSpec, views

        _check_pixels(img.width, img.height, "the image")
        return np.concatenate([_view(v, spec) for v in views(img, TilingSpec.from_dict(spec["tiling"]))]), \
            (img.height, img.width)
    if not spec.get("anyres"):
        return _view(img, spec), (img.height, img.width)
    from atp.runtime.anyres import AnyresSpec, views

    parts = views(img, AnyresSpec.from_dict(spec["anyres"]), spec.get("resample", 3))
    return np.concatenate([_view(v, spec) for v in parts]), (img.height, img.width)


def _view(img, spec: dict) -> np.ndarray:
    from PIL import Image

    _check_pixels(img.width, img.height, "the image")
    if spec.get("resize"):
        new_w, new_h = _resize_shape(img.width, img.height, spec["resize"])
        # an extreme aspect ratio (1 x 100000) would resize to gigapixels before the crop: refuse it
        _check_pixels(new_w, new_h, f"the {img.width}x{img.height} image resized for this model")
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), resample=Image.Resampling(spec.get("resample", 3)))
    arr = np.asarray(img, dtype=np.uint8)
    if spec.get("center_crop"):
        ch, cw = spec["center_crop"]["height"], spec["center_crop"]["width"]
        h, w = arr.shape[:2]
        if h < ch or w < cw:  # pad like transformers does, centred, with zeros
            pad = np.zeros((max(h, ch), max(w, cw), arr.shape[2]), dtype=arr.dtype)
            top, left = (pad.shape[0] - h) // 2, (pad.shape[1] - w) // 2
            pad[top:top + h, left:left + w] = arr
            arr, h, w = pad, pad.shape[0], pad.shape[1]
        top, left = (h - ch) // 2, (w - cw) // 2
        arr = arr[top:top + ch, left:left + cw]
    expected = tuple(spec["image_size"])
    if arr.shape[:2] != expected:
        raise InputError(f"preprocessed image is {arr.shape[:2]}, the vision graph wants {expected}")
    return _normalized(arr, spec)


def _dynamic_view(img, spec: dict) -> np.ndarray:
    """Qwen2.5-VL: smart resize, rescale + normalise, block-major patches (:mod:`atp.runtime.dynamic`)."""
    from PIL import Image

    from atp.runtime.dynamic import DynamicSpec, patchify, smart_resize

    d = DynamicSpec.from_dict(spec["dynamic"])
    _check_pixels(img.width, img.height, "the image")
    h, w = smart_resize(img.height, img.width, d)
    _check_pixels(w, h, f"the {img.width}x{img.height} image resized for this model")
    if (w, h) != img.size:
        img = img.resize((w, h), resample=Image.Resampling(d.resample))
    return patchify(_normalized(np.asarray(img, dtype=np.uint8), spec)[0], d)


def _normalized(arr: np.ndarray, spec: dict) -> np.ndarray:
    """``HxWx3`` uint8 -> ``[1, 3, H, W]`` float32, rescaled and normalised per the spec."""
    lut = _value_table(spec.get("rescale_factor"), spec.get("mean"), spec.get("std"))
    out = np.empty((1, 3, *arr.shape[:2]), np.float32)
    for c in range(3):  # uint8 -> float through a 256-entry table: the same float32 arithmetic, 4x fewer passes
        np.take(lut[:, c], arr[..., c], out=out[0, c])
    return out


def _value_table(rescale, mean, std) -> np.ndarray:
    """``[256, 3]`` float32: what rescale and normalise make of each uint8 value per channel, computed with the
    same float32 operations as the per-pixel formula ``(x * rescale - mean) / std`` (so results are bit-identical)."""
    x = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    if rescale is not None:
        x = x * np.float32(rescale)
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)
