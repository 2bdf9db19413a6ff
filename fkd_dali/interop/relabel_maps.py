"""ReLabel-style label maps (Yun et al., "Re-labeling ImageNet", CVPR 2021): make, store, load, pool.

A label map is a teacher's classifier applied at every position of its last feature
map, kept as the top-K scores (pre-softmax logits) and class ids per position: one
file per image holding a float32 tensor [2, K, S, S] ([0] = scores, [1] = ids as
floats), S = 15 as in ReLabel (EfficientNet-L2 at 475 px), or the teacher's native side
(input side / stride). A folder of maps made by `write_label_maps` (`fkd-dali labels
relabel-maps`) also holds `label_maps.json`: the teacher, K, S and the dataset's
fingerprint, so training can refuse maps of another dataset.

A crop's label is the dense map (zeros outside the top-K) RoI-aligned over the crop's
box to 1x1, then softmaxed. Boxes use FKD's relative (y, x, h, w) convention, so one box
means the same region in every module. Where naver-ai/relabel_imagenet differs: its
`relabel_batch_fn` turns the crop's (y, x, h, w) into (y0, x0, y1, x1) and hands that to
`roi_align`, which reads (x0, y0, x1, y1), so it pools the crop's transpose across the
map's diagonal; here x and y are in roi_align's order. Flips move no box there or here
(the pooled label of a flipped crop is its unflipped region's), and its `- 0.5` offset
with aligned=False is roi_align's aligned=True used here.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from fkd_dali.atomic import save_text_atomic, save_torch
from fkd_dali.errors import ConfigError, LabelStoreError, TeacherError

MAP_SIZE = 15  # ReLabel's 15x15 maps (EfficientNet-L2 at 475 px, stride 32)
LABEL_MAP_SUFFIX = ".pt"


@torch.inference_mode()
def dense_label_map(model: torch.nn.Module, images: torch.Tensor, k: int = 5,
                    size: int | None = MAP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K of the classifier applied at every position of `model`'s last feature map.

    The map from `model.forward_features` is adaptive-average-pooled to size x size
    when it has another size (give the teacher size * stride pixels, e.g. 480 for a
    stride-32 CNN, to avoid that). Each position's feature vector then goes through
    `model.forward_head` as a 1x1 "image": timm heads start with global pooling, which
    is the identity on 1x1, so for heads that are pooling + linear (ResNet,
    EfficientNet, ...) this is exactly the classifier used as a 1x1 convolution, and
    heads with extra layers (MobileNetV3's conv_head) are applied per position too.

    Args:
        model: a timm CNN in eval mode.
        images: (B, 3, H, W) normalized as the teacher expects.
        k: classes kept per position.
        size: side S of the returned maps; None keeps the feature map's own side (the
            teacher's native resolution: input side / stride).

    Returns:
        scores (B, k, S, S) float32 logits, most probable first, and class ids
        (B, k, S, S) int64.

    Raises:
        TeacherError: the model's features are not a (B, C, H, W) map (e.g. a ViT).
        ConfigError: k exceeds the number of classes.
    """
    feats = model.forward_features(images)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise TeacherError(f"label maps need a CNN whose forward_features gives (B, C, H, W); got {shape}")
    if size is None:
        size = int(feats.shape[-1])
        if feats.shape[-2] != size:
            raise ConfigError(f"label maps are square: the teacher's feature map is {tuple(feats.shape[-2:])}; "
                              "give it square images")
    if feats.shape[-2:] != (size, size):
        feats = F.adaptive_avg_pool2d(feats, size)
    b, c = feats.shape[:2]
    per_position = feats.permute(0, 2, 3, 1).reshape(b * size * size, c, 1, 1)
    logits = model.forward_head(per_position).float()  # (B*S*S, classes)
    if k > logits.shape[1]:
        raise ConfigError(f"top-k {k} exceeds the teacher's {logits.shape[1]} classes")
    logits = logits.reshape(b, size, size, -1).permute(0, 3, 1, 2)
    scores, ids = logits.topk(k, dim=1)
    return scores.contiguous(), ids.contiguous()


