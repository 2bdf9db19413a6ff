"""The demo's printed report: every figure of report.json appears, with its unit, and the held-out caveat."""
from __future__ import annotations

from fkd_dali.demo import HELD_OUT_NOTE, format_report

REPORT = {
    "dataset": {"train_images": 42, "val_images": 21, "classes": 7, "source_photos": 7, "held_out": HELD_OUT_NOTE},
    "labelgen": {"crops": 336, "seconds": 12.34, "crops_per_s": 27.2, "bytes_per_image": 812.6},
    "training": {"passes": 2, "steps": 12, "final_loss": 3.25, "first_loss": 6.5, "images_per_s": 8.04,
                 "crops_per_s": 32.16},
    "agreement_with_teacher": {"before": 0.0123, "after": 0.4567, "chance": 0.001},
    "imagenet_top1_val": {"student": 33.333, "teacher": 85.71},
    "figures": {"crops": "demo-out/crops.png", "training": "demo-out/training.png"},
    "device": "cpu", "seconds": 95.4, "estimated_seconds": 101.2, "cpu_seconds": 181.6,
}


def test_report_prints_each_figure_once_with_its_unit():
    text = format_report(REPORT)
    expected = ["42 train / 21 held-out images, 7 ImageNet classes", "7 real photos",
                "336 crops in 12.3 s (27.2 crops/s), 813 bytes/image stored",
                "12 steps, loss 6.5 -> 3.25, 8.0 images/s (32.2 crops/s)",
                "1.2% before, 45.7% after training (chance 0.1%)",
                "student 33.3%, teacher 85.7%",
                "figures     demo-out/crops.png (stored crops and their labels), demo-out/training.png",
                "total       95 s on cpu (estimated 101 s), 182 CPU-seconds"]
    for line in expected:
        assert line in text, line
    assert "training works, not that it generalises to new photos" in text
    assert text.splitlines()[1] == "fkd-dali demo report"


def test_the_estimate_needs_no_data_and_scales_with_the_work(monkeypatch):
    """`estimate` times the teacher and one student step; more passes or crops mean a longer estimate."""
    import dataclasses

    import torch

    from fkd_dali.config import DemoConfig
    from fkd_dali.demo import estimate
    from fkd_dali.labels.teacher import Teacher

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 1000))
    teacher = Teacher(name="t", timm_name="t", model=model, checkpoint_sha256="", input_size=(3, 32, 32),
                      interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=1000)
    cfg = DemoConfig(image_size=32, batch_size=8, num_crops=4, passes=2, crops_per_image=8)
    small = estimate(cfg, teacher, torch.device("cpu"), train_images=14, val_images=7)
    assert small.seconds > 0 and small.teacher_crops_per_s > 0 and small.step_s > 0
    big = estimate(dataclasses.replace(cfg, passes=200, crops_per_image=800), teacher, torch.device("cpu"), 14, 7)
    assert big.seconds > 10 * small.seconds
