"""Label files for the baseline loaders, made with a real teacher: FKD per-image files and ReLabel maps.

Stand-alone on purpose: the FKD files can later come from the project's labelgen +
`labels export-fkd` instead, with the same layout. Boxes follow torchvision's
`RandomResizedCrop.get_params` (scale 0.08-1, ratio 3/4-4/3) under a torch RNG seeded
per image from (seed, image number), so a rerun writes the same boxes. Each asset
folder gets a `manifest.json`; a folder whose manifest matches is reused as is.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from fkd_dali.fkd_format import fkd_file_path, write_fkd_file
from fkd_dali.index import DatasetIndex
from fkd_dali.relabel import MAP_SIZE, dense_label_map, label_map_path, write_label_map
from fkd_dali.teacher import Teacher

MANIFEST = "manifest.json"
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_STRIDE = 32  # output stride of timm's classification CNNs


@dataclass(frozen=True)
class LabelAssetInfo:
    """What an asset folder holds; compared field by field to decide on reuse."""

    kind: str  # "fkd" or "relabel"
    dataset_fingerprint: str
    teacher: str
    teacher_sha256: str
    top_k: int
    num_classes: int
    crops_per_image: int = 0  # FKD files only
    map_size: int = 0  # ReLabel maps only
    seed: int = 0


def load_pil_rgb(path: str) -> Image.Image:
    """PIL decode to RGB, as torchvision's ImageFolder and both papers' loaders do."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def crop_params(img: Image.Image, n: int, seed: int, image_number: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` (i, j, h, w) pixel boxes from RandomResizedCrop.get_params and n flips, seeded per image."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + image_number)
        boxes = np.array([RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))
                          for _ in range(n)], dtype=np.int64)
        flips = (torch.rand(n) < 0.5).numpy()
    return boxes, flips


def teacher_crop(img: Image.Image, box: Sequence[int], flip: bool, teacher: Teacher) -> torch.Tensor:
    """The crop as the teacher sees it: resized to its input size, flipped, normalized."""
    size = list(teacher.input_size[1:])
    interp = InterpolationMode(teacher.interpolation) if teacher.interpolation in {
        m.value for m in InterpolationMode} else InterpolationMode.BILINEAR
    crop = TF.resized_crop(img, int(box[0]), int(box[1]), int(box[2]), int(box[3]), size, interp)
    if flip:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), teacher.mean, teacher.std)


def write_fkd_labels(index: DatasetIndex, out_root: str | os.PathLike[str], teacher: Teacher,
                     crops_per_image: int = 16, top_k: int = 5, seed: int = 0, batch_size: int = 64,
                     progress: bool = False) -> LabelAssetInfo:
    """One FKD label file per image of `index`: M random boxes, flips and the teacher's top-K.

    Args:
        index: the images to label.
        out_root: root of the `<class>/<stem>.tar` files.
        teacher: the real teacher (its input size, interpolation and normalization are used).
        crops_per_image: M crops stored per image.
        top_k: K probabilities kept per crop (softmax over all classes, then top-K).
        seed: box seed (image i uses the torch seed `seed * 1000003 + i`).
        batch_size: crops per teacher forward pass.
        progress: show a progress bar.
    """
    info = LabelAssetInfo("fkd", index.fingerprint, teacher.name, teacher.checkpoint_sha256, top_k,
                          teacher.num_classes,
                          crops_per_image=crops_per_image, seed=seed)
    if _reusable(out_root, info):
        return info
    _forget_manifest(out_root)
    images_per_step = max(1, batch_size // crops_per_image)
    for first in _steps(len(index), images_per_step, "FKD labels", progress):
        numbers = range(first, min(first + images_per_step, len(index)))
        crops, metas = [], []
        for i in numbers:
            img = load_pil_rgb(index.abspath(i))
            boxes, flips = crop_params(img, crops_per_image, seed, i)
            crops += [teacher_crop(img, b, f, teacher) for b, f in zip(boxes, flips)]
            metas.append((i, boxes, flips, img.height, img.width))
        with torch.inference_mode():
            probs = teacher.model(torch.stack(crops)).float().softmax(dim=1)
        prob, ids = probs.topk(top_k, dim=1)
        for n, (i, boxes, flips, height, width) in enumerate(metas):
            rows = slice(n * crops_per_image, (n + 1) * crops_per_image)
            coords = (boxes / np.array([height, width, height, width], dtype=np.float64)).astype(np.float32)
            write_fkd_file(fkd_file_path(out_root, index.paths[i]), coords, flips,
                           ids[rows].numpy(), prob[rows].numpy())
    _write_manifest(out_root, info)
    return info


def write_relabel_maps(index: DatasetIndex, out_root: str | os.PathLike[str], teacher: Teacher,
                       top_k: int = 5, map_size: int = MAP_SIZE, batch_size: int = 8,
                       progress: bool = False) -> LabelAssetInfo:
    """One ReLabel map per image: the whole image, resized to map_size * 32 px, through the teacher.

    ReLabel ran EfficientNet-L2 on whole images at 475 px for its 15x15 maps; a
    stride-32 teacher at 480 px gives 15x15 without interpolating the feature map.

    Args:
        index: the images to label.
        out_root: root of the `<class>/<stem>.pt` files.
        teacher: a CNN teacher (see `fkd_dali.relabel.dense_label_map`).
        top_k: K scores kept per position.
        map_size: S, side of the stored maps.
        batch_size: images per teacher forward pass.
        progress: show a progress bar.
    """
    info = LabelAssetInfo("relabel", index.fingerprint, teacher.name, teacher.checkpoint_sha256, top_k,
                          teacher.num_classes,
                          map_size=map_size)
    if _reusable(out_root, info):
        return info
    _forget_manifest(out_root)
    side = map_size * _STRIDE
    for first in _steps(len(index), batch_size, "ReLabel maps", progress):
        numbers = range(first, min(first + batch_size, len(index)))
        batch = []
        for i in numbers:
            img = load_pil_rgb(index.abspath(i))
            batch.append(teacher_crop(img, (0, 0, img.height, img.width), False,
                                      _with_size(teacher, side)))
        scores, ids = dense_label_map(teacher.model, torch.stack(batch), k=top_k, size=map_size)
        for n, i in enumerate(numbers):
            write_label_map(label_map_path(out_root, index.paths[i]), scores[n], ids[n])
    _write_manifest(out_root, info)
    return info


def _with_size(teacher: Teacher, side: int) -> Teacher:
    return Teacher(**{**teacher.__dict__, "input_size": (3, side, side)})


def _steps(n: int, step: int, desc: str, progress: bool) -> Iterator[int]:
    starts = range(0, n, step)
    if not progress:
        yield from starts
        return
    from tqdm import tqdm
    with tqdm(total=n, desc=desc, unit="img") as bar:
        for s in starts:
            yield s
            bar.update(min(step, n - s))


def _reusable(out_root: str | os.PathLike[str], info: LabelAssetInfo) -> bool:
    path = Path(out_root) / MANIFEST
    try:
        return LabelAssetInfo(**json.loads(path.read_text())) == info
    except (OSError, ValueError, TypeError):
        return False


def _forget_manifest(out_root: str | os.PathLike[str]) -> None:
    """Drop an outdated manifest first, so a crash mid-way never leaves a folder that claims to match."""
    (Path(out_root) / MANIFEST).unlink(missing_ok=True)


def _write_manifest(out_root: str | os.PathLike[str], info: LabelAssetInfo) -> None:
    Path(out_root).mkdir(parents=True, exist_ok=True)
    (Path(out_root) / MANIFEST).write_text(json.dumps(asdict(info), indent=1))
