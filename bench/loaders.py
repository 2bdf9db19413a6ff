"""The loaders compared by `bench loaders`, each behind one contract, looked up in `LOADERS`.

A loader is built from a `LoaderSpec` (same files, batch size in crops, workers) and
yields `(images, targets)` forever: images (B, 3, S, S) float32 normalized, targets
(B,) int64 class ids (hard) or (B, C) float32 rows (soft), B = batch size in crops,
on the spec's device (the training device: batches are delivered where a training
step would use them). Building and `close()` are not timed; everything between two
batches is.

Baselines, re-implemented from the papers' descriptions:
- `fkd-reference` (Shen & Xing 2021): DataLoader workers decode each image once with
  PIL, load its label file (all M crops: FKD publishes M=500, top-5, as numpy arrays in a
  torch-saved list, loaded with a full unpickle), cut m random stored crops (resize,
  flip, ToTensor, Normalize); the main process recovers dense soft labels on the CPU.
- `relabel` (Yun et al. 2021): workers decode with PIL, random-resized-crop with
  coordinates, flip, and read the image's [2, K, 15, 15] label map; per batch the main
  process scatters to dense maps, RoI-aligns each box to 1x1 and softmaxes.
- `torchvision`: ImageFolder + RandomResizedCrop + flip, hard labels.
- `dali`: DALI file reader + random-resized-crop decoder + flip + normalize, hard
  labels — the decoding ceiling without labels.

fkd-dali: `fkd-dali` (`fkd_dali.loaders.replay.ReplayLoader` + `recover_labels`) and
`fkd-dali-nolabels` (the same replay without labels, for the label overhead). On a
GPU the replay delivers float16 crops, as training uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Protocol

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder

from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import RECOVERY
from fkd_dali.errors import ConfigError
from fkd_dali.interop.fkd_files import read_fkd_file
from fkd_dali.interop.relabel_maps import label_map_path, read_label_map, relabel_targets
from fkd_dali.registry import Registry
from fkd_dali.store.checks import check_dataset

from .labels import CROP_RATIO, CROP_SCALE, fkd_published_path, load_pil_rgb

if TYPE_CHECKING:
    from nvidia.dali.pipeline import Pipeline

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoaderSpec:
    """What every loader in one benchmark run shares.

    Attributes:
        index: the images (all loaders read the same files).
        batch_size: crops per batch; multi-crop loaders load batch_size // m images.
        workers: DataLoader worker processes, or DALI threads.
        m: crops per image for multi-crop loaders (1 elsewhere).
        num_classes: width C of soft targets (the teacher's classes).
        fkd_labels: root of the FKD per-image label files (`<class>/<stem>.tar`).
        fkd_unpickle: the FKD files are this benchmark's own (`bench.labels.write_fkd_published`)
            and are loaded as FKD's loader loads its files, with a full unpickle; files
            from elsewhere go through fkd-dali's safe reader instead.
        label_maps: root of the ReLabel maps.
        store: the fkd-dali soft-label store (for the replay loader).
        device: "cpu" or a CUDA device: where batches are delivered. With CUDA the
            DataLoaders pin memory and DALI decodes with its `mixed` decoder.
    """

    index: DatasetIndex = field(repr=False, compare=False)
    batch_size: int
    workers: int
    m: int = 1
    image_size: int = 224
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    seed: int = 0
    fkd_labels: str | None = None
    fkd_unpickle: bool = False
    label_maps: str | None = None
    store: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.batch_size < 1 or self.workers < 0 or self.m < 1:
            raise ConfigError(f"need batch size >= 1, workers >= 0, m >= 1; got {self.batch_size}, "
                              f"{self.workers}, {self.m}")

    def images_per_batch(self) -> int:
        if self.batch_size % self.m:
            raise ConfigError(f"batch size {self.batch_size} (crops) is not a multiple of m={self.m}; "
                              "pick a batch size divisible by every --m")
        return self.batch_size // self.m


class BenchLoader(Protocol):
    """An endless source of (images, targets) batches."""

    def batches(self) -> Iterator[Batch]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LoaderInfo:
    """A registered loader: how to build it and what it needs.

    Attributes:
        factory: builds the loader from a spec.
        group: "baseline"; "fkd-dali" for the rows whose ratios to baselines are reported;
            "ablation" for variants of fkd-dali measured only against it.
        multi_crop: runs once per m of `--m` (several crops per decoded image).
        needs: assets to prepare first: "fkd_labels", "label_maps", "store".
        targets: "hard" or "soft".
    """

    factory: Callable[[LoaderSpec], BenchLoader]
    group: str = "baseline"
    multi_crop: bool = False
    needs: tuple[str, ...] = ()
    targets: str = "hard"
    description: str = ""


LOADERS: Registry[LoaderInfo] = Registry("loader")


def create_loader(name: str, spec: LoaderSpec) -> BenchLoader:
    """Build the registered loader `name` (raises ConfigError listing the valid names)."""
    return LOADERS.get(name).factory(spec)


class EndlessSampler(Sampler[int]):
    """Fresh random permutations back to back, forever: no epoch-end drain inside a timed window."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=gen).tolist()


class TorchLoader:
    """A DataLoader over an endless sampler plus main-process post-processing of each batch."""

    def __init__(self, dataset: Dataset, spec: LoaderSpec, images_per_batch: int,
                 post: Callable[[list[torch.Tensor]], Batch]) -> None:
        self.device = torch.device(spec.device)
        self.loader = DataLoader(dataset, batch_size=images_per_batch,
                                 sampler=EndlessSampler(len(dataset), spec.seed),  # type: ignore[arg-type]
                                 num_workers=spec.workers, pin_memory=self.device.type == "cuda")
        self.post = post
        self._it: Iterator | None = None

    def batches(self) -> Iterator[Batch]:
        self._it = iter(self.loader)
        for batch in self._it:
            images, targets = self.post(batch)
            yield images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def close(self) -> None:
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._it = None


def _to_input(crop, spec: LoaderSpec) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(crop), spec.mean, spec.std)


