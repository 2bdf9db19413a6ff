"""ReLabel (`fkd-dali train --labels relabel --label-maps DIR`): each fresh crop's label is its image's map pooled over it.

The baseline FKD compares itself with (Yun et al., CVPR 2021): crops are drawn anew each
pass (`fkd_dali.loaders.sources.FreshCrops`, the same counter-based RandomResizedCrop as
online KD, cut by the same replay graph), and a crop's target is the teacher's dense
label map of the whole image (top-K scores per position, made once by `fkd-dali labels
relabel-maps`) RoI-aligned over the crop's box and softmaxed
(`fkd_dali.interop.relabel_maps.relabel_targets`, which notes where ReLabel's own code
differs). All maps are held in host memory (K = 5, S = 15: 4.5 KB per image, 5.8 GB for
ImageNet); a step gathers its images' maps and pools them on the training device.
"""
from __future__ import annotations

import torch

from fkd_dali.interop.relabel_maps import LabelMaps, relabel_targets
from fkd_dali.loaders.batch import CropBatch


class RelabelTargets:
    """Targets of a batch of fresh crops from label maps (a `TargetFn`); the batch must carry "box"."""

    def __init__(self, maps: LabelMaps, device: torch.device) -> None:
        self.maps, self.device = maps, device
        self.num_classes = maps.info.num_classes

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        maps = self.maps.of_images(batch.meta[:, 0], self.device)
        return relabel_targets(maps, batch.field("box"), self.num_classes)

