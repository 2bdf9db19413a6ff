"""An ImageNet-shaped JPEG corpus made from the real photos shipped with scikit-image and scikit-learn.

`build_corpus(dir, n)` writes `dir/train/<class>/<class>_<i>.JPEG` (one class per
source photo) and `dir/corpus.json`. Every file is a pure function of (seed, i): a
random crop of a source photo at a random aspect ratio, resized to ImageNet's typical
size (long side 500 px most of the time, ~500x375), flipped at random, then encoded
at quality ~90 (4:4:4 or 4:2:0 chroma) with fine grain added until it reaches its
drawn byte size (median 115 KB; the mean lands near ImageNet's ~110 KB, since a few
smooth photos cannot reach their draw). The grain matters: decode cost follows pixel
count and entropy-coded bytes, and the ~512 px sources alone encode to ~50 KB, half
of what a real ImageNet JPEG costs to decode.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fkd_dali.errors import ConfigError, DatasetIndexError

if TYPE_CHECKING:
    from fkd_dali.data.index import DatasetIndex

# (package, path inside the package, class name). Photographs only: no synthetic
# test charts, logos or tiny images.
SOURCE_PHOTOS: tuple[tuple[str, str, str], ...] = tuple(
    [("skimage", f"data/{f}", f.split(".")[0]) for f in (
        "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
        "coffee.png", "coins.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
        "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")]
    + [("sklearn", "datasets/images/china.jpg", "china"), ("sklearn", "datasets/images/flower.jpg", "flower")])

# ImageNet-like shapes: (height / width of a landscape image, probability).
_ASPECTS = ((0.75, 0.55), (2 / 3, 0.2), (1.0, 0.1), (0.8, 0.1), (0.5625, 0.05))
_PORTRAIT_PROB = 0.2
_FULL_SIDE_PROB = 0.8  # most ImageNet images have a 500 px long side
MANIFEST = "corpus.json"


@dataclass(frozen=True)
class CorpusConfig:
    """What a corpus is made of; equal configs give byte-identical corpora.

    Attributes:
        n_images: number of JPEGs.
        seed: root of every random draw (image i uses the stream (seed, i)).
        long_side: the long side of most images, in pixels.
        quality: median JPEG quality; each file draws from quality +- 2.
        target_kb: median file size in KB (1000 bytes); each file draws around it.
        max_grain: largest grain standard deviation (8-bit levels) added to reach it.
    """

    n_images: int = 64
    seed: int = 0
    long_side: int = 500
    quality: int = 90
    target_kb: float = 115.0
    max_grain: float = 28.0

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ConfigError(f"a corpus needs at least 1 image, got {self.n_images}")
        if not 32 <= self.long_side <= 4096:
            raise ConfigError(f"long side must be in [32, 4096] px, got {self.long_side}")
        if not 50 <= self.quality <= 98:
            raise ConfigError(f"JPEG quality must be in [50, 98], got {self.quality}")
        if self.target_kb <= 0:
            raise ConfigError(f"target size must be > 0 KB, got {self.target_kb}")


@dataclass(frozen=True)
class CorpusInfo:
    """A built corpus: its image root and measured statistics."""

    root: str
    config: CorpusConfig
    n_images: int
    mean_kb: float
    mean_height: float
    mean_width: float
    classes: list[str]


def source_photos() -> list[tuple[str, str]]:
    """(class name, file path) of every shipped source photo that is installed."""
    import importlib

    found = []
    for package, rel, name in SOURCE_PHOTOS:
        try:
            base = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
        except ImportError:
            continue
        if (base / rel).is_file():
            found.append((name, str(base / rel)))
    if not found:
        raise DatasetIndexError("no source photos found: install scikit-image and scikit-learn, "
                                "or pass --data with your own image folder")
    return found


def build_corpus(out_dir: str | os.PathLike[str], config: CorpusConfig = CorpusConfig(),
                 progress: bool = False) -> CorpusInfo:
    """Write the corpus under `out_dir/train`, or reuse it if `out_dir` holds the same config.

    Args:
        out_dir: folder for `train/` and the manifest `corpus.json`.
        config: what to build (see `CorpusConfig`).
        progress: show a progress bar.
    """
    out = Path(out_dir)
    manifest = out / MANIFEST
    root = out / "train"
    if manifest.is_file():
        info = _load_manifest(manifest)
        if info is not None and info.config == config:
            info = CorpusInfo(**{**asdict(info), "config": config, "root": str(root)})
            if _complete(info):
                return info
        manifest.unlink()
    _remove_old_images(root)
    sources = source_photos()
    photos = [(name, np.asarray(Image.open(path).convert("RGB"))) for name, path in sources]
    sizes, shapes, classes = [], [], []
    iterator = range(config.n_images)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="corpus", unit="img")
    for i in iterator:
        rng = np.random.default_rng([config.seed, i])
        name, pixels = photos[int(rng.integers(len(photos)))]
        data, shape = make_corpus_jpeg(pixels, rng, config)
        path = root / name / f"{name}_{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sizes.append(len(data))
        shapes.append(shape)
        classes.append(name)
    hw = np.array(shapes, dtype=np.float64)
    info = CorpusInfo(root=str(root), config=config, n_images=config.n_images,
                      mean_kb=float(np.mean(sizes)) / 1000, mean_height=float(hw[:, 0].mean()),
                      mean_width=float(hw[:, 1].mean()), classes=sorted(set(classes)))
    manifest.write_text(json.dumps(asdict(info), indent=1))
    return info


def prepare_dataset(data: str | None, corpus_images: int, corpus_seed: int, assets_dir: str | os.PathLike[str],
                    progress: bool = False) -> tuple["DatasetIndex", dict]:
    """The image folder a benchmark reads, and a description of it for its JSON.

    Args:
        data: an ImageNet-style folder to use as is; None builds (or reuses) the corpus
            of `corpus_images` images from `corpus_seed` under
            `assets_dir/corpus-<n>-seed<seed>`.
        progress: show a progress bar while building.
    """
    from fkd_dali.data.index import build_index

    corpus = None
    root = data
    if root is None:
        built = build_corpus(Path(assets_dir) / f"corpus-{corpus_images}-seed{corpus_seed}",
                             CorpusConfig(n_images=corpus_images, seed=corpus_seed), progress=progress)
        root, corpus = built.root, asdict(built.config)
    index = build_index(root)
    desc = {"root": index.root, "n_images": len(index), "n_classes": len(index.class_names),
            "mean_kb": float(index.nbytes.mean()) / 1000, "mean_height": float(index.sizes[:, 0].mean()),
            "mean_width": float(index.sizes[:, 1].mean()), "fingerprint": index.fingerprint, "corpus": corpus}
    return index, desc


@dataclass(frozen=True)
class LinkedCorpusInfo:
    """A large corpus of hard links to the files of a small real one (`build_linked_corpus`)."""

    root: str
    n_images: int
    n_classes: int
    source: CorpusConfig


def build_linked_corpus(out_dir: str | os.PathLike[str], n_images: int, source: CorpusInfo,
                        n_classes: int = 1000) -> LinkedCorpusInfo:
    """ImageNet's shape in file count and folders at no disk cost: hard links to a small corpus.

    Writes `out_dir/train/n<class>/img_<i>.JPEG` for i < n_images, image i in class
    i % n_classes, a hard link to source file i % len(sources); reuses a complete
    folder with the same manifest. For benchmarks of the host path (paths, file
    reads, feeds) only: every file is a real ~110 KB JPEG, but the page cache holds
    just the few distinct sources, as it would hold a hot dataset.
    """
    if n_images < 1 or n_classes < 1:
        raise ConfigError(f"a linked corpus needs >= 1 image and class, got {n_images} and {n_classes}")
    out = Path(out_dir)
    root = out / "train"
    want = LinkedCorpusInfo(root=str(root), n_images=n_images, n_classes=n_classes, source=source.config)
    manifest = out / MANIFEST
    if manifest.is_file() and _load_linked(manifest) == want and _count_files(root) == n_images:
        return want
    manifest.unlink(missing_ok=True)
    if root.is_dir():
        import shutil

        shutil.rmtree(root)  # only links: the sources live in their own corpus folder
    files = sorted(Path(source.root).rglob("*.JPEG"))
    for i in range(n_images):
        path = root / f"n{i % n_classes:05d}" / f"img_{i:08d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(files[i % len(files)], path)
    manifest.write_text(json.dumps(asdict(want), indent=1))
    return want


def _load_linked(path: Path) -> LinkedCorpusInfo | None:
    try:
        raw = json.loads(path.read_text())
        return LinkedCorpusInfo(**{**raw, "source": CorpusConfig(**raw["source"])})
    except (ValueError, TypeError, KeyError):
        return None


def _count_files(root: Path) -> int:
    return sum(len(os.listdir(d)) for d in root.iterdir() if d.is_dir()) if root.is_dir() else 0


def make_corpus_jpeg(pixels: np.ndarray, rng: np.random.Generator,
                     config: CorpusConfig) -> tuple[bytes, tuple[int, int]]:
    """One corpus JPEG from a source photo: crop, resize, flip, grain, encode.

    Returns the encoded bytes and the (height, width) of the image.
    """
    height, width = _draw_shape(rng, config.long_side)
    src_h, src_w = pixels.shape[:2]
    aspect = height / width
    # Largest box of the drawn aspect inside the source, then a random part of it.
    box_h, box_w = (src_h, src_h / aspect) if src_h / aspect <= src_w else (src_w * aspect, src_w)
    shrink = np.sqrt(rng.uniform(0.4, 1.0))
    box_h, box_w = box_h * shrink, box_w * shrink
    top = rng.uniform(0, src_h - box_h)
    left = rng.uniform(0, src_w - box_w)
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS,
                                           box=(left, top, left + box_w, top + box_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    quality = int(config.quality + rng.integers(-2, 3))
    subsampling = 0 if rng.random() < 0.6 else 2  # 4:4:4 or 4:2:0, both common in ImageNet
    target = config.target_kb * 1000 * float(np.clip(rng.lognormal(0.0, 0.25), 0.5, 2.0))
    grain = rng.standard_normal((height, width, 3)).astype(np.float32)
    base = np.asarray(image, dtype=np.float32)
    return _encode_to_size(base, grain, quality, subsampling, target, config.max_grain), (height, width)


def _draw_shape(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    ratios, probs = zip(*_ASPECTS)
    ratio = float(rng.choice(ratios, p=np.array(probs) / sum(probs)))
    long = long_side if rng.random() < _FULL_SIDE_PROB else int(rng.integers(long_side * 2 // 3, long_side))
    short = max(1, int(round(long * ratio)))
    return (long, short) if rng.random() < _PORTRAIT_PROB else (short, long)


def _encode(base: np.ndarray, grain: np.ndarray, sigma: float, quality: int, subsampling: int) -> bytes:
    pixels = np.clip(base + sigma * grain, 0, 255).astype(np.uint8) if sigma > 0 else base.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def _encode_to_size(base: np.ndarray, grain: np.ndarray, quality: int, subsampling: int,
                    target_bytes: float, max_grain: float) -> bytes:
    """Bisect the grain level (7 encodes) for the file closest to `target_bytes` from below or above."""
    best = _encode(base, grain, 0.0, quality, subsampling)
    if len(best) >= target_bytes:
        return best
    lo, hi = 0.0, max_grain
    for _ in range(7):
        mid = (lo + hi) / 2
        data = _encode(base, grain, mid, quality, subsampling)
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        lo, hi = (mid, hi) if len(data) < target_bytes else (lo, mid)
    return best


def _load_manifest(path: Path) -> CorpusInfo | None:
    try:
        raw = json.loads(path.read_text())
        raw["config"] = CorpusConfig(**raw["config"])
        return CorpusInfo(**raw)
    except (ValueError, TypeError, KeyError):
        return None


def _remove_old_images(root: Path) -> None:
    """Delete the JPEGs an earlier build with another config left (only files named like ours)."""
    for _, _, name in SOURCE_PHOTOS:
        folder = root / name
        if folder.is_dir():
            for old in folder.glob(f"{name}_*.JPEG"):
                old.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()  # a class the new corpus may not use


def _complete(info: CorpusInfo) -> bool:
    root = Path(info.root)
    return root.is_dir() and sum(len(os.listdir(root / c)) for c in info.classes
                                 if (root / c).is_dir()) == info.n_images