# --- FKD reference -------------------------------------------------------------------------

class FkdFile(NamedTuple):
    """One FKD label file as FKD's loader uses it: arrays indexed by crop, labels left packed."""

    coords: np.ndarray  # (M, 4) float32 (i/H, j/W, h/H, w/W)
    flip: np.ndarray  # (M,) bool
    labels: np.ndarray  # (M, 2, K) float32: top-K class ids as floats, their probabilities


def load_fkd_file(path: str, unpickle: bool) -> FkdFile:
    """Load one FKD label file.

    With `unpickle`, a full `torch.load` (weights_only=False) as FKD's loader does: only
    for this benchmark's own files (`bench.labels.write_fkd_published`), which hold numpy
    arrays that a weights-only load refuses; a pickle can run code, so never for files
    from elsewhere. Otherwise fkd-dali's safe reader (`read_fkd_file`), repacked.
    """
    if unpickle:
        coords, flip, labels = torch.load(path, map_location="cpu", weights_only=False)
        return FkdFile(np.asarray(coords), np.asarray(flip), np.asarray(labels))
    safe = read_fkd_file(path)
    return FkdFile(safe.coords, safe.flip, np.stack([safe.index.astype(np.float32), safe.prob], axis=1))


class FkdReferenceDataset(Dataset):
    """Per image: PIL decode once, load its FKD file (all M crops), cut m random stored crops."""

    def __init__(self, spec: LoaderSpec) -> None:
        if not spec.fkd_labels:
            raise ConfigError("the fkd-reference loader needs FKD label files (LoaderSpec.fkd_labels)")
        self.spec = spec
        self.paths = [spec.index.abspath(i) for i in range(len(spec.index))]
        self.labels = [str(fkd_published_path(spec.fkd_labels, p)) for p in spec.index.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> FkdFile:
        """The label file of image `i`."""
        return load_fkd_file(self.labels[i], self.spec.fkd_unpickle)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m, 3, S, S) crops, (m, 2, K) labels (ids as floats, probabilities), (m,) slots used."""
        img = load_pil_rgb(self.paths[i])
        labels = self.load(i)
        if self.spec.m > len(labels.labels):
            raise ConfigError(f"m={self.spec.m} exceeds the {len(labels.labels)} crops in {self.labels[i]}")
        slots = torch.randperm(len(labels.labels))[: self.spec.m]  # FKD: m random crops of the M stored
        crops, targets = self.cut(img, labels, slots.numpy())
        return crops, targets, slots

    def cut(self, img: Image.Image, labels: FkdFile, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops of `slots` (resized, flipped, normalized) and their (len, 2, K) labels."""
        coords, flip = labels.coords, labels.flip
        size = [self.spec.image_size] * 2
        crops = []
        for s in slots.tolist():
            y, x, h, w = (coords[s] * [img.height, img.width, img.height, img.width]).round().astype(int)
            crop = TF.resized_crop(img, int(y), int(x), int(h), int(w), size, antialias=True)
            crops.append(_to_input(TF.hflip(crop) if flip[s] else crop, self.spec))
        return torch.stack(crops), torch.from_numpy(np.ascontiguousarray(labels.labels[slots], np.float32))


