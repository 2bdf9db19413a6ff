"""`fkd-dali labels ...`: generate, info, verify, show, import-fkd, export-fkd."""
from __future__ import annotations

import argparse
import json

from fkd_dali.cli._common import default, float_pair, float_triple
from fkd_dali.labelgen import LabelGenConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    labels = sub.add_parser("labels", help="create and inspect soft-label stores")
    lsub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    _add_generate(lsub)


def _add_generate(lsub: argparse._SubParsersAction) -> None:
    d = lambda name: default(LabelGenConfig, name)  # noqa: E731
    p = lsub.add_parser("generate", help="run a teacher over stored random crops and write a store",
                        description="Label M random crops of every image with a timm teacher. Resumable: rerun "
                                    "the same command after a crash. Parallel: torchrun or --shard i/n.")
    p.add_argument("--data", required=True, help="ImageNet-style folder root/<class>/<image>")
    p.add_argument("--out", required=True, help="store path or fsspec URL (created, or resumed if it exists)")
    p.add_argument("--teacher", default=d("teacher"), help="named teacher or timm model name (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="local weights file (required for plain timm names)")
    p.add_argument("--crops-per-image", "-M", type=int, default=d("crops_per_image"), help="M (default %(default)s)")
    p.add_argument("--top-k", "-K", type=int, default=d("top_k"), help="K stored classes (default %(default)s)")
    p.add_argument("--full", action="store_true", help="also store full probability vectors (small datasets)")
    p.add_argument("--temperature", type=float, default=d("temperature"))
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
    p.add_argument("--shard", default=None, help="i/n: this process labels chunks c with c %% n == i")
    p.add_argument("--device", default=d("device"), choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", "-j", type=int, default=d("threads"), help="DALI CPU threads")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="decode every image while indexing; leave out and record unreadable files")
    p.add_argument("--input-size", type=int, default=None, help="override the teacher's input size")
    p.add_argument("--interpolation", default=None, help="override the teacher's interpolation")
    p.add_argument("--mean", type=float_triple, default=None, help="override mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=float_triple, default=None, help="override std")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from fkd_dali.labelgen import generate_labels

    cfg = LabelGenConfig(
        data=args.data, out=args.out, teacher=args.teacher, checkpoint=args.checkpoint,
        crops_per_image=args.crops_per_image, top_k=args.top_k, full=args.full, temperature=args.temperature,
        seed=args.seed, scale=args.scale, ratio=args.ratio, batch_size=args.batch_size,
        crops_per_round=args.crops_per_round, images_per_chunk=args.images_per_chunk,
        slots_per_chunk=args.slots_per_chunk, reference=args.reference, shard=args.shard, device=args.device,
        threads=args.threads, skip_corrupt=args.skip_corrupt, input_size=args.input_size,
        interpolation=args.interpolation, mean=args.mean, std=args.std, progress=not args.no_progress)
    summary = generate_labels(cfg)
    print(json.dumps({"store": args.out, **summary.as_dict()}))
    return 0
