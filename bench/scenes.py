"""Controlled scenes for student-accuracy benchmarks (issue 22): where random-resized crops miss the labelled object.

`build_scenes(root, SceneConfig(...))` writes `ROOT/{teacher,train,val,test}/<class>/<split>_<i>.JPEG` and
`ROOT/scenes.json` (every object's box, class and role); `load_scenes(root)` reads it back. The design and its
measured crop statistics are in `bench/SCENES.md`; what a crop box shows is `bench.scene_crops`.
"""
from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from fkd_dali.errors import ConfigError, DatasetIndexError

from .report import json_main

#: Bumped whenever a change to this module changes any pixel or record of a scene.
GENERATOR_VERSION = 1
MANIFEST = "scenes.json"
_BUILDING = ".scenes-building.json"  # marker: a build of ROOT is (or was, if it died) under way
SPLITS = ("teacher", "train", "val", "test")
#: The word each split mixes into its image seeds, [seed, word, i]: disjoint streams per split.
SPLIT_WORDS = {"teacher": 1, "train": 2, "val": 3, "test": 4}
ROLES = ("labelled", "distractor")

# -- the design (SCENES.md explains each choice; changing any of them is a new GENERATOR_VERSION) --
LABELLED_DIAMETER = (0.35, 0.55)  # labelled object's circumscribed diameter, fraction of the side
DISTRACTOR_DIAMETER = (0.12, 0.22)  # each distractor's, fraction of the side
DISTRACTOR_COUNTS = ((0, 0.25), (1, 0.40), (2, 0.35))  # (count, probability)
MAX_BOX_OVERLAP = 0.25  # a distractor's circumscribed box overlaps another object's box by at most this share
HUE_SPREAD = 0.6  # an object's hue ~ N(class hue, HUE_SPREAD / C): neighbouring classes overlap
TEXTURE_CYCLES = (2.5, 4.5)  # texture periods across an object's diameter
_SUPERSAMPLE = 4  # coverage is averaged over 4x4 samples per pixel (anti-aliased edges)
_GRAIN = 4.0  # std of the sensor-like noise over the whole image, 8-bit levels


@dataclass(frozen=True)
class ShapeClass:
    """One object class: a shape family, a texture family and a mean hue (set by the class count)."""

    shape: str
    texture: str


#: Class i is CLASS_FAMILIES[i]; its folder is `c<ii>-<shape>`. Hues are spread around the wheel by class id
#: and overlap between neighbours; classes 2k and 2k+1 share a texture and have neighbouring hues, so colour
#: and texture together narrow a class down to a pair and only the shape tells the pair apart.
CLASS_FAMILIES: tuple[ShapeClass, ...] = (
    ShapeClass("disc", "stripes"), ShapeClass("square", "stripes"),
    ShapeClass("triangle", "dots"), ShapeClass("star", "dots"),
    ShapeClass("ring", "checker"), ShapeClass("crescent", "checker"),
    ShapeClass("cross", "solid"), ShapeClass("tee", "solid"),
    ShapeClass("bar", "speckle"), ShapeClass("chevron", "speckle"),
    ShapeClass("heart", "rings"), ShapeClass("hexagon", "rings"),
)


