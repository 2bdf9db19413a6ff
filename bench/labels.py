"""Label assets of the benchmarks, made with a real teacher: a store, FKD files built from it, ReLabel maps.

The store comes from fkd-dali's own label generation (`generate_labels`). The FKD
reference's per-image files have FKD's published shape (`write_fkd_published`: M=500
crops, top-5, numpy arrays as FKD's generator saves them); their first crops are the
store's, so the fkd-dali replay loader and the FKD-reference loader replay the same
boxes, flips and labels there. ReLabel maps run the teacher over whole images. Each
asset folder gets a `manifest.json` written after the asset is complete; a folder whose
manifest matches is reused as is. Synthetic stores (`synthetic_store`) serve benchmarks
that time reading and replaying labels, not the labels themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from fkd_dali.data.index import DatasetIndex
from fkd_dali.interop.relabel_maps import MAP_SIZE
from fkd_dali.interop.relabel_writer import write_teacher_maps
from fkd_dali.labels.teacher import Teacher

if TYPE_CHECKING:
    from fkd_dali.store.label_store import LabelStore

MANIFEST = "manifest.json"
STORE_NAME = "store.zarr"
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class LabelAssetInfo:
    """What an asset folder holds; compared field by field to decide on reuse."""

    kind: str  # "store", "fkd" or "relabel"
    dataset_fingerprint: str
    teacher: str
    teacher_sha256: str
    top_k: int
    num_classes: int
    crops_per_image: int = 0  # store and FKD files
    map_size: int = 0  # ReLabel maps only
    seed: int = 0  # crop seed of the store and FKD files
    source: str = ""  # FKD files: identity of the store they were exported from


def load_pil_rgb(path: str) -> Image.Image:
    """PIL decode to RGB, as torchvision's ImageFolder and both papers' loaders do."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def teacher_crop(img: Image.Image, box: Sequence[int], flip: bool, teacher: Teacher) -> torch.Tensor:
    """The crop as the teacher sees it: resized to its input size, flipped, normalized."""
    size = list(teacher.input_size[1:])
    interp = InterpolationMode(teacher.interpolation) if teacher.interpolation in {
        m.value for m in InterpolationMode} else InterpolationMode.BILINEAR
    crop = TF.resized_crop(img, int(box[0]), int(box[1]), int(box[2]), int(box[3]), size, interp)
    if flip:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), teacher.mean, teacher.std)


def teacher_sha256(name: str, checkpoint: str | None) -> str:
    """sha256 of the weights `load_teacher(name, checkpoint)` would load ("" if not found)."""
    from fkd_dali.labels.teacher import file_sha256, resolve_teacher_name

    _, entry = resolve_teacher_name(name)
    path = checkpoint or (entry.weights_path() if entry is not None else "")
    return file_sha256(path) if path and os.path.isfile(path) else ""


def store_identity(url: str) -> str:
    """A short hash of a store's attributes (dataset, teacher, crops, creation time)."""
    from fkd_dali.store.opening import open_store

    meta = open_store(url).meta
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def labelgen_device(device: str) -> str:
    """`generate_labels` takes auto/cpu/cuda; a loader device "cuda:N" means cuda."""
    return "cuda" if device.startswith("cuda") else device


