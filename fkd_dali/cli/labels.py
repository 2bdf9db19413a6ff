"""`fkd-dali labels ...`: generate, info, verify, repair, add-gt-prob, show, import-fkd, export-fkd, merge, relabel-maps.

Parsers import nothing heavy; each handler builds its config (so bad values fail at
once) and only then imports the library code it calls.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fkd_dali.cli._common import (
    add_storage_options,
    check_file,
    check_folder,
    check_store,
    check_store_out,
    check_writable,
    config_from_args,
    defaults_of,
    float_pair,
    float_triple,
    print_json,
    print_json_line,
    shard,
)
from fkd_dali.config import LabelGenConfig, LabelMapsConfig
from fkd_dali.defaults import DEVICE_CHOICES, FKD_NUM_CLASSES, IMPORTED_TEACHER_NAME, SHOW_MAX_CROPS

if TYPE_CHECKING:
    from fkd_dali.labels.repair import RepairOptions

_DATA_REMEDY = "give the image folder root/<class>/<image> the labels are for"


def add_parser(sub: argparse._SubParsersAction) -> None:
    labels = sub.add_parser("labels", help="create and inspect soft-label stores")
    lsub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    for add in (_add_generate, _add_info, _add_verify, _add_repair, _add_add_gt_prob, _add_show, _add_import,
                _add_export, _add_merge, _add_relabel_maps):
        add(lsub)


def _add_generate(lsub: argparse._SubParsersAction) -> None:
    d = defaults_of(LabelGenConfig)
    p = lsub.add_parser("generate", help="run a teacher over stored random crops and write a store",
                        description="Label M random crops of every image with a timm teacher. Resumable: rerun "
                                    "the same command after a crash. Parallel: torchrun or --shard i/n.")
    p.add_argument("--data", required=True, help="ImageNet-style folder root/<class>/<image>")
    p.add_argument("--out", required=True, help="store path or fsspec URL (created, or resumed if it exists)")
    p.add_argument("--teacher", default=d("teacher"), help="named teacher or timm model name (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="local weights file (required for plain timm names)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier width of a plain timm teacher fine-tuned to its own classes (default: timm's)")
    p.add_argument("--crops-per-image", "-M", type=int, default=d("crops_per_image"), help="M (default %(default)s)")
    p.add_argument("--top-k", "-K", type=int, default=d("top_k"), help="K stored classes (default %(default)s)")
    p.add_argument("--full", action="store_true", help="also store full probability vectors (small datasets)")
    p.add_argument("--temperature", type=float, default=d("temperature"))
    p.add_argument("--gt-prob", action="store_true",
                   help="also store each crop's teacher probability of its image's ground-truth class "
                        "(labels/gt_prob, for `train --calibrate`). The folder class must be a teacher class: "
                        "ImageNet WordNet-id folders with a 1000-class teacher, or a teacher trained on this "
                        "folder dataset (--num-classes = number of class folders, classes in sorted-folder order)")
    p.add_argument("--logits", action="store_true",
                   help="self-supervised teachers: store all D raw outputs per crop (float16, no softmax; "
                        "D = --num-classes), trained on with `train --recovery full --temperature T`")
    p.add_argument("--seed", type=int, default=d("seed"), help="crop-box seed (default %(default)s)")
    p.add_argument("--scale", type=float_pair, default=d("scale"), help="area range, e.g. 0.08,1.0")
    p.add_argument("--ratio", type=float_pair, default=d("ratio"), help="aspect range, e.g. 0.75,1.3333")
    p.add_argument("--batch-size", "-b", type=int, default=d("batch_size"), help="teacher batch in crops")
    p.add_argument("--crops-per-round", type=int, default=d("crops_per_round"),
                   help="crops cut per decode (R, default %(default)s)")
    p.add_argument("--images-per-chunk", type=int, default=d("images_per_chunk"))
    p.add_argument("--slots-per-chunk", type=int, default=d("slots_per_chunk"))
    p.add_argument("--reference", default=None,
                   help="existing store whose boxes and flips to relabel with this teacher")
    p.add_argument("--shard", type=shard, default=None, help="i/n: this process labels chunks c with c %% n == i")
    p.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    p.add_argument("--threads", "-j", type=int, default=d("threads"), help="DALI CPU threads")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="decode every image while indexing; leave out and record unreadable files")
    p.add_argument("--input-size", type=int, default=None, help="override the teacher's input size")
    p.add_argument("--interpolation", default=None, help="override the teacher's interpolation")
    p.add_argument("--mean", type=float_triple, default=None, help="override mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=float_triple, default=None, help="override std")
    add_storage_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    cfg = config_from_args(LabelGenConfig, args)
    check_folder("--data", cfg.data, _DATA_REMEDY)
    check_file("--checkpoint", cfg.checkpoint, "give the teacher's local weights file")
    check_store("--reference", cfg.reference)
    check_store_out("--out", cfg.out)
    from fkd_dali.labels.generate import generate_labels

    summary = generate_labels(cfg)
    print_json_line({"store": args.out, **summary.as_dict()})
    return 0


def _add_info(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("info", help="summarize a store: dataset, teacher, crops, labels, completeness, size")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_storage_options(p)
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    check_store("STORE", args.store)
    from fkd_dali.store.tools import format_store_info, store_info

    info = store_info(args.store, storage_options=args.storage_options)
    if args.json:
        print_json(info)
    else:
        print(format_store_info(info))
    return 0


def _add_verify(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("verify", help="check completeness, dataset fingerprint and every stored value",
                        description="Exit status 0: no problems; 1: problems found (listed); 2: cannot check.")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--data", default=None, help="dataset folder to check the store's fingerprint against")
    add_storage_options(p)
    p.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    check_store("STORE", args.store)
    check_folder("--data", args.data, _DATA_REMEDY)
    from fkd_dali.store.tools import verify_store

    report = verify_store(args.store, args.data, storage_options=args.storage_options)
    print(report.summary())
    return 0 if report.ok else 1


def _add_repair(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser(
        "repair", help="recompute the chunks `verify` finds damaged or missing (bit-identical to an undamaged store)",
        description="Find the chunks `labels verify` reports as damaged (unreadable, deleted chunk files, fill "
                    "values, bad values) or unfinished, clear them and recompute them with the teacher, in place. "
                    "The store's attributes give M, K, temperature, crop seed and distribution, layout and the "
                    "teacher's name and pixels; give what they do not record, as for `labels generate`: --data "
                    "(required), --checkpoint for a plain timm teacher (or other weights than the shipped ones), "
                    "--reference if the labels were generated with one, and the same --batch-size and "
                    "--crops-per-round for bit-identical probabilities. Stores imported from FKD files or merged "
                    "from other stores cannot be recomputed and are refused; so is damaged metadata.")
    _add_rerun_args(p)
    p.add_argument("--reference", default=None, help="the --reference store of the original generation, if any")
    p.set_defaults(handler=_repair)


def _add_rerun_args(p: argparse.ArgumentParser) -> None:
    """The options of commands that rerun a store's teacher over its stored crops (repair, add-gt-prob):
    what the store does not record about its generation."""
    d = defaults_of(LabelGenConfig)
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--data", required=True, help="the dataset folder the store was generated for")
    p.add_argument("--checkpoint", "--teacher-checkpoint", dest="checkpoint", default=None,
                   help="the teacher weights the store was generated with (required for plain timm names)")
    p.add_argument("--batch-size", "-b", type=_positive_int, default=None,
                   help=f"as given to generate (default {d('batch_size')})")
    p.add_argument("--crops-per-round", type=_positive_int, default=None,
                   help=f"as given to generate (default {d('crops_per_round')})")
    p.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    p.add_argument("--threads", "-j", type=_positive_int, default=None, help="DALI CPU threads")
    add_storage_options(p)
    p.add_argument("--no-progress", action="store_true")


def _rerun_options(args: argparse.Namespace, **extra: object) -> RepairOptions:
    check_store("STORE", args.store)
    check_folder("--data", args.data, _DATA_REMEDY)
    check_file("--checkpoint", args.checkpoint, "give the teacher weights the store was generated with")
    check_store("--reference", extra.get("reference"))  # type: ignore[arg-type]
    from fkd_dali.labels.repair import RepairOptions

    return RepairOptions(data=args.data, checkpoint=args.checkpoint, batch_size=args.batch_size,
                         crops_per_round=args.crops_per_round, device=args.device, threads=args.threads,
                         progress=not args.no_progress, storage_options=args.storage_options, **extra)


def _repair(args: argparse.Namespace) -> int:
    opts = _rerun_options(args, reference=args.reference)  # checks the paths before the library loads
    from fkd_dali.labels.repair import repair_store

    summary = repair_store(args.store, opts)
    print_json_line({"store": args.store, **summary.as_dict()})
    return 0


def _add_add_gt_prob(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser(
        "add-gt-prob", help="add the ground-truth probabilities (labels/gt_prob) to a store made without --gt-prob",
        description="Run the store's teacher again over its stored crops and write only labels/gt_prob, each "
                    "crop's teacher probability of its image's ground-truth class (what `train --calibrate` "
                    "needs); every other array keeps its bytes. The folder classes must map to the teacher's "
                    "classes as for `labels generate --gt-prob`. Give what the store does not record, as for "
                    "`labels repair`: --data, --checkpoint for a plain timm teacher, and the --batch-size and "
                    "--crops-per-round of the original generation for values bit-identical to --gt-prob. "
                    "Resumable (rerun after a crash); one process at a time.")
    _add_rerun_args(p)
    p.set_defaults(handler=_add_gt_prob)


def _add_gt_prob(args: argparse.Namespace) -> int:
    opts = _rerun_options(args)  # checks the paths before the library loads
    from fkd_dali.labels.add_gt_prob import add_gt_prob

    summary = add_gt_prob(args.store, opts)
    print_json_line({"store": args.store, **summary.as_dict()})
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_show(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("show", help="draw one image's stored crops with their top-3 labels as a PNG")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--image", required=True, help="image index or path relative to the dataset root")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--data", default=None, help="dataset folder holding the image files (required)")
    p.add_argument("--max-crops", type=_positive_int, default=SHOW_MAX_CROPS,
                   help="show at most this many crops (default %(default)s)")
    add_storage_options(p)
    p.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    check_store("STORE", args.store)
    check_folder("--data", args.data, _DATA_REMEDY)
    check_writable("--out", args.out, what="file")
    from fkd_dali.store.tools import render_crops

    out = render_crops(args.store, args.image, args.out, args.data, max_crops=args.max_crops,
                       storage_options=args.storage_options)
    print(out)
    return 0


def _add_import(lsub: argparse._SubParsersAction) -> None:
    d = defaults_of(LabelGenConfig)
    p = lsub.add_parser("import-fkd", help="build a store from FKD's per-image label files",
                        description="Read <DIR>/<class>/<stem>.tar for every image of --data into a new store.")
    p.add_argument("fkd_dir", metavar="DIR", help="root of the FKD label files")
    p.add_argument("--data", required=True, help="the ImageNet-style dataset folder the files label")
    p.add_argument("--out", required=True, help="new store path or fsspec URL")
    p.add_argument("--num-classes", type=_positive_int, default=FKD_NUM_CLASSES,
                   help="classes of the teacher that made the files (default %(default)s)")
    p.add_argument("--teacher-name", default=IMPORTED_TEACHER_NAME,
                   help="teacher name recorded in the store (default %(default)s)")
    p.add_argument("--images-per-chunk", type=_positive_int, default=d("images_per_chunk"))
    p.add_argument("--slots-per-chunk", type=_positive_int, default=d("slots_per_chunk"))
    add_storage_options(p)
    p.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    check_folder("DIR", args.fkd_dir, "give the root of FKD's per-image label files (<class>/<image>.tar)")
    check_folder("--data", args.data, _DATA_REMEDY)
    check_store_out("--out", args.out)
    from fkd_dali.interop.fkd_store import import_fkd
    from fkd_dali.store.schema import StoreLayout

    store = import_fkd(args.fkd_dir, args.data, args.out, teacher_name=args.teacher_name,
                       num_classes=args.num_classes, layout=StoreLayout(args.images_per_chunk, args.slots_per_chunk),
                       storage_options=args.storage_options)
    print_json_line({"store": args.out, "images": store.n_images, "crops_per_image": store.crops_per_image,
                     "k": store.spec.label.k})
    return 0


def _add_export(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("export-fkd", help="write a complete store as FKD per-image label files")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--out", required=True, help="folder for <class>/<stem>.tar files")
    add_storage_options(p)
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    check_store("STORE", args.store)
    check_writable("--out", args.out)
    from fkd_dali.interop.fkd_store import export_fkd

    n = export_fkd(args.store, args.out, storage_options=args.storage_options)
    print_json_line({"out": args.out, "files": n})
    return 0


def _add_merge(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("merge", help="average the labels of stores that hold the same crops (teacher ensemble)",
                        description="Stores made with `labels generate --reference` share boxes and flips; "
                                    "merge writes their weighted top-K average to a new store.")
    p.add_argument("stores", nargs="+", help="two or more stores with the same crops")
    p.add_argument("--out", required=True, help="the ensemble store (resumed if it exists)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one finite weight > 0 per store (default equal)")
    p.add_argument("--top-k", "-K", type=_positive_int, default=None,
                   help="K of the result (default: the largest input K)")
    add_storage_options(p)
    p.set_defaults(handler=_merge)


def _merge(args: argparse.Namespace) -> int:
    for url in args.stores:
        check_store("STORE", url)
    check_store_out("--out", args.out)
    from fkd_dali.labels.merge import merge_stores

    store = merge_stores(args.stores, args.out, weights=args.weights, k=args.top_k,
                         storage_options=args.storage_options)
    print_json_line({"out": args.out, "teacher": store.spec.teacher.name, "k": store.spec.label.k})
    return 0


def _add_relabel_maps(lsub: argparse._SubParsersAction) -> None:
    d = defaults_of(LabelMapsConfig)
    p = lsub.add_parser("relabel-maps", help="write ReLabel's dense label maps of a folder (train --labels relabel)",
                        description="Run a CNN teacher over every whole image and keep the top-K classes of "
                                    "each position of its last feature map: one [2, K, S, S] file per image "
                                    "(ReLabel's format) and label_maps.json.")
    p.add_argument("--data", required=True, help="ImageNet-style folder root/<class>/<image>")
    p.add_argument("--out", required=True, help="folder for <class>/<stem>.pt maps and label_maps.json")
    p.add_argument("--teacher", default=d("teacher"), help="named teacher or timm CNN name (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="local weights file (required for plain timm names)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width of a plain timm teacher")
    p.add_argument("--top-k", "-K", type=int, default=d("top_k"), help="K classes kept per position")
    p.add_argument("--map-size", type=int, default=None,
                   help="S: feed whole images at S x 32 px for S x S maps (ReLabel: 15); default: the teacher's "
                        "own input size and map (its native resolution)")
    p.add_argument("--batch-size", "-b", type=int, default=d("batch_size"), help="images per teacher batch")
    p.add_argument("--device", default=d("device"), choices=DEVICE_CHOICES)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_relabel_maps)


def _relabel_maps(args: argparse.Namespace) -> int:
    cfg = config_from_args(LabelMapsConfig, args)
    check_folder("--data", cfg.data, _DATA_REMEDY)
    check_file("--checkpoint", cfg.checkpoint, "give the teacher's local weights file")
    check_writable("--out", cfg.out)
    from dataclasses import asdict

    from fkd_dali.interop.relabel_writer import make_label_maps

    print_json_line({"out": args.out, **asdict(make_label_maps(cfg))})
    return 0