@dataclass(frozen=True)
class SceneConfig:
    """What a scene folder holds; equal configs give byte-identical folders.

    Attributes:
        classes: number of object classes C (the first C of `CLASS_FAMILIES`).
        size: image side in pixels (square images).
        teacher, train, val, test: images per split (balanced: image i has class i % C).
        seed: root of every draw; image i of a split uses the stream [seed, SPLIT_WORDS[split], i].
        quality: JPEG quality (4:4:4 chroma).
    """

    classes: int = 10
    size: int = 64
    teacher: int = 8000
    train: int = 2000
    val: int = 500
    test: int = 2000
    seed: int = 0
    quality: int = 90

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(CLASS_FAMILIES):
            raise ConfigError(f"--classes must be in [2, {len(CLASS_FAMILIES)}] (one shape family each), "
                              f"got {self.classes}")
        if not 32 <= self.size <= 1024:
            raise ConfigError(f"--size must be in [32, 1024] px (distractors need ~4 px at least), got {self.size}")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ConfigError(f"--{split} must be >= 0 images, got {getattr(self, split)}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not 50 <= self.quality <= 100:
            raise ConfigError(f"--quality must be in [50, 100], got {self.quality}")

    def count(self, split: str) -> int:
        return int(getattr(self, split))


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: class id, role, tight pixel box and FKD fractions (i/H, j/W, h/H, w/W).

    `pixels` counts the pixels it covers (coverage >= 1/2) after every later object is drawn.
    """

    cls: int
    role: str
    box_px: tuple[int, int, int, int]
    box: tuple[float, float, float, float]
    pixels: int


@dataclass(frozen=True)
class Scene:
    """One image: its path relative to the split folder (as `DatasetIndex.paths`), class and objects."""

    path: str
    cls: int
    height: int
    width: int
    objects: tuple[SceneObject, ...]

    @property
    def labelled(self) -> SceneObject:
        return next(o for o in self.objects if o.role == "labelled")


@dataclass(frozen=True)
class SceneSet:
    """A built scene folder: root, config, class folder names and every split's scenes."""

    root: str
    config: SceneConfig
    class_names: list[str]
    splits: dict[str, list[Scene]]
    seconds: float = 0.0  # generation time of this call (0 when an existing folder was reused)
    reused: bool = False

    def split_root(self, split: str) -> str:
        return os.path.join(self.root, split)

    def by_path(self, split: str) -> dict[str, Scene]:
        return {s.path: s for s in self.splits[split]}


def class_names(classes: int) -> list[str]:
    """Folder names `c00-disc`, `c01-square`, ...: sorted order is class order (ImageFolder's ids)."""
    return [f"c{i:02d}-{CLASS_FAMILIES[i].shape}" for i in range(classes)]


def class_hue(cls: int, classes: int) -> float:
    return cls / classes


# -- shapes: inside(u, v) on the object's rotated frame, in units of its circumscribed radius -------------
def _polygon(n: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        rho, theta = np.hypot(u, v), np.arctan2(v, u)
        sector = 2 * math.pi / n
        return rho * np.cos(np.mod(theta, sector) - sector / 2) <= 0.95 * math.cos(math.pi / n)
    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    tooth = np.abs(np.mod(theta * 5 / (2 * math.pi), 1.0) - 0.5) * 2  # 1 at a point, 0 between points
    return rho <= 0.42 + 0.53 * tooth


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u / 0.78, -v / 0.78 + 0.12
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: np.hypot(u, v) <= 0.95,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.67,
    "triangle": _polygon(3),
    "ring": lambda u, v: (np.hypot(u, v) <= 0.95) & (np.hypot(u, v) >= 0.55),
    "cross": lambda u, v: ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95)),
    "star": _star,
    "hexagon": _polygon(6),
    "crescent": lambda u, v: (np.hypot(u, v) <= 0.95) & (np.hypot(u - 0.45, v) > 0.75),
    "bar": lambda u, v: (np.abs(u) <= 0.95) & (np.abs(v) <= 0.3),
    "heart": _heart,
    "chevron": lambda u, v: (np.abs(v) <= 0.85) & (u - 0.95 * np.abs(v) + 0.45 >= 0)
    & (u - 0.95 * np.abs(v) + 0.45 <= 0.55),
    "tee": lambda u, v: ((np.abs(u) <= 0.9) & (v >= 0.35) & (v <= 0.8)) | ((np.abs(u) <= 0.25) & (v >= -0.9)
                                                                           & (v < 0.35)),
}