def fkd_soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """FKD's marginal smoothing: top-K probabilities kept, the rest spread evenly over the other classes.

    Args:
        labels: (B, 2, K) class ids (as floats) and probabilities.
    """
    index, prob = labels[:, 0].long(), labels[:, 1]
    k = index.shape[1]
    rest = (1.0 - prob.sum(dim=1, keepdim=True)).clamp_min(0) / (num_classes - k)
    return rest.expand(-1, num_classes).clone().scatter_(1, index, prob)


def _fkd_reference(spec: LoaderSpec) -> BenchLoader:
    def post(batch: list[torch.Tensor]) -> Batch:
        crops, labels, _ = batch
        return crops.flatten(0, 1), fkd_soft_targets(labels.flatten(0, 1), spec.num_classes)

    return TorchLoader(FkdReferenceDataset(spec), spec, spec.images_per_batch(), post)


# --- ReLabel ---------------------------------------------------------------------------------

class ReLabelDataset(Dataset):
    """Per crop: PIL decode, random-resized-crop with its relative box, flip, and the image's label map."""

    def __init__(self, spec: LoaderSpec, scale: tuple[float, float] = CROP_SCALE,
                 ratio: tuple[float, float] = CROP_RATIO) -> None:
        if not spec.label_maps:
            raise ConfigError("the relabel loader needs label maps (LoaderSpec.label_maps)")
        self.spec = spec
        self.scale, self.ratio = list(scale), list(ratio)
        self.paths = [spec.index.abspath(i) for i in range(len(spec.index))]
        self.maps = [str(label_map_path(spec.label_maps, p)) for p in spec.index.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(3, S, S) crop, its image's (2, K, S', S') map, and its box (y, x, h, w) as fractions."""
        img = load_pil_rgb(self.paths[i])
        y, x, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        crop = TF.resized_crop(img, y, x, h, w, [self.spec.image_size] * 2, antialias=True)
        if torch.rand(1).item() < 0.5:
            crop = TF.hflip(crop)  # a flip moves no box: the pooled label stays the same
        box = torch.tensor([y / img.height, x / img.width, h / img.height, w / img.width], dtype=torch.float32)
        return _to_input(crop, self.spec), read_label_map(self.maps[i]), box


def _relabel(spec: LoaderSpec) -> BenchLoader:
    def post(batch: list[torch.Tensor]) -> Batch:
        images, maps, boxes = batch  # ReLabel recovers on the training device
        device = torch.device(spec.device)
        return images, relabel_targets(maps.to(device, non_blocking=True), boxes.to(device), spec.num_classes)

    return TorchLoader(ReLabelDataset(spec), spec, spec.batch_size, post)


# --- vanilla torchvision and DALI ------------------------------------------------------------

def _torchvision(spec: LoaderSpec) -> BenchLoader:
    transform = T.Compose([T.RandomResizedCrop(spec.image_size, scale=CROP_SCALE, ratio=CROP_RATIO),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    dataset = ImageFolder(spec.index.root, transform=transform)
    return TorchLoader(dataset, spec, spec.batch_size, lambda b: (b[0], b[1]))


def make_vanilla_pipeline(files: list[str], labels: list[int], spec: LoaderSpec) -> "Pipeline":
    """DALI's own random-resized-crop training pipeline (decode only the crop, resize, flip, normalize)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = spec.device != "cpu"
    device_id = (torch.device(spec.device).index or 0) if gpu else None

    @pipeline_def(batch_size=spec.batch_size, num_threads=max(1, spec.workers), device_id=device_id,
                  seed=spec.seed)
    def vanilla():
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=True, name="Reader")
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                               random_area=list(CROP_SCALE), random_aspect_ratio=list(CROP_RATIO),
                                               num_attempts=10, adjust_orientation=False)
        images = fn.resize(images, resize_x=spec.image_size, resize_y=spec.image_size, antialias=True)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=[255 * v for v in spec.mean], std=[255 * v for v in spec.std],
                                          mirror=fn.random.coin_flip())
        return images, label

    return vanilla()


class DaliVanillaLoader:
    """Runs the vanilla pipeline and copies each batch into torch tensors (as DALI's iterator does)."""

    def __init__(self, spec: LoaderSpec) -> None:
        index = spec.index
        self.device = torch.device(spec.device)
        self.pipe = make_vanilla_pipeline([index.abspath(i) for i in range(len(index))],
                                          [int(c) for c in index.classes], spec)
        self.pipe.build()

    def batches(self) -> Iterator[Batch]:
        while self.pipe is not None:
            images, labels = self.pipe.run()
            targets = torch.from_numpy(np.array(labels.as_tensor())).view(-1).long()
            if self.device.type == "cpu":
                yield torch.from_numpy(np.array(images.as_tensor())), targets
                continue
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = images.as_tensor()
            out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
            yield out, targets.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.pipe = None


# --- fkd-dali ----------------------------------------------------------------------------

class FkdDaliLoader:
    """fkd-dali's replay over passes 0, 1, 2, ... back to back, as training draws them: the loader
    `fkd-dali train` and `create_loader` build (`fkd_dali.loaders.fkd_loader.replay_loader`).

    DALI decodes each image once and cuts its m stored crops of the pass (the pass
    table, read in a background thread during the previous pass, gives boxes and
    flips); the crops' stored top-K labels are gathered by image id and recovered to
    dense targets (`marginal_smoothing`, FKD's label) on the spec's device. Without
    labels, no label field is read or gathered and the targets are the images' folder
    classes (one index op), which isolates the cost of attaching soft labels.
    """

    def __init__(self, spec: LoaderSpec, with_labels: bool = True, recovery: str = RECOVERY) -> None:
        from fkd_dali.loaders.fkd_loader import FkdLoader, replay_loader
        from fkd_dali.loaders.replay import ReplayLoader
        from fkd_dali.loaders.sources import StoreCrops
        from fkd_dali.store.opening import open_checked_store
        from fkd_dali.targets.recovery import Recovery

        if not spec.store:
            raise ConfigError("the fkd-dali loader needs a soft-label store (LoaderSpec.store)")
        store, _ = open_checked_store(spec.store)  # complete, no chunk file missing
        check_dataset(store, spec.index)
        device = torch.device(spec.device)
        pixels = dict(mean=spec.mean, std=spec.std, interpolation="bilinear", seed=spec.seed,
                      threads=max(1, spec.workers))
        if with_labels:
            self.loader: FkdLoader | None = replay_loader(spec.index, store, spec.m, spec.batch_size,
                                                          spec.image_size, device, Recovery(recovery), **pixels)
        else:
            classes = torch.from_numpy(np.asarray(spec.index.classes, dtype=np.int64))
            replay = ReplayLoader(StoreCrops(store, spec.index.sizes, fields=frozenset()), spec.index, spec.m,
                                  spec.batch_size, spec.image_size, device=device, **pixels)
            self.loader = FkdLoader(replay, lambda b: classes[b.meta[:, 0]].to(device, non_blocking=True),
                                    store.spec.label.num_classes)

    def batches_with_meta(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, targets, meta): meta (B, 2) is each crop's (image id, store slot)."""
        pass_idx = 0
        while self.loader is not None:
            for batch in self.loader.pass_batches(pass_idx):
                yield batch.images, batch.target, batch.meta
            pass_idx += 1

    def batches(self) -> Iterator[Batch]:
        for images, targets, _ in self.batches_with_meta():
            yield images, targets

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
            self.loader = None


LOADERS.add("torchvision", LoaderInfo(_torchvision, description="ImageFolder + RandomResizedCrop + flip, "
                                      "PIL, DataLoader workers, hard labels"))
LOADERS.add("dali", LoaderInfo(DaliVanillaLoader, description="DALI file reader + random-resized-crop "
                               "decoder + flip + normalize, hard labels"))
LOADERS.add("relabel", LoaderInfo(_relabel, needs=("label_maps",), targets="soft",
                                  description="ReLabel: PIL crop per sample + [2,K,15,15] map file, "
                                  "scatter + RoI align + softmax per batch"))
LOADERS.add("fkd-reference", LoaderInfo(_fkd_reference, multi_crop=True, needs=("fkd_labels",),
                                        targets="soft", description="FKD: PIL decode once per image, m stored "
                                        "crops from its label file, CPU label recovery in the main process"))
LOADERS.add("fkd-dali", LoaderInfo(FkdDaliLoader, group="fkd-dali", multi_crop=True, needs=("store",),
                                   targets="soft", description="fkd-dali replay: DALI decodes each image once, m "
                                   "stored crops from the pass table, top-K labels recovered on the device"))
LOADERS.add("fkd-dali-nolabels", LoaderInfo(lambda spec: FkdDaliLoader(spec, with_labels=False), group="ablation",
                                            multi_crop=True, needs=("store",), description="the fkd-dali replay "
                                            "without gathering or recovering labels (label overhead)"))
