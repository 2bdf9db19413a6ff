"""`fkd-dali labels relabel-maps`: ReLabel's dense label maps of a folder, made by a timm CNN teacher.

Each whole image is decoded (PIL, RGB, as ReLabel's loader decodes), resized to the
teacher's input side (its native resolution: maps of side input / 32) or to S x 32 px for
S x S maps (ReLabel ran EfficientNet-L2 at 475 px for 15 x 15), normalised as the teacher
expects and run through `dense_label_map`; files and manifest are written by
`fkd_dali.interop.relabel_maps.write_label_maps`.
"""
from __future__ import annotations

import os

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from fkd_dali.config import LabelMapsConfig
from fkd_dali.data.index import DatasetIndex, build_index
from fkd_dali.dist import dist_env, pick_device
from fkd_dali.interop.relabel_maps import CNN_STRIDE, LabelMapsInfo, write_label_maps
from fkd_dali.labels.teacher import Teacher, load_teacher


def whole_image_input(teacher: Teacher, side: int, device: torch.device):
    """path -> (3, side, side) tensor of the whole image as the teacher takes it, on `device`."""
    modes = {m.value for m in InterpolationMode}
    interp = InterpolationMode(teacher.interpolation) if teacher.interpolation in modes else InterpolationMode.BILINEAR

    def to_input(path: str) -> torch.Tensor:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        image = TF.resize(rgb, [side, side], interp, antialias=True)
        return TF.normalize(TF.to_tensor(image), teacher.mean, teacher.std).to(device)

    return to_input


def make_label_maps(cfg: LabelMapsConfig) -> LabelMapsInfo:
    """Write the label maps of `cfg.data` to `cfg.out` (one per image, then label_maps.json); returns the manifest.

    Raises:
        DatasetIndexError: `cfg.data` is not an image folder.
        TeacherError: unknown teacher, missing weights, or not a CNN (no feature map).
    """
    index = build_index(cfg.data)
    teacher = load_teacher(cfg.teacher, cfg.checkpoint, cfg.num_classes)
    device = pick_device(cfg.device, dist_env().local_rank)
    return write_teacher_maps(index, cfg.out, teacher, cfg.top_k, cfg.map_size, cfg.batch_size, device,
                              cfg.progress)


def write_teacher_maps(index: DatasetIndex, out_root: str | os.PathLike[str], teacher: Teacher, top_k: int = 5,
                       map_size: int | None = None, batch_size: int = 16, device: torch.device | None = None,
                       progress: bool = False) -> LabelMapsInfo:
    """The maps of every image of `index` by `teacher` (see the module docstring for `map_size`)."""
    device = device or torch.device("cpu")
    side = int(teacher.input_size[-1]) if map_size is None else map_size * CNN_STRIDE
    model = teacher.model.to(device).eval()
    info = LabelMapsInfo(dataset_fingerprint=index.fingerprint, n_images=len(index), teacher=teacher.name,
                         teacher_sha256=teacher.checkpoint_sha256, num_classes=teacher.num_classes, top_k=top_k,
                         map_size=map_size or 0, input_size=side)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(index), desc="label maps", unit="img")
    try:
        return write_label_maps(index.paths, index.root, out_root, model, whole_image_input(teacher, side, device),
                                info, batch_size, on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
