"""`fkd-dali train` and `fkd-dali eval`: namespace -> config -> one library call -> exit code.

`train --config FILE` works as in timm's train.py: the YAML file sets the defaults and
flags on the command line override them (`apply_config_file`).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from fkd_dali.cli._common import (
    add_storage_options,
    check_file,
    check_folder,
    check_store,
    check_writable,
    defaults_of,
    float_pair,
    float_triple,
    launcher_rank,
    print_json_line,
)
from fkd_dali.config import EvalConfig, TrainConfig, read_config_mapping
from fkd_dali.defaults import (
    AMP_CHOICES,
    CALIBRATIONS,
    DEVICE_CHOICES,
    FERKD_NEGATIVE_MODES,
    RECOVERY_KINDS,
    SCHEDULE_NAMES,
)
from fkd_dali.errors import ConfigError

_REQUIRED = ("data", "labels")  # required, but may come from --config instead of the command line
VAL_LABELS_HELP = ("ground truth of ImageNet's flat validation folder (ILSVRC2012_val_*.JPEG): the devkit's "
                   "ILSVRC2012_validation_ground_truth.txt (with the devkit's meta.mat beside it), the devkit "
                   "folder itself, or Kaggle's LOC_val_solution.csv; classes are matched by WordNet id")


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
    _add_eval(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    d = defaults_of(TrainConfig)
    p = sub.add_parser("train", help="train a timm student on replayed crops and stored soft labels",
                       description="FKD training: one pass = m epochs (every image's m stored crops of the pass). "
                                   "Single process, or one process per GPU with torchrun.")
    p.add_argument("--config", "-c", default=None, metavar="FILE",
                   help="YAML file of option defaults (keys as the flags, e.g. batch_size: 256); flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="training folder root/<class>/<image> the labels were made for "
                                                "(required)")
    g.add_argument("--labels", default=None,
                   help="soft-label store (path or fsspec URL; required); 'none' for vanilla (hard-label) training; "
                        "'online' for online KD, where the teacher given by --teacher labels fresh crops in the loop; "
                        "'relabel' for ReLabel, fresh crops labelled by pooling their image's label map (--label-maps)")
    add_storage_options(g)
    g.add_argument("--teacher", default=None,
                   help="online KD: a named teacher (efficientnet_lite0) or a timm model name with "
                        "--teacher-checkpoint; it sees each crop resized on the device to its own input size")
    g.add_argument("--teacher-checkpoint", default=None, metavar="FILE", help="online KD: the teacher's weights")
    g.add_argument("--label-maps", default=None, metavar="DIR",
                   help="ReLabel: the folder of label maps `fkd-dali labels relabel-maps` wrote for --data")
    g.add_argument("--val", default=None,
                   help="validation folder (top-1/top-5 after every --val-every passes): class subfolders named as "
                        "the training folder's, or ImageNet's flat folder with --val-labels")
    g.add_argument("--val-labels", default=None, metavar="FILE", help=VAL_LABELS_HELP)
    g.add_argument("--num-crops", "-m", type=int, default=d("num_crops"), help="crops per image per pass (m)")
    g.add_argument("--batch-size", "-b", type=int, default=d("batch_size"),
                   help="global batch in crops, divisible by m x processes (default %(default)s)")
    g.add_argument("--image-size", type=int, default=None, help="training resolution (default: the arch's)")
    g.add_argument("--interpolation", default=None, help="resize interpolation (default: the arch's)")
    g.add_argument("--mean", type=float_triple, default=None, help="normalization mean (default: the arch's)")
    g.add_argument("--std", type=float_triple, default=None, help="normalization std (default: the arch's)")
    g.add_argument("--crop-pct", type=float, default=None, help="validation centre-crop fraction")
    g.add_argument("--scale", type=float_pair, default=d("scale"), help="vanilla / online-KD crop area range")
    g.add_argument("--ratio", type=float_pair, default=d("ratio"), help="vanilla / online-KD crop aspect range")
    g.add_argument("--threads", "-j", type=int, default=d("threads"), help="DALI CPU threads per process")
    g.add_argument("--synthetic", action="store_true", help="random tensors on the device instead of data")
    g = p.add_argument_group("model and optimization")
    g.add_argument("--arch", "--model", dest="arch", default=d("arch"),
                   help="timm model name; --model as in timm's train.py (default %(default)s)")
    g.add_argument("--epochs", type=int, default=d("epochs"), help="FKD epochs (default %(default)s)")
    g.add_argument("--lr", type=float, default=d("lr"))
    g.add_argument("--opt", default=d("opt"), help="timm optimizer name (default %(default)s)")
    g.add_argument("--momentum", type=float, default=d("momentum"))
    g.add_argument("--weight-decay", type=float, default=d("weight_decay"))
    g.add_argument("--sched", default=d("sched"), choices=SCHEDULE_NAMES,
                   help="per-iteration cosine; serrated = FKD's per-pass cosine (lr fixed within a pass); step")
    g.add_argument("--warmup-epochs", type=float, default=d("warmup_epochs"))
    g.add_argument("--warmup-lr", type=float, default=d("warmup_lr"))
    g.add_argument("--min-lr", type=float, default=d("min_lr"))
    g.add_argument("--decay-epochs", type=float, default=d("decay_epochs"), help="step schedule period")
    g.add_argument("--decay-rate", type=float, default=d("decay_rate"), help="step schedule factor")
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm")
    g.add_argument("--recovery", default=d("recovery"), choices=RECOVERY_KINDS)
    g.add_argument("--recovery-k", type=int, default=None,
                   help="top-k kept by the marginal kinds (<= store K); online KD: the teacher's top-K (default 5)")
    g.add_argument("--smoothing", type=float, default=d("smoothing"))
    g.add_argument("--temperature", type=float, default=None,
                   help="loss temperature (default: the store's); required for a logits store (SSL teacher), "
                        "whose targets are softmax(stored outputs / T) with --recovery full")
    g.add_argument("--amp", default=d("amp"), choices=AMP_CHOICES)
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("recipes (timm's flag names)")
    g.add_argument("--initial-checkpoint", default=None, metavar="FILE",
                   help="start from these weights (fine-tuning, e.g. MEAL V2 with FKD): a timm state dict or an "
                        "fkd-dali checkpoint; unlike --resume, the optimizer, schedule and position start fresh")
    g.add_argument("--cutmix", type=float, default=d("cutmix"), metavar="ALPHA",
                   help="CutMix on soft labels, lam ~ Beta(ALPHA, ALPHA); the target is the area-weighted mix of "
                        "the two crops' recovered labels (0 = off)")
    g.add_argument("--mixup", type=float, default=d("mixup"), metavar="ALPHA",
                   help="Mixup on soft labels, lam ~ Beta(ALPHA, ALPHA) (0 = off)")
    g.add_argument("--mix-prob", "--mixup-prob", dest="mix_prob", type=float, default=d("mix_prob"), metavar="P",
                   help="probability that a step is mixed (default %(default)s)")
    g.add_argument("--mix-switch-prob", "--mixup-switch-prob", dest="mix_switch_prob", type=float,
                   default=d("mix_switch_prob"), metavar="P",
                   help="with --cutmix and --mixup both on: probability of CutMix (default %(default)s)")
    g.add_argument("--color-jitter", type=float, default=d("color_jitter"), metavar="S",
                   help="colour jitter after the crop, in the DALI graph: brightness, contrast and saturation factors "
                        "uniform on [max(0, 1-S), 1+S] per crop (FKD/ReLabel: 0.4; 0 = off), drawn from the "
                        "counter-based generator so --resume stays exact; the stored label stays the teacher's label "
                        "of the un-jittered crop (the paper's choice)")
    g.add_argument("--model-ema", action="store_true",
                   help="keep an EMA of the weights (timm's ModelEmaV3), validated and checkpointed too")
    g.add_argument("--model-ema-decay", type=float, default=d("model_ema_decay"), metavar="D",
                   help="EMA decay per step, in (0, 1) (default %(default)s)")
    g = p.add_argument_group("FerKD (calibration and SelfMix; FerKD published no thresholds: these defaults are "
                             "ours and not validated against the paper's accuracy)")
    g.add_argument("--calibrate", default=None, choices=CALIBRATIONS,
                   help="ferkd: sort crops by the teacher's probability of the ground-truth class (the store's "
                        "labels/gt_prob) into easy / hard-positive / hard-negative bands and calibrate hard "
                        "negatives as --ferkd-negatives says; the others keep their recovered label; runs before "
                        "--cutmix/--mixup/--selfmix; crops per band are logged per pass")
    g.add_argument("--ferkd-easy", type=float, default=d("ferkd_easy"), metavar="T_E",
                   help="easy positives: gt_prob >= T_E (default %(default)s: the ground truth is then surely the "
                        "teacher's top-1)")
    g.add_argument("--ferkd-negative", type=float, default=d("ferkd_negative"), metavar="T_N",
                   help="hard negatives (context crops): gt_prob < T_N <= T_E; between: hard positives "
                        "(default %(default)s)")
    g.add_argument("--ferkd-negatives", default=d("ferkd_negatives"), choices=FERKD_NEGATIVE_MODES,
                   help="what hard negatives get: soft-gt, the ground truth smoothed by --ferkd-smoothing (FerKD's "
                        "calibration); drop, loss weight 0; weight, loss weight --ferkd-negative-weight "
                        "(default %(default)s)")
    g.add_argument("--ferkd-negative-weight", type=float, default=d("ferkd_negative_weight"), metavar="W",
                   help="loss weight of hard negatives with --ferkd-negatives weight, in [0, 1] (default %(default)s)")
    g.add_argument("--ferkd-smoothing", type=float, default=d("ferkd_smoothing"), metavar="EPS",
                   help="label smoothing of the soft ground truth: (1-EPS) * onehot + EPS / C (default %(default)s)")
    g.add_argument("--selfmix", type=float, default=d("selfmix"), metavar="ALPHA",
                   help="SelfMix: CutMix between crops of the same image (each takes a box from the image's next "
                        "crop), lam ~ Beta(ALPHA, ALPHA), target = area-weighted mix of the two crops' labels; needs "
                        "--num-crops >= 2; not with --cutmix/--mixup (0 = off)")
    g.add_argument("--selfmix-prob", type=float, default=d("selfmix_prob"), metavar="P",
                   help="probability that a step is self-mixed (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--output", "-o", default=d("output"), help="folder for checkpoints, metrics and config")
    g.add_argument("--resume", default=None, help="checkpoint to continue from (e.g. OUTPUT/last.pth)")
    g.add_argument("--seed", type=int, default=d("seed"))
    g.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    g.add_argument("--log-interval", type=int, default=d("log_interval"), help="steps between metric lines")
    g.add_argument("--val-every", type=int, default=d("val_every"), help="passes between validations")
    g.add_argument("--val-batch-size", type=int, default=d("val_batch_size"), help="validation images per rank")
    g.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard")
    g.add_argument("--save-every-pass", action="store_true", help="keep OUTPUT/pass_XXX.pth too")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (with a checkpoint)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="leave an image that changed since labelling or cannot be decoded out of the run (logged, "
                        "counted as images_skipped in metrics.jsonl) instead of stopping")
    g.add_argument("--no-verify-images", action="store_true",
                   help="do not check each file against the crc32c the store recorded at labelling (the check "
                        "costs a crc32c per file once per run, on bytes read anyway)")
    p.set_defaults(handler=_train, config_cls=TrainConfig, subparser=p)


def apply_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Sequence[str] | None) -> argparse.Namespace:
    """Re-parse `argv` with the values of `args.config` as the subcommand's defaults.

    Flags given on the command line win over the file, the file wins over the
    dataclass defaults (timm's rule). Each value is checked as its flag is
    (`fkd_dali.cli.config_file`): `progress: false` means `--no-progress`.
    """
    from fkd_dali.cli.config_file import file_defaults

    sub: argparse.ArgumentParser = args.subparser
    sub.set_defaults(**file_defaults(sub, read_config_mapping(args.config), args.config))
    return parser.parse_args(argv)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of a parsed `train` command line (`--no-X` switches become field X = False)."""
    negated = {"progress": not args.no_progress, "verify_images": not args.no_verify_images}
    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if f not in negated}
    return TrainConfig(**fields, **negated)