# -- textures: t in [0, 1] per pixel mixes an object's light and dark colour -------------------------------
def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = rng.uniform(*TEXTURE_CYCLES)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    if kind == "solid":  # one colour, shaded along a random direction
        a = rng.uniform(0, 2 * math.pi)
        return np.clip(0.2 + 0.2 * (u * math.cos(a) + v * math.sin(a)), 0, 1)
    if kind == "stripes":
        return np.clip(np.sin(math.pi * k * u + phase[0]) * 3, -1, 1) * 0.5 + 0.5
    if kind == "checker":
        return np.clip(np.sin(math.pi * k * u + phase[0]) * np.sin(math.pi * k * v + phase[1]) * 4, -1, 1) * 0.5 + 0.5
    if kind == "dots":
        period = 2.0 / k
        du = np.mod(u + phase[0], period) - period / 2
        dv = np.mod(v + phase[1], period) - period / 2
        return (np.hypot(du, dv) < 0.3 * period).astype(np.float32)
    if kind == "rings":
        return np.clip(np.sin(math.pi * k * np.hypot(u, v) + phase[0]) * 3, -1, 1) * 0.5 + 0.5
    if kind == "speckle":
        return (rng.random(u.shape) < 0.45).astype(np.float32)
    raise ValueError(f"unknown texture {kind}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32) * 255


def _object_colours(cls: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Light and dark colour of one object: the class hue with spread, random saturation and brightness."""
    hue = class_hue(cls, classes) + rng.normal(0, HUE_SPREAD / classes)
    sat, val = rng.uniform(0.55, 0.95), rng.uniform(0.65, 0.95)
    dark = _hsv(hue + rng.normal(0, 0.02), sat * rng.uniform(0.8, 1.0), val * rng.uniform(0.3, 0.55))
    return _hsv(hue, sat, val), dark


# -- drawing ------------------------------------------------------------------------------------------------
@dataclass
class _Placed:
    cls: int
    role: str
    cy: float
    cx: float
    radius: float
    angle: float


def _coverage(obj: _Placed, size: int) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(y0, x0, y1, x1) window, coverage in [0, 1] there, and the rotated frame (u, v) at pixel centres."""
    y0, x0 = max(0, int(obj.cy - obj.radius) - 1), max(0, int(obj.cx - obj.radius) - 1)
    y1, x1 = min(size, int(math.ceil(obj.cy + obj.radius)) + 1), min(size, int(math.ceil(obj.cx + obj.radius)) + 1)
    ss = _SUPERSAMPLE
    sub = (np.arange(ss, dtype=np.float64) + 0.5) / ss
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)
    u, v = _frame(obj, ys[:, None], xs[None, :])
    inside = SHAPES[CLASS_FAMILIES[obj.cls].shape](u, v)
    cover = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    uc, vc = _frame(obj, np.arange(y0, y1)[:, None] + 0.5, np.arange(x0, x1)[None, :] + 0.5)
    return (y0, x0, y1, x1), cover, uc, vc


def _frame(obj: _Placed, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dy, dx = (ys - obj.cy) / obj.radius, (xs - obj.cx) / obj.radius
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    return c * dx + s * dy, -s * dx + c * dy


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Clutter that names no class: a low-saturation base, low-frequency colour noise, faint stripes, thin lines."""
    base = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.75))
    k = int(rng.integers(3, 7))
    blobs = rng.normal(0, 28, size=(k, k, 3)).astype(np.float32)
    low = np.stack([np.asarray(Image.fromarray(blobs[..., c], mode="F").resize((size, size), Image.Resampling.BICUBIC))
                    for c in range(3)], axis=-1)
    img = base[None, None, :] + low
    if rng.random() < 0.5:  # faint texture of random orientation and period, any class's look but weak
        a, period = rng.uniform(0, math.pi), rng.uniform(0.08, 0.3) * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        img += (np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period) * rng.uniform(6, 16))[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        pts = rng.uniform(-0.1, 1.1, size=4) * size
        colour = tuple(int(c) for c in _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.9)))
        draw.line([(pts[0], pts[1]), (pts[2], pts[3])], fill=colour, width=1)
    return np.asarray(canvas, dtype=np.float32)


def _place(cls: int, classes: int, size: int, rng: np.random.Generator) -> list[_Placed]:
    """The labelled object of class `cls` (last, on top) and 0-2 distractors of other classes behind it."""
    radius = rng.uniform(*LABELLED_DIAMETER) * size / 2
    labelled = _Placed(cls, "labelled", rng.uniform(radius, size - radius), rng.uniform(radius, size - radius),
                       radius, rng.uniform(0, 2 * math.pi))
    counts, probs = zip(*DISTRACTOR_COUNTS)
    wanted = int(rng.choice(counts, p=np.array(probs)))
    placed = [labelled]
    for _ in range(wanted):
        other = int(rng.integers(classes - 1))
        other += other >= cls
        r = rng.uniform(*DISTRACTOR_DIAMETER) * size / 2
        angle = rng.uniform(0, 2 * math.pi)
        for _try in range(20):
            cy, cx = rng.uniform(r, size - r), rng.uniform(r, size - r)
            if all(_box_overlap((cy, cx, r), (p.cy, p.cx, p.radius)) <= MAX_BOX_OVERLAP for p in placed):
                placed.append(_Placed(other, "distractor", cy, cx, r, angle))
                break
    return placed[1:] + [labelled]


def _box_overlap(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Share of square a (centre y, x, half side) covered by square b."""
    dy = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0] - a[2], b[0] - b[2]))
    dx = max(0.0, min(a[1] + a[2], b[1] + b[2]) - max(a[1] - a[2], b[1] - b[2]))
    return dy * dx / (2 * a[2]) ** 2