def label_map_path(root: str | os.PathLike[str], rel_image_path: str) -> Path:
    """`<root>/<class>/<stem>.pt` for an image at `<class>/<file>` (one map per image)."""
    rel = Path(rel_image_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"image path {rel_image_path!r} must be relative to the dataset root")
    return Path(root) / rel.parent / (rel.stem + LABEL_MAP_SUFFIX)


def write_label_map(path: str | os.PathLike[str], scores: torch.Tensor, indices: torch.Tensor) -> None:
    """Save one image's map as a float32 tensor [2, K, S, S] (temp file + rename).

    Args:
        path: destination; parent folders are created.
        scores: (K, S, S) top-K logits per position.
        indices: (K, S, S) their class ids (stored as floats, exact below 2**24).
    """
    if scores.ndim != 3 or scores.shape != indices.shape:
        raise LabelStoreError(f"label map for {path}: scores {tuple(scores.shape)} and indices "
                              f"{tuple(indices.shape)} must both be (K, S, S)")
    packed = torch.stack([scores.float(), indices.float()]).cpu().contiguous()
    save_torch(packed, path)


def read_label_map(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load one map as float32 [2, K, S, S].

    Raises:
        LabelStoreError: the file is missing, unreadable, or not a [2, K, S, S] tensor.
    """
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LabelStoreError(f"label map {path} does not exist") from None
    except Exception as e:
        raise LabelStoreError(f"label map {path} is not a readable torch file ({type(e).__name__})") from e
    if not isinstance(obj, torch.Tensor) or obj.ndim != 4 or obj.shape[0] != 2:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise LabelStoreError(f"label map {path} holds {shape}, expected a tensor [2, K, S, S]")
    return obj.float()


def relabel_targets(maps: torch.Tensor, boxes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft targets of a batch of crops: scatter to dense maps, RoI-align the box to 1x1, softmax.

    RoI align runs with `aligned=True` and adaptive sampling, so map cells are treated
    as pixels with centres at integer coordinates: a whole-image box samples every
    cell centre once and its label is exactly softmax(mean over the dense map).
    Classes outside a position's top-K count as score 0 there, as in ReLabel.

    Args:
        maps: (B, 2, K, S, S) per-crop label maps (the map of the crop's image).
        boxes: (B, 4) crop boxes (y, x, h, w) as fractions of the image height/width.
        num_classes: C, width of the targets.

    Returns:
        (B, C) float32 rows summing to 1, on the device of `maps`.

    Raises:
        ConfigError: shapes disagree.
        LabelStoreError: a map holds class ids outside [0, C).
    """
    if maps.ndim != 5 or maps.shape[1] != 2 or boxes.shape != (maps.shape[0], 4):
        raise ConfigError(f"relabel_targets needs maps (B, 2, K, S, S) and boxes (B, 4); got "
                          f"{tuple(maps.shape)} and {tuple(boxes.shape)}")
    b, _, _, sh, sw = maps.shape
    ids = maps[:, 1].round().long()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_classes:
        raise LabelStoreError(f"label maps hold class ids in [{lo}, {hi}], outside [0, {num_classes})")
    dense = maps.new_zeros(b, num_classes, sh, sw, dtype=torch.float32)
    dense.scatter_(1, ids, maps[:, 0].float())
    boxes = boxes.to(device=maps.device, dtype=torch.float32)
    y, x, h, w = boxes.unbind(1)
    rois = torch.stack([torch.arange(b, device=maps.device, dtype=torch.float32),
                        x * sw, y * sh, (x + w) * sw, (y + h) * sh], dim=1)
    pooled = roi_align(dense, rois, output_size=1, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return pooled.flatten(1).softmax(dim=1)


# -- a folder of maps: write once, load for training ------------------------------------
MAPS_MANIFEST = "label_maps.json"
CNN_STRIDE = 32  # output stride of timm's classification CNNs: map side = input side / 32


@dataclass(frozen=True)
class LabelMapsInfo:
    """What a folder of label maps holds (its `label_maps.json`): checked before training on it."""

    dataset_fingerprint: str
    n_images: int
    teacher: str
    teacher_sha256: str
    num_classes: int
    top_k: int
    map_size: int
    input_size: int  # side of the whole image as the teacher saw it


def read_maps_info(root: str | os.PathLike[str]) -> LabelMapsInfo:
    """The manifest of a label-map folder; a `ConfigError` naming the folder and the remedy otherwise."""
    path = Path(root) / MAPS_MANIFEST
    try:
        return LabelMapsInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"--label-maps {root}: no {MAPS_MANIFEST} there, so no complete set of label maps; make "
                          "one with `fkd-dali labels relabel-maps DATA --out DIR`") from None
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"--label-maps {root}: {MAPS_MANIFEST} is unreadable ({e}); make the maps again with "
                          "`fkd-dali labels relabel-maps`") from e