def _train(args: argparse.Namespace) -> int:
    missing = [name for name in _REQUIRED if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"--{missing[0]} is required (on the command line or in --config)")
    cfg = train_config(args)
    check_train_paths(cfg)
    from fkd_dali.train.loop import fit

    result = fit(cfg)
    if launcher_rank() == 0:  # under torchrun, one summary (rank 0's), not one per process
        from fkd_dali.train.run_log import summary_line

        print(summary_line(result, cfg.m), flush=True)  # for people; the JSON line below is for machines
        print_json_line({k: v for k, v in vars(result).items() if k != "history"})
    return 128 + result.signal if result.interrupted and result.signal else 0


def check_train_paths(cfg: TrainConfig) -> None:
    """Every local path `train` reads or writes, checked before torch is imported (one line naming the flag)."""
    check_folder("--data", cfg.data, "give the training folder root/<class>/<image> the labels were made for")
    if not (cfg.vanilla or cfg.online or cfg.relabel):
        check_store("--labels", cfg.labels)
    check_folder("--label-maps", cfg.label_maps, "give the folder `fkd-dali labels relabel-maps` wrote for --data")
    check_folder("--val", cfg.val, "give the validation folder (class subfolders, or ImageNet's flat folder "
                                   "with --val-labels)")
    check_val_labels("--val-labels", cfg.val_labels)
    check_val_layout("--val", cfg.val, cfg.val_labels)
    check_file("--resume", cfg.resume, "give a checkpoint written by `fkd-dali train` (OUTPUT/last.pth), or drop "
                                       "--resume to start afresh")
    check_file("--initial-checkpoint", cfg.initial_checkpoint, "give a local weights file (a timm state dict or "
                                                               "an fkd-dali checkpoint)")
    check_file("--teacher-checkpoint", cfg.teacher_checkpoint, "give the teacher's local weights file")
    check_writable("--output", cfg.output)