def render_scene(cls: int, classes: int, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """Draw one scene of class `cls`.

    Returns:
        pixels (size, size, 3) uint8; owner (size, size) int8, the index in `objects`
        of the object covering each pixel (coverage >= 1/2, topmost), -1 for background;
        objects in drawing order (distractors first, the labelled object last).
    """
    placed = _place(cls, classes, size, rng)
    img = _background(size, rng)
    owner = np.full((size, size), -1, dtype=np.int8)
    boxes = []
    for j, obj in enumerate(placed):
        (y0, x0, y1, x1), cover, u, v = _coverage(obj, size)
        light, dark = _object_colours(obj.cls, classes, rng)
        t = _texture(CLASS_FAMILIES[obj.cls].texture, u, v, rng)[..., None]
        colour = light * (1 - t) + dark * t
        a = cover[..., None].astype(np.float32)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour * a
        owner[y0:y1, x0:x1][cover >= 0.5] = j
        rows, cols = np.nonzero(cover > 0)
        boxes.append((y0 + int(rows.min()), x0 + int(cols.min()), int(rows.max() - rows.min() + 1),
                      int(cols.max() - cols.min() + 1)))
    img += rng.normal(0, _GRAIN, size=img.shape).astype(np.float32)
    objects = [SceneObject(cls=p.cls, role=p.role, box_px=b, box=_fractions(b, size, size),
                           pixels=int((owner == j).sum())) for j, (p, b) in enumerate(zip(placed, boxes))]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), owner, objects


def _fractions(box: tuple[int, int, int, int], height: int, width: int) -> tuple[float, float, float, float]:
    return (box[0] / height, box[1] / width, box[2] / height, box[3] / width)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def image_rng(config: SceneConfig, split: str, i: int) -> np.random.Generator:
    """The stream of image i of `split`: [seed, split word, i], so splits never share a draw."""
    return np.random.default_rng([config.seed, SPLIT_WORDS[split], i])


def make_image(config: SceneConfig, split: str, i: int) -> tuple[bytes, Scene]:
    """JPEG bytes and record of image i of `split` (class i % C): a pure function of (config, split, i)."""
    cls = i % config.classes
    pixels, _, objects = render_scene(cls, config.classes, config.size, image_rng(config, split, i))
    path = f"{class_names(config.classes)[cls]}/{split}_{i:06d}.JPEG"
    return encode_jpeg(pixels, config.quality), Scene(path, cls, config.size, config.size, tuple(objects))


