"""A small ImageNet-style folder of real photos, built from the sample images that
scikit-image and scikit-learn ship (no downloads).

Each class is one photo whose ImageNet class the bundled teacher recognises; its
images are deterministic random crops/rescales of that photo re-encoded as JPEG
(quality 90), plus the odd cases a loader must handle: one grayscale JPEG, one CMYK
JPEG and one PNG. Class folders carry ImageNet WordNet ids, so class names resolve
through timm's ImageNet metadata.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fkd_dali.errors import DatasetIndexError


@dataclass(frozen=True)
class SamplePhoto:
    package: str  # "skimage" or "sklearn"
    filename: str
    wnid: str
    imagenet_index: int
    name: str


SAMPLE_PHOTOS = (
    SamplePhoto("skimage", "coffee.png", "n07920052", 967, "espresso"),
    SamplePhoto("skimage", "chelsea.png", "n02123045", 281, "tabby cat"),
    SamplePhoto("skimage", "motorcycle_left.png", "n03785016", 665, "moped"),
    SamplePhoto("sklearn", "china.jpg", "n03877845", 698, "palace"),
    SamplePhoto("sklearn", "flower.jpg", "n11939491", 985, "daisy"),
    SamplePhoto("skimage", "camera.png", "n04485082", 872, "tripod"),
    SamplePhoto("skimage", "rocket.jpg", "n03773504", 657, "missile"),
)


_PHOTO_FOLDERS = {"skimage": ("skimage", "data"), "sklearn": ("sklearn.datasets", "images")}


def photo_path(photo: SamplePhoto) -> str:
    """Where the installed package keeps the photo (scikit-image and scikit-learn: the `demo` extra)."""
    module_name, folder = _PHOTO_FOLDERS[photo.package]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DatasetIndexError(f"the sample photos need {photo.package} (scikit-image and scikit-learn): "
                                "pip install 'fkd-dali[demo]'") from e
    base = os.path.join(os.path.dirname(module.__file__), folder)  # type: ignore[arg-type]
    path = os.path.join(base, photo.filename)
    if not os.path.isfile(path):
        raise DatasetIndexError(f"sample photo {path} is missing: reinstall {photo.package}")
    return path


def load_photo(photo: SamplePhoto) -> Image.Image:
    with Image.open(photo_path(photo)) as im:
        return im.convert("L") if im.mode == "L" else im.convert("RGB")


def _variant(img: Image.Image, rng: np.random.Generator, short_side: tuple[int, int]) -> Image.Image:
    """A random crop (55-100% of the area) rescaled so its shorter side is in `short_side`."""
    w, h = img.size
    area = w * h * rng.uniform(0.55, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    crop = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    target = int(rng.integers(short_side[0], short_side[1] + 1))
    scale = target / min(cw, ch)
    return crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)


def build_photo_dataset(root: str | os.PathLike[str], images_per_class: int = 6, seed: int = 0,
                        short_side: tuple[int, int] = (180, 360), odd_formats: bool = True,
                        classes: int | None = None) -> Path:
    """Write `root/<wnid>/<name>_<i>.JPEG` for the sample photos; returns `root`.

    With `odd_formats`, image 0 of the espresso class is a PNG, image 1 of the daisy
    class a CMYK JPEG; the tripod class is grayscale throughout (its source is).
    """
    if images_per_class < 1:
        raise DatasetIndexError("images_per_class must be >= 1")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for photo in SAMPLE_PHOTOS[:classes]:
        src = load_photo(photo)
        folder = root / photo.wnid
        folder.mkdir(parents=True, exist_ok=True)
        stem = photo.name.replace(" ", "_")
        for i in range(images_per_class):
            img = _variant(src, rng, short_side)
            if odd_formats and photo.imagenet_index == 967 and i == 0:
                img.save(folder / f"{stem}_{i:03d}.png")
                continue
            if odd_formats and photo.imagenet_index == 985 and i == 1:
                img = img.convert("CMYK")
            img.save(folder / f"{stem}_{i:03d}.JPEG", quality=90)
    return root


def imagenet_index_of(class_names: list[str]) -> np.ndarray | None:
    """ImageNet class index of each WordNet-id class folder, or None if any is not a wnid."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    lookup = {info.index_to_label_name(i): i for i in range(1000)}
    if not all(c in lookup for c in class_names):
        return None
    return np.array([lookup[c] for c in class_names], dtype=np.int64)