def check_val_layout(flag: str, folder: str | None, val_labels: str | None) -> None:
    """A flat folder of images needs --val-labels, a folder of class folders must not get it (lists the folder only)."""
    if folder is None:
        return
    from fkd_dali.data.imagenet_val import flat_folder_problem

    problem = flat_folder_problem(folder, flag, "--val-labels", val_labels)
    if problem is not None:
        raise ConfigError(problem)


def check_val_labels(flag: str, path: str | None) -> None:
    """A ground-truth file, or the devkit folder that holds one."""
    import os

    if path is not None and os.path.isdir(path):
        return
    check_file(flag, path, "give ILSVRC2012_validation_ground_truth.txt (meta.mat beside it), the devkit folder, "
                           "or LOC_val_solution.csv")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    d = defaults_of(EvalConfig)
    p = sub.add_parser("eval", help="top-1/top-5 of a training checkpoint on a labelled folder",
                       description="Resize, centre crop (the arch's crop_pct), normalize; counts reduced over ranks.")
    p.add_argument("--data", required=True,
                   help="validation folder root/<class>/<image>, or ImageNet's flat folder with --val-labels")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `fkd-dali train`")
    p.add_argument("--val-labels", default=None, metavar="FILE", help=VAL_LABELS_HELP.replace("validation folder",
                                                                                            "validation folder --data"))
    p.add_argument("--labels", default=None, help="the store the model was trained with (checked against it)")
    add_storage_options(p)
    p.add_argument("--batch-size", "-b", type=int, default=d("batch_size"), help="images per rank")
    p.add_argument("--threads", "-j", type=int, default=d("threads"))
    p.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    p.add_argument("--amp", default=d("amp"), choices=AMP_CHOICES)
    p.add_argument("--use-ema", action="store_true",
                   help="evaluate the weight EMA the checkpoint holds (a run with --model-ema), not the model")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="centre-crop fraction (default: the one the checkpoint's run validated with), timm's flag")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    cfg = EvalConfig(data=args.data, checkpoint=args.checkpoint, labels=args.labels, batch_size=args.batch_size,
                     threads=args.threads, device=args.device, amp=args.amp, use_ema=args.use_ema,
                     val_labels=args.val_labels, storage_options=args.storage_options, crop_pct=args.crop_pct)
    check_folder("--data", cfg.data, "give the validation folder (class subfolders, or ImageNet's flat folder with "
                                     "--val-labels)")
    check_file("--checkpoint", cfg.checkpoint, "give a checkpoint written by `fkd-dali train` (OUTPUT/last.pth)")
    check_store("--labels", cfg.labels)
    check_val_labels("--val-labels", cfg.val_labels)
    check_val_layout("--data", cfg.data, cfg.val_labels)
    from fkd_dali.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(cfg)
    if launcher_rank() == 0:
        print(f"{args.checkpoint} ({'weight EMA' if args.use_ema else 'model'}): top-1 {result.top1:.2f}%, top-5 "
              f"{result.top5:.2f}% on {result.images:,} images of {args.data}", flush=True)
        print_json_line({"checkpoint": args.checkpoint, "weights": "ema" if args.use_ema else "model",
                         **result.as_dict()})
    return 0