def write_label_maps(paths: Iterable[str], root: str | os.PathLike[str], out_root: str | os.PathLike[str],
                     model: torch.nn.Module, to_input: Callable[[str], torch.Tensor], info: LabelMapsInfo,
                     batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> LabelMapsInfo:
    """One map per image of `paths` (relative to `root`) under `out_root`, then the manifest `info` last.

    `to_input(path)` gives the whole image as the teacher takes it ((3, H, W), normalised);
    the manifest is removed first and written after the last map, so a folder with a
    manifest is always complete. `on_batch(n)` reports progress.
    """
    out = Path(out_root)
    (out / MAPS_MANIFEST).unlink(missing_ok=True)
    paths = list(paths)
    size = None if info.map_size == 0 else info.map_size
    for a in range(0, len(paths), batch_size):
        part = paths[a:a + batch_size]
        images = torch.stack([to_input(os.path.join(root, p)) for p in part])
        scores, ids = dense_label_map(model, images, k=info.top_k, size=size)
        for n, rel in enumerate(part):
            write_label_map(label_map_path(out, rel), scores[n], ids[n])
        if on_batch is not None:
            on_batch(len(part))
    if size is None:  # the native side, known once the teacher has run
        info = LabelMapsInfo(**{**asdict(info), "map_size": int(scores.shape[-1])})
    out.mkdir(parents=True, exist_ok=True)
    save_text_atomic(out / MAPS_MANIFEST, json.dumps(asdict(info), indent=1))
    return info


@dataclass(frozen=True)
class LabelMaps:
    """Every image's map in memory, rows in dataset order: scores (N, K, S, S) float16, ids (N, K, S, S) int16."""

    info: LabelMapsInfo
    scores: torch.Tensor
    ids: torch.Tensor

    def of_images(self, image_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 2, K, S, S) float32 maps of the given images on `device`, as `relabel_targets` takes them."""
        rows = image_ids.to(torch.int64).cpu()
        return torch.stack([self.scores[rows], self.ids[rows]], dim=1).to(device, torch.float32, non_blocking=True)


def load_label_maps(root: str | os.PathLike[str], paths: list[str], fingerprint: str) -> LabelMaps:
    """The maps of a dataset (its image `paths` and `fingerprint`), checked against the folder's manifest.

    Raises:
        ConfigError: no manifest (an incomplete folder), or maps of another dataset.
        LabelStoreError: a map file missing, unreadable or of another shape than the manifest says.
    """
    info = read_maps_info(root)
    if info.dataset_fingerprint != fingerprint or info.n_images != len(paths):
        raise ConfigError(f"--label-maps {root} were made for another dataset ({info.n_images} images, fingerprint "
                          f"{info.dataset_fingerprint[:12]}; --data has {len(paths)}, {fingerprint[:12]}): make maps "
                          "for this folder with `fkd-dali labels relabel-maps`")
    k, s = info.top_k, info.map_size
    scores = torch.empty(len(paths), k, s, s, dtype=torch.float16)
    ids = torch.empty(len(paths), k, s, s, dtype=torch.int16)
    for i, rel in enumerate(paths):
        path = label_map_path(root, rel)
        packed = read_label_map(path)
        if tuple(packed.shape) != (2, k, s, s):
            raise LabelStoreError(f"label map {path} is {tuple(packed.shape)}; {MAPS_MANIFEST} says (2, {k}, {s}, {s}): "
                                  "make the maps again")
        scores[i], ids[i] = packed[0], packed[1].round()
    return LabelMaps(info, scores, ids)
