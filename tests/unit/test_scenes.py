"""The controlled scenes of issue 22 (bench/scenes.py, bench/scene_crops.py): boxes, splits, determinism, visibility."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import scenes as sc
from bench.scene_crops import (
    crop_content,
    crop_label_correctness,
    crop_statistics,
    inside_share,
    object_arrays,
    visibility,
)
from fkd_dali.errors import ConfigError

TINY = sc.SceneConfig(classes=4, size=48, teacher=12, train=8, val=4, test=4, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> sc.SceneSet:
    return sc.build_scenes(tmp_path_factory.mktemp("scenes") / "root", TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scene(objects: list[tuple[int, str, tuple[float, float, float, float]]]) -> sc.Scene:
    """A hand-made 100 x 100 scene; boxes in fractions."""
    objs = tuple(sc.SceneObject(c, role, tuple(int(v * 100) for v in box), box, 1) for c, role, box in objects)
    return sc.Scene("c/x.JPEG", objects[0][0], 100, 100, objs)


def _saturation(rgb: np.ndarray) -> float:
    return float(np.median((rgb.max(1) - rgb.min(1)) / np.maximum(rgb.max(1), 1)))


# -- pixels and boxes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("i", range(12))
def test_boxes_are_the_tight_boxes_of_the_drawn_objects(i):
    pixels, owner, objects = sc.render_scene(i % 10, 10, 64, np.random.default_rng([7, i]))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert [o.role for o in objects][-1] == "labelled" and sum(o.role == "labelled" for o in objects) == 1
    for j, obj in enumerate(objects):
        y, x, h, w = obj.box_px
        assert obj.box == (y / 64, x / 64, h / 64, w / 64)
        mine = owner == j
        assert mine.sum() == obj.pixels
        inside = np.zeros_like(mine)
        inside[y:y + h, x:x + w] = True
        assert not (mine & ~inside).any(), "an object's pixels lie outside its box"
        if obj.role == "labelled":  # never occluded: its mask spans its box (edge pixels may be < 1/2 covered)
            rows, cols = np.nonzero(mine)
            assert abs(rows.min() - y) <= 1 and abs(rows.max() - (y + h - 1)) <= 1
            assert abs(cols.min() - x) <= 1 and abs(cols.max() - (x + w - 1)) <= 1
            assert mine.sum() >= 0.2 * h * w
        else:
            assert obj.cls != objects[-1].cls


def test_object_sizes_follow_the_design():
    lab, dis = [], []
    for i in range(60):
        _, _, objects = sc.render_scene(i % 10, 10, 64, np.random.default_rng([11, i]))
        for o in objects:
            (lab if o.role == "labelled" else dis).append(max(o.box_px[2:]) / 64)
    assert min(lab) > max(dis), "the labelled object must be larger than every distractor"
    assert sc.LABELLED_DIAMETER[0] * 0.9 <= np.median(lab) <= sc.LABELLED_DIAMETER[1]
    assert max(dis) <= sc.DISTRACTOR_DIAMETER[1]


def test_files_hold_the_drawn_pixels_and_the_manifest_the_drawn_boxes(tiny):
    rendered = {}
    for split in sc.SPLITS:
        for i in range(TINY.count(split)):
            pixels, owner, objects = sc.render_scene(i % TINY.classes, TINY.classes, TINY.size,
                                                     sc.image_rng(TINY, split, i))
            rendered[(split, f"{sc.class_names(TINY.classes)[i % TINY.classes]}/{split}_{i:06d}.JPEG")] = (
                pixels, owner, objects)
    loaded = sc.load_scenes(tiny.root)
    for split in sc.SPLITS:
        assert len(loaded.splits[split]) == TINY.count(split)
        for scene in loaded.splits[split]:
            pixels, owner, objects = rendered[(split, scene.path)]
            assert scene.objects == tuple(objects)
            assert scene.cls == scene.labelled.cls == int(scene.path[1:3])
            decoded = np.asarray(Image.open(Path(tiny.root) / split / scene.path).convert("RGB"), dtype=np.float32)
            assert np.abs(decoded - pixels).mean() < 6  # JPEG q90 of the same pixels
            # the labelled object's pixels differ from the background's statistics (colour and saturation)
            lab, background = decoded[owner == len(objects) - 1], decoded[owner == -1]
            gap = np.abs(np.median(lab, 0) - np.median(background, 0)).max()
            assert gap > 0.25 * background.std(0).max() or _saturation(lab) > _saturation(background) + 0.1


def test_scenes_map_onto_the_dataset_index(tiny):
    from fkd_dali.data.index import build_index

    index = build_index(tiny.split_root("train"))
    assert index.class_names == sc.class_names(TINY.classes)
    ordered = sc.scenes_for_index(tiny, "train", index.paths)
    assert [s.cls for s in ordered] == list(index.classes)
    with pytest.raises(Exception, match="not scenes of split"):
        sc.scenes_for_index(tiny, "val", index.paths)


# -- splits, determinism, idempotency ----------------------------------------------------------------------
def test_splits_come_from_disjoint_streams_and_share_no_image(tiny):
    assert len(set(sc.SPLIT_WORDS.values())) == len(sc.SPLITS)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(tiny.root).rglob("*.JPEG")]
    assert len(digests) == sum(TINY.count(s) for s in sc.SPLITS) == len(set(digests))


def test_same_config_gives_byte_identical_folders_and_other_seeds_differ(tiny, tmp_path):
    again = sc.build_scenes(tmp_path / "again", TINY)
    assert _files(Path(tiny.root)) == _files(Path(again.root))
    other = sc.build_scenes(tmp_path / "other", sc.SceneConfig(**{**TINY.__dict__, "seed": 4}))
    a, b = _files(Path(tiny.root)), _files(Path(other.root))
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".JPEG"))


def test_rerun_reuses_other_parameters_are_refused(tiny):
    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in Path(tiny.root).rglob("*") if "runs" not in p.parts}

    before = stamps()
    again = sc.build_scenes(tiny.root, TINY)
    assert again.reused and again.splits == sc.load_scenes(tiny.root).splits
    assert stamps() == before
    with pytest.raises(ConfigError, match=r"other parameters \(train 8 != 9\).*another --root"):
        sc.build_scenes(tiny.root, sc.SceneConfig(**{**TINY.__dict__, "train": 9}))


def test_an_interrupted_build_is_redone_and_foreign_folders_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / ".scenes-building.json").write_text("{}")
    (root / ".partial-train" / "junk").mkdir(parents=True)
    (root / "teacher").mkdir()
    built = sc.build_scenes(root, TINY)
    assert not built.reused and sorted(os.listdir(root)) == ["scenes.json", "teacher", "test", "train", "val"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty and holds no scenes"):
        sc.build_scenes(foreign, TINY)


def test_cli_builds_and_refuses_in_one_line(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--classes", "3", "--size", "32", "--teacher", "3", "--train", "3", "--val", "3",
            "--test", "3", "--no-progress", "--crop-stats", "30"]
    assert sc.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == {"teacher": 3, "train": 3, "val": 3, "test": 3} and not out["reused"]
    assert out["crops_train"]["crops"] == 30
    assert sc.main(args[:-2] + ["--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 0 != 1" in err


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="--classes"):
        sc.SceneConfig(classes=13)
    with pytest.raises(ConfigError, match="--size"):
        sc.SceneConfig(size=16)


# -- what a crop shows -------------------------------------------------------------------------------------
SCENE = _scene([(2, "labelled", (0.25, 0.25, 0.5, 0.5)), (5, "distractor", (0.0, 0.0, 0.1, 0.1)),
                (7, "distractor", (0.8, 0.8, 0.2, 0.2))])
SCENE_ARRAYS_BOX = np.array([[[0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 0.1, 0.1]]])  # SCENE's first two boxes, one crop


@pytest.mark.parametrize("box, fill, visible, kind", [
    ((0.0, 0.0, 1.0, 1.0), 0.5, (2, 5, 7), "labelled"),  # whole image: everything
    ((0.0, 0.0, 0.2, 0.2), 0.5, (5,), "distractor_only"),  # the top-left distractor wholly, no labelled box
    ((0.6, 0.6, 0.4, 0.4), 0.5, (7,), "distractor_only"),  # 9% of the labelled box (fills 14%), all of class 7
    ((0.6, 0.0, 0.4, 0.2), 0.5, (), "background"),  # touches nothing
    ((0.3, 0.3, 0.2, 0.2), 0.5, (2,), "labelled"),  # inside the labelled object: 16% of its box, fills 100%
    ((0.3, 0.3, 0.2, 0.2), None, (), "background"),  # ... which the box rule alone does not count
    ((0.25, 0.25, 0.5, 0.15), None, (2,), "labelled"),  # exactly 30% of the labelled box
    ((0.25, 0.25, 0.5, 0.149), None, (), "background"),  # just under 30%
    ((0.0, 0.0, 0.4, 0.4), 0.5, (5,), "distractor_only"),  # 9% of the labelled box, fills 14%; distractor wholly
    ((0.0, 0.0, 0.55, 0.55), 0.5, (2, 5), "labelled"),  # 36% of the labelled box
])
def test_crop_content_by_hand(box, fill, visible, kind):
    content = crop_content(SCENE, box, visible=0.3, fill=fill)
    assert content.visible == visible
    assert content.kind == kind
    assert content.background == (kind == "background") and content.labelled == (kind == "labelled")


def test_visibility_threshold_is_a_parameter_and_padding_is_never_visible():
    boxes = np.array([[[0.25, 0.25, 0.5, 0.5], [0, 0, 0, 0]]])
    crop = np.array([[0.25, 0.25, 0.5, 0.25]])  # half of the object's box
    assert visibility(boxes, crop, visible=0.5, fill=None).tolist() == [[True, False]]
    assert visibility(boxes, crop, visible=0.51, fill=None).tolist() == [[False, False]]
    with pytest.raises(ConfigError):
        visibility(boxes, crop, visible=0.0)


def test_crop_label_correctness_by_hand():
    scenes = [SCENE, _scene([(3, "labelled", (0.0, 0.0, 0.5, 0.5))])]
    assert object_arrays(scenes).classes.tolist() == [[2, 5, 7], [3, -1, -1]]
    ids = np.array([0, 0, 0, 1, 1])
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.2, 0.2], [0.6, 0.0, 0.4, 0.2], [0, 0, 0.5, 0.5], [0.6, 0.6, 0.4, 0.4]])
    predicted = np.array([7, 5, 2, 1, 3])
    # crop 0: 7 visible (ok) / folder 2 visible (ok); crop 1: 5 ok / 2 not; crop 2: background, both wrong;
    # crop 3: 1 wrong / 3 ok; crop 4: background, both wrong
    out = crop_label_correctness(scenes, ids, boxes, predicted, confidence=np.array([0.9, 0.6, 0.3, 0.8, 0.5]))
    assert out["predicted_correct"] == pytest.approx(2 / 5) and out["hard_correct"] == pytest.approx(2 / 5)
    assert out["shares"] == {"labelled": 0.4, "distractor_only": 0.2, "background": 0.4}
    assert out["by_kind"]["distractor_only"] == {"crops": 1, "predicted_correct": 1.0, "hard_correct": 0.0,
                                                 "predicted_is_image_class": 0.0, "labelled_partly_inside": 0.0,
                                                 "mean_confidence": 0.6}
    assert out["by_kind"]["labelled"]["mean_confidence"] == pytest.approx(0.85)
    assert out["by_kind"]["background"]["mean_confidence"] == pytest.approx(0.4)
    assert "mean_confidence" not in crop_label_correctness(scenes, ids, boxes, predicted)["by_kind"]["labelled"]
    # 0.15 x 0.15 of the 0.5 x 0.5 labelled box lies inside a corner crop: 9%, below the 30% rule
    assert inside_share(SCENE_ARRAYS_BOX, np.array([[0.6, 0.6, 0.4, 0.4]]))[0].tolist() == pytest.approx([0.09, 0.0])
    with pytest.raises(ConfigError, match="as many"):
        crop_label_correctness(scenes, ids, boxes, predicted[:3])


def test_crop_statistics_use_fkd_dalis_sampler(tiny):
    from fkd_dali.crops.boxes import CropDistribution, sample_crops

    stats = crop_statistics(tiny.splits["train"], 20)
    assert stats["crops"] == 20 and stats["scale"] == [0.08, 1.0]
    assert stats["labelled"] + stats["distractor_only"] + stats["background"] == pytest.approx(1.0)
    scenes = tiny.splits["train"]
    px, _ = sample_crops(np.full((len(scenes), 2), TINY.size), np.arange(len(scenes)), np.arange(3),
                         CropDistribution())
    kinds = [crop_content(s, px[i, j] / TINY.size).kind for j in range(3) for i, s in enumerate(scenes)][:20]
    assert stats["labelled"] == pytest.approx(kinds.count("labelled") / 20)
    assert stats["background"] == pytest.approx(kinds.count("background") / 20)


# -- the teacher cache (bench/scene_teacher.py), with the CLI calls faked ----------------------------------
def test_runs_are_trained_once_per_recipe_and_scene_folder(tiny, monkeypatch):
    from bench import scene_teacher as st

    calls = []

    def fake_cli(args, log, niceness=5):
        calls.append(list(args))
        if args[0] == "train":
            out = Path(args[args.index("--output") + 1])
            out.mkdir(parents=True)
            (out / "last.pth").write_bytes(b"x")
            (out / "metrics.jsonl").write_text('{"kind": "pass", "val_top1": 50.0}\n')
            data = Path(args[args.index("--data") + 1])
            calls.append(sorted(str(p.relative_to(data)) for p in data.rglob("*.JPEG")))
            return 12.0, 20.0, []
        return 1.0, 1.0, ['{"top1": 62.5}']

    monkeypatch.setattr(st, "run_cli", fake_cli)
    recipe = st.Recipe(name="s", split="train", arch="test_resnet", epochs=1, batch_size=4, lr=1e-3, images=4)
    first = st.ensure_run(tiny.root, recipe)
    assert (first.train_wall_s, first.train_cpu_s, first.test_top1, first.val_top1, first.reused) == (
        12.0, 20.0, 62.5, 50.0, False)
    assert calls[1] == [f"{sc.class_names(4)[i]}/train_{i:06d}.JPEG" for i in range(4)]  # one image per class
    assert calls[0][calls[0].index("--image-size") + 1] == str(TINY.size) and "--crop-pct" in calls[0]
    again = st.ensure_run(tiny.root, recipe)
    assert again.reused and again.checkpoint == first.checkpoint and len(calls) == 3
    other = st.ensure_run(tiny.root, st.Recipe(**{**recipe.__dict__, "epochs": 2}))
    assert other.checkpoint != first.checkpoint and len(calls) == 6
    with pytest.raises(ConfigError, match="teacher split"):
        st.ensure_teacher(tiny.root, recipe)
    stage = st.Recipe(name="s2", split="train", arch="test_resnet", epochs=1, batch_size=4, lr=1e-4, image_size=64,
                      scale=(1.0, 1.0), ratio=(1.0, 1.0), start_from=recipe)
    tuned = st.ensure_run(tiny.root, stage)  # the first stage is cached: one more training
    assert len(calls) == 9 and calls[6][calls[6].index("--initial-checkpoint") + 1] == first.checkpoint
    assert calls[6][calls[6].index("--ratio") + 1] == "1.0,1.0"
    assert (tuned.train_cpu_s, tuned.total_cpu_s, tuned.total_wall_s) == (20.0, 40.0, 24.0)
    assert st.ensure_run(tiny.root, stage).reused and len(calls) == 9


def test_a_run_depends_only_on_the_splits_it_reads(tiny, tmp_path, monkeypatch):
    """Image i of a split has its own stream: a teacher trained on the teacher split is the same run in a
    folder with more test images (scored again on that folder's test split), not in one with other teachers."""
    import shutil

    from bench import scene_teacher as st

    calls = []

    def fake_cli(args, log, niceness=5):
        calls.append(args[0])
        if args[0] == "train":
            out = Path(args[args.index("--output") + 1])
            out.mkdir(parents=True)
            (out / "last.pth").write_bytes(b"x")
            return 12.0, 20.0, []
        return 1.0, 1.0, ['{"top1": %s}' % (50.0 + len(os.listdir(Path(args[args.index("--data") + 1]))))]

    monkeypatch.setattr(st, "run_cli", fake_cli)
    recipe = st.Recipe(name="t", split="teacher", arch="test_resnet", epochs=1, batch_size=4, lr=1e-3)
    first = st.ensure_teacher(tiny.root, recipe)
    more_test = sc.build_scenes(tmp_path / "more-test", sc.SceneConfig(**{**TINY.__dict__, "test": 8}))
    shutil.copytree(st.run_dir(tiny.root, recipe), st.run_dir(more_test.root, recipe))  # as users move a cache
    result = json.loads((st.run_dir(more_test.root, recipe) / st.RESULT).read_text())
    result["checkpoint"] = str(st.run_dir(more_test.root, recipe) / "run" / "last.pth")
    (st.run_dir(more_test.root, recipe) / st.RESULT).write_text(json.dumps(result))
    reused = st.ensure_teacher(more_test.root, recipe)
    assert reused.reused and calls == ["train", "eval", "eval"] and reused.test_images == 8
    assert first.test_images == 4 and st.ensure_teacher(more_test.root, recipe).test_images == 8
    assert calls == ["train", "eval", "eval"]  # scored once on the new split, then cached
    other_teachers = sc.build_scenes(tmp_path / "other", sc.SceneConfig(**{**TINY.__dict__, "teacher": 16}))
    shutil.copytree(st.run_dir(tiny.root, recipe), st.run_dir(other_teachers.root, recipe))
    assert not st.ensure_teacher(other_teachers.root, recipe).reused and calls[-2:] == ["train", "eval"]