# -- the folder: build once, reuse, refuse other parameters --------------------------------------------------
def build_scenes(root: str | os.PathLike[str], config: SceneConfig = SceneConfig(),
                 progress: bool = False) -> SceneSet:
    """Write every split and `scenes.json` under `root`, or reuse them when `root` holds this config already.

    Each split is written into a hidden folder and renamed into place when complete; the
    manifest goes last (atomically), so a folder with `scenes.json` is always whole.
    A folder left by an interrupted build (its marker file) is cleared and rebuilt.

    Raises:
        ConfigError: `root` holds scenes of another config or generator version (kept:
            choose another --root or delete it), or files that are not scenes.
    """
    out = Path(root)
    existing = _existing(out, config)
    if existing is not None:
        return existing
    start = time.perf_counter()
    _clear_interrupted(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _BUILDING).write_text(json.dumps(_identity(config)))
    names = class_names(config.classes)
    splits: dict[str, list[Scene]] = {}
    for split in SPLITS:
        splits[split] = _write_split(out, config, split, names, progress)
    doc = {**_identity(config), "classes": _class_table(config.classes),
           "design": _design(), "split_streams": {s: [config.seed, SPLIT_WORDS[s]] for s in SPLITS},
           "images": {s: [_scene_json(sc) for sc in splits[s]] for s in SPLITS}}
    _write_atomic(out / MANIFEST, json.dumps(doc, separators=(",", ":")) + "\n")
    (out / _BUILDING).unlink()
    return SceneSet(str(out), config, names, splits, seconds=time.perf_counter() - start)


def _write_split(out: Path, config: SceneConfig, split: str, names: list[str], progress: bool) -> list[Scene]:
    tmp = out / f".partial-{split}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for name in names:
        (tmp / name).mkdir(parents=True)
    iterator: Sequence[int] | object = range(config.count(split))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"scenes {split}", unit="img")
    scenes = []
    for i in iterator:  # type: ignore[attr-defined]
        data, scene = make_image(config, split, i)
        (tmp / scene.path).write_bytes(data)
        scenes.append(scene)
    os.replace(tmp, out / split)
    return scenes


def _identity(config: SceneConfig) -> dict:
    return {"generator": "fkd-dali bench scenes", "version": GENERATOR_VERSION, "config": asdict(config)}


def _class_table(classes: int) -> list[dict]:
    return [{"id": i, "name": n, "shape": CLASS_FAMILIES[i].shape, "texture": CLASS_FAMILIES[i].texture,
             "hue": class_hue(i, classes)} for i, n in enumerate(class_names(classes))]


def _design() -> dict:
    return {"labelled_diameter": LABELLED_DIAMETER, "distractor_diameter": DISTRACTOR_DIAMETER,
            "distractor_counts": DISTRACTOR_COUNTS, "max_box_overlap": MAX_BOX_OVERLAP, "hue_spread": HUE_SPREAD,
            "texture_cycles": TEXTURE_CYCLES, "supersample": _SUPERSAMPLE, "grain": _GRAIN,
            "chroma": "4:4:4", "class_of_image_i": "i % classes"}