def write_store_labels(index: DatasetIndex, out_root: str | os.PathLike[str], teacher: str,
                       checkpoint: str | None = None, crops_per_image: int = 16, top_k: int = 5, seed: int = 0,
                       device: str = "auto", threads: int = 2, batch_size: int = 256,
                       progress: bool = False) -> tuple[LabelAssetInfo, str]:
    """A soft-label store over `index` made by fkd-dali's label generation: `out_root/store.zarr`.

    Args:
        index: the images to label (its root is the dataset folder).
        out_root: the asset folder (store + manifest); rebuilt when the manifest differs.
        teacher, checkpoint: as `fkd-dali labels generate --teacher/--checkpoint`.
        crops_per_image, top_k, seed: the store's M, K and crop seed.
        device: "auto", "cpu" or "cuda[:N]".
        threads: DALI threads; batch_size: crops per teacher forward pass.

    Returns:
        The manifest and the store's path.
    """
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels.generate import generate_labels
    from fkd_dali.store.opening import open_store

    url = str(Path(out_root) / STORE_NAME)
    want = LabelAssetInfo("store", index.fingerprint, teacher, teacher_sha256(teacher, checkpoint), top_k, 0,
                          crops_per_image=crops_per_image, seed=seed)
    old = _read_manifest(out_root)
    if old is not None and replace(old, num_classes=0) == want and Path(url).is_dir():
        return old, url
    _forget_manifest(out_root)
    shutil.rmtree(url, ignore_errors=True)
    generate_labels(LabelGenConfig(data=index.root, out=url, teacher=teacher, checkpoint=checkpoint,
                                   crops_per_image=crops_per_image, top_k=top_k, seed=seed, batch_size=batch_size,
                                   crops_per_round=min(8, crops_per_image), device=labelgen_device(device),
                                   threads=max(1, threads), progress=progress))
    store = open_store(url)
    info = replace(want, num_classes=store.spec.label.num_classes,
                   teacher_sha256=store.spec.teacher.checkpoint_sha256)
    _write_manifest(out_root, info)
    return info, url


def export_store_fkd(store_url: str, out_root: str | os.PathLike[str]) -> LabelAssetInfo:
    """FKD per-image label files of every image of a store (`export_fkd`), reused when current.

    The manifest records the store's identity, so a regenerated store is exported again.
    """
    from fkd_dali.interop.fkd_store import export_fkd
    from fkd_dali.store.opening import open_store

    store = open_store(store_url)
    info = LabelAssetInfo("fkd", store.fingerprint, store.spec.teacher.name, store.spec.teacher.checkpoint_sha256,
                          store.spec.label.k, store.spec.label.num_classes, crops_per_image=store.crops_per_image,
                          seed=store.spec.crop.seed, source=store_identity(store_url))
    if _reusable(out_root, info):
        return info
    _start_over(out_root)
    export_fkd(store_url, out_root)
    _write_manifest(out_root, info)
    return info


