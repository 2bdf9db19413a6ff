"""`fkd-dali demo`: the end-to-end example on real photos (see fkd_dali.demo)."""
from __future__ import annotations

import argparse

from fkd_dali.cli._common import check_writable, config_from_args, defaults_of
from fkd_dali.config import DemoConfig
from fkd_dali.defaults import DEVICE_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = defaults_of(DemoConfig)
    p = sub.add_parser("demo", help="label real photos with a real teacher, train a student, report",
                       description="Builds a small real-photo dataset, generates FKD labels with EfficientNet-Lite0, "
                                   "trains a small student and reports student-teacher agreement. No downloads. "
                                   "The held-out images are new crops of the same 7 photos (one per class) as the "
                                   "training images: the report shows that training works, not generalisation.")
    p.add_argument("--output", "-o", default=d("output"), help="working folder (default %(default)s)")
    p.add_argument("--images-per-class", type=int, default=d("images_per_class"))
    p.add_argument("--crops-per-image", "-M", type=int, default=d("crops_per_image"))
    p.add_argument("--student", default=d("student"), help="timm model name (default %(default)s)")
    p.add_argument("--image-size", type=int, default=d("image_size"))
    p.add_argument("--num-crops", "-m", type=int, default=d("num_crops"))
    p.add_argument("--passes", type=int, default=d("passes"))
    p.add_argument("--batch-size", "-b", type=int, default=d("batch_size"))
    p.add_argument("--lr", type=float, default=d("lr"))
    p.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    p.add_argument("--threads", "-j", type=int, default=d("threads"))
    p.add_argument("--seed", type=int, default=d("seed"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_demo)


def _passive_openmp() -> None:
    """Let torch's idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    The demo runs on whatever CPU the user has, often shared with other work. Spinning
    threads then fight the other jobs and DALI's threads for the cores: on a 2-core VM at
    load average 4.5 the whole demo took 521 s and 459 CPU-seconds with OpenMP's default
    policy, 248 s and 254 CPU-seconds with PASSIVE, with identical results. It must be set
    before torch starts OpenMP, hence here, before the demo imports torch.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig, args)
    check_writable("--output", cfg.output)
    _passive_openmp()
    from fkd_dali.demo import run_demo

    run_demo(cfg)
    return 0