def _scene_json(scene: Scene) -> dict:
    return {"path": scene.path, "class": scene.cls, "height": scene.height, "width": scene.width,
            "objects": [{"class": o.cls, "role": o.role, "box_px": list(o.box_px), "box": list(o.box),
                         "pixels": o.pixels} for o in scene.objects]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _existing(out: Path, config: SceneConfig) -> SceneSet | None:
    """The folder's scenes if it holds exactly `config` complete; None if it must be built; else refuse."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return None
    found = load_scenes(out)
    have = _identity(found.config) | {"version": json.loads(manifest.read_text())["version"]}
    if have != _identity(config):
        differ = [f"{k} {have['config'][k]} != {v}" for k, v in asdict(config).items() if have["config"][k] != v]
        if have["version"] != GENERATOR_VERSION:
            differ.append(f"generator version {have['version']} != {GENERATOR_VERSION}")
        raise ConfigError(f"--root {out} holds scenes made with other parameters ({', '.join(differ)}): "
                          "choose another --root, or delete that folder to regenerate it")
    missing = [f"{s}/{sc.path}" for s in SPLITS for sc in found.splits[s] if not (out / s / sc.path).is_file()]
    if missing:
        raise ConfigError(f"--root {out} lacks {len(missing)} image(s) its scenes.json lists (e.g. {missing[0]}): "
                          "delete the folder to regenerate it")
    return SceneSet(found.root, found.config, found.class_names, found.splits, reused=True)


def _clear_interrupted(out: Path) -> None:
    """Remove what an interrupted build left; refuse a non-empty folder that is not one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--root {out} is a file: choose a folder")
    entries = set(os.listdir(out))
    if not entries:
        return
    if _BUILDING not in entries:
        raise ConfigError(f"--root {out} is not empty and holds no scenes ({sorted(entries)[:3]}...): "
                          "choose a new or empty folder")
    ours = set(SPLITS) | {f".partial-{s}" for s in SPLITS}
    for name in entries & ours:
        shutil.rmtree(out / name)
    for name in entries:
        if name.startswith(f".{MANIFEST}.tmp"):
            (out / name).unlink()


def load_scenes(root: str | os.PathLike[str]) -> SceneSet:
    """Read `root/scenes.json` (every split's scenes, in file-name order within each class)."""
    path = Path(root) / MANIFEST
    try:
        doc = json.loads(path.read_text())
        config = SceneConfig(**doc["config"])
        splits = {s: [_scene_from_json(r) for r in doc["images"][s]] for s in SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetIndexError(f"cannot read scenes manifest {path} ({e}): build it with "
                                "`python -m bench scenes --root DIR`") from None
    return SceneSet(str(Path(root)), config, class_names(config.classes), splits)


def _scene_from_json(r: dict) -> Scene:
    return Scene(r["path"], r["class"], r["height"], r["width"],
                 tuple(SceneObject(o["class"], o["role"], tuple(o["box_px"]), tuple(o["box"]), o["pixels"])
                       for o in r["objects"]))


def scenes_for_index(scene_set: SceneSet, split: str, paths: Sequence[str]) -> list[Scene]:
    """The scenes of `split` in the order of `paths` (e.g. a `DatasetIndex`'s or a store's `images/path`).

    Raises:
        DatasetIndexError: a path is not a scene of that split.
    """
    by_path = scene_set.by_path(split)
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise DatasetIndexError(f"{len(missing)} image(s) are not scenes of split {split!r} of "
                                f"{scene_set.root} (e.g. {missing[0]}): use that split's folder")
    return [by_path[p] for p in paths]


# -- CLI ---------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> tuple[Path, SceneConfig, argparse.Namespace]:
    d = SceneConfig()
    p = argparse.ArgumentParser(prog="bench scenes", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="folder for the splits and scenes.json (new, empty, or the same "
                                                 "parameters: reused without work)")
    p.add_argument("--classes", type=int, default=d.classes, help="object classes (default %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels (default %(default)s)")
    for split in SPLITS:
        p.add_argument(f"--{split}", type=int, default=d.count(split), help=f"{split} images (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="root seed (default %(default)s)")
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality (default %(default)s)")
    p.add_argument("--crop-stats", type=int, default=0, metavar="N",
                   help="also measure what N random-resized crops of the train split show (0 = off)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    config = SceneConfig(classes=a.classes, size=a.size, teacher=a.teacher, train=a.train, val=a.val,
                         test=a.test, seed=a.seed, quality=a.quality)
    return Path(a.root), config, a


def main(argv: Sequence[str] | None = None) -> int:
    """`bench scenes`: build (or reuse) a scene folder; prints a one-line JSON summary. FkdError -> exit 2."""
    def work() -> dict:
        root, config, args = parse_args(argv)
        built = build_scenes(root, config, progress=not args.no_progress)
        summary = {"root": built.root, "reused": built.reused, "seconds": round(built.seconds, 2),
                   "images": {s: len(built.splits[s]) for s in SPLITS}, "classes": built.class_names}
        if args.crop_stats:
            from .scene_crops import crop_statistics

            summary["crops_train"] = crop_statistics(built.splits["train"], args.crop_stats)
        return summary

    return json_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