def synthetic_labels(rng: np.random.Generator, n: int, m: int, k: int, num_classes: int,
                     image_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-K ids and probabilities that look like a teacher's on random crops.

    Per crop: K sorted logits with a random sharpness against a random mass for the other
    classes (top-1 median ~0.45, top-5 sum median ~0.8); the top-1 is the image's class for
    60% of crops, the others lie at small random distances from it (confusable classes
    have nearby ImageNet ids). Ids of one crop are distinct.
    """
    sharp = np.exp(rng.normal(0.6, 0.6, (n, m, 1)))
    logits = -np.sort(-rng.standard_normal((n, m, k)) * sharp, axis=-1)
    rest = rng.normal(1.0, 1.2, (n, m, 1))
    e = np.exp(logits - logits[..., :1])
    prob = e / (e.sum(-1, keepdims=True) + np.exp(rest - logits[..., :1]))
    top1 = np.where(rng.random((n, m)) < 0.6, image_class[:, None], rng.integers(0, num_classes, (n, m)))
    steps = np.cumsum(rng.integers(1, 60, (n, m, k - 1)), axis=-1)
    index = np.concatenate([top1[..., None], (top1[..., None] + steps) % num_classes], axis=-1)
    return index.astype(np.int16), prob.astype(np.float16)


def write_synthetic_labels(url: str, index: DatasetIndex, m: int, k: int, seed: int,
                           progress: bool = False) -> None:
    """A store of `index` with M=`m` crops per image and synthetic top-`k` labels, chunk by chunk.

    Boxes and flips come from the real crop sampler (`sample_crops`, the distribution label
    generation draws from), labels from `synthetic_labels`: a store of any size without
    running a teacher, for benchmarks that time reading and replaying a store, not its labels.
    """
    from fkd_dali.crops.boxes import CropDistribution, encode_boxes, sample_crops
    from fkd_dali.store.opening import create_store
    from fkd_dali.store.schema import CropLabels, LabelSpec, StoreSpec, TeacherSpec

    spec = StoreSpec(crops_per_image=m, crop=CropDistribution(seed=seed), label=LabelSpec(k=k),
                     teacher=TeacherSpec("synthetic", "none", "", (3, 224, 224), "bicubic",
                                         (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    store = create_store(url, index, spec)
    chunks: Iterable[int] = range(store.n_chunks)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="synthetic store", unit="chunk")
    for c in chunks:
        a, b = store.chunk_range(c)
        rng = np.random.default_rng([seed, c])
        boxes, flips = sample_crops(index.sizes[a:b], np.arange(a, b), np.arange(m), spec.crop)
        ids, prob = synthetic_labels(rng, b - a, m, k, 1000, index.classes[a:b])
        store.write_chunk(c, CropLabels(encode_boxes(boxes, index.sizes[a:b]), flips, ids, prob))


def synthetic_store(index: DatasetIndex, out_root: str | os.PathLike[str], crops_per_image: int, top_k: int,
                    seed: int = 0, progress: bool = False) -> tuple[LabelAssetInfo, str]:
    """`write_synthetic_labels` into `out_root/store.zarr`, reused while its manifest matches."""
    url = str(Path(out_root) / STORE_NAME)
    info = LabelAssetInfo("synthetic", index.fingerprint, "synthetic", "", top_k, 1000,
                          crops_per_image=crops_per_image, seed=seed)
    if _reusable(out_root, info) and Path(url).is_dir():
        return info, url
    _forget_manifest(out_root)
    shutil.rmtree(url, ignore_errors=True)
    write_synthetic_labels(url, index, crops_per_image, top_k, seed, progress)
    _write_manifest(out_root, info)
    return info, url


#: Crops per image of FKD's published soft labels (its recommended ImageNet labels).
FKD_PUBLISHED_CROPS = 500


def fkd_published_path(root: str | os.PathLike[str], rel_image_path: str) -> Path:
    """Where FKD's loader looks for an image's labels: `<root>/<class>/<file name up to its first dot>.tar`."""
    rel = Path(rel_image_path)
    return Path(root) / rel.parent / (rel.name.split(".")[0] + ".tar")


def write_fkd_published(store_url: str, out_root: str | os.PathLike[str],
                        crops_per_image: int = FKD_PUBLISHED_CROPS) -> LabelAssetInfo:
    """One label file per store image with FKD's published shape, as FKD's generator writes them; reused when current.

    Each file is `torch.save([coords, flip, labels])` of numpy arrays: coords (M, 4)
    float32 (i/H, j/W, h/H, w/W), flip (M,) bool, labels (M, 2, K) float32 (top-K ids as
    floats, their probabilities). Crops 0 .. M_store-1 are the store's, exactly (what
    fkd-dali replays); the others continue the store's crop sampler (same seed, further
    slots, so they are the crops label generation would have drawn) with synthetic top-K
    labels (`synthetic_labels`): a teacher pass over 500 crops per image takes hours on a
    CPU, and what a loader pays for a file (its bytes, the unpickling, the indexing) does
    not depend on the label values.

    Args:
        store_url: a complete store; its images, sizes, crop distribution and K are used.
        out_root: root of the `<class>/<stem>.tar` files (`fkd_published_path`).
        crops_per_image: M of the files (FKD publishes 500).
    """
    from fkd_dali.atomic import save_torch
    from fkd_dali.store.opening import open_store

    store = open_store(store_url)
    k, num_classes = store.spec.label.k, store.spec.label.num_classes
    info = LabelAssetInfo("fkd-published", store.fingerprint, store.spec.teacher.name,
                          store.spec.teacher.checkpoint_sha256, k, num_classes, crops_per_image=crops_per_image,
                          seed=store.spec.crop.seed, source=store_identity(store_url))
    if _reusable(out_root, info):
        return info
    _start_over(out_root)
    store.check_complete()
    index = store.load_index()
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_range(chunk)
        coords, flips, labels = _published_crops(store, index, start, stop, crops_per_image)
        for row, rel in enumerate(index.paths[start:stop]):
            save_torch([coords[row], flips[row], labels[row]], fkd_published_path(out_root, rel))
    _write_manifest(out_root, info)
    return info


def _published_crops(store: LabelStore, index: DatasetIndex, start: int, stop: int,
                     crops_per_image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """coords (n, M, 4) float32, flips (n, M) bool, labels (n, M, 2, K) float32 of images [start, stop)."""
    from fkd_dali.crops.boxes import boxes_to_fractions, encode_boxes, sample_crops

    stored = store.read_images(start, stop)
    sizes, ids = index.sizes[start:stop], np.arange(start, stop)
    boxes, flips = stored.boxes[:, :crops_per_image], stored.flips[:, :crops_per_image]
    top_i, top_p = stored.index[:, :crops_per_image], stored.prob[:, :crops_per_image].astype(np.float32)
    more = np.arange(store.crops_per_image, crops_per_image)
    if len(more):
        extra, extra_flips = sample_crops(sizes, ids, more, store.spec.crop)
        rng = np.random.default_rng([store.spec.crop.seed, start])
        extra_i, extra_p = synthetic_labels(rng, stop - start, len(more), store.spec.label.k,
                                            store.spec.label.num_classes, index.classes[start:stop])
        boxes = np.concatenate([boxes, encode_boxes(extra, sizes)], axis=1)
        flips = np.concatenate([flips, extra_flips], axis=1)
        top_i = np.concatenate([top_i, extra_i], axis=1)
        top_p = np.concatenate([top_p, extra_p.astype(np.float32)], axis=1)
    labels = np.stack([top_i.astype(np.float32), top_p], axis=2)
    return boxes_to_fractions(boxes, sizes), flips.astype(bool), labels


def write_relabel_maps(index: DatasetIndex, out_root: str | os.PathLike[str], teacher: Teacher,
                       top_k: int = 5, map_size: int = MAP_SIZE, batch_size: int = 8,
                       progress: bool = False) -> LabelAssetInfo:
    """One ReLabel map per image: the whole image, resized to map_size * 32 px, through the teacher.

    ReLabel ran EfficientNet-L2 on whole images at 475 px for its 15x15 maps; a
    stride-32 teacher at 480 px gives 15x15 without interpolating the feature map.

    Args:
        index: the images to label.
        out_root: root of the `<class>/<stem>.pt` files.
        teacher: a CNN teacher (see `fkd_dali.interop.relabel_maps.dense_label_map`).
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
    write_teacher_maps(index, out_root, teacher, top_k, map_size, batch_size, progress=progress)
    _write_manifest(out_root, info)
    return info


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


def _read_manifest(out_root: str | os.PathLike[str]) -> LabelAssetInfo | None:
    try:
        return LabelAssetInfo(**json.loads((Path(out_root) / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _reusable(out_root: str | os.PathLike[str], info: LabelAssetInfo) -> bool:
    return _read_manifest(out_root) == info


def _start_over(out_root: str | os.PathLike[str]) -> None:
    """Forget the manifest, then every file: the new store may not have the old one's images."""
    _forget_manifest(out_root)
    if Path(out_root).is_dir():
        shutil.rmtree(out_root)


def _forget_manifest(out_root: str | os.PathLike[str]) -> None:
    """Drop an outdated manifest first, so a crash mid-way never leaves a folder that claims to match."""
    (Path(out_root) / MANIFEST).unlink(missing_ok=True)


def _write_manifest(out_root: str | os.PathLike[str], info: LabelAssetInfo) -> None:
    Path(out_root).mkdir(parents=True, exist_ok=True)
    (Path(out_root) / MANIFEST).write_text(json.dumps(asdict(info), indent=1))
