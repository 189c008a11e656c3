"""Segmenter data, training and evaluation end to end on a tiny tree; compare script outputs."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.layouts import index_category, split_anomalies
from ldm.segmentation import build_segmenter, load_segmenter
from ldm.segmentation.data import EvaluationSet, MixedTrainSet, scan_pairs, split_validation
from ldm.segmentation.evaluate import evaluate_segmenter, predict_probs
from ldm.segmentation.train import ce_dice_loss, focal_loss
from ldm.synthesizers.common import synthesize_baseline
from tests.fixtures_data import make_mvtec_tree as _make_mvtec_tree
from utils.metrics import METRIC_KEYS

SIZE = 32
TINY = ["--size", str(SIZE), "--steps", "2", "--batch_size", "2", "--base_channels", "4", "--threads", "1", "--device", "cpu"]


def make_mvtec_tree(root, categories=("widget", "gadget"), **kw):
    return _make_mvtec_tree(root, categories=categories, size=kw.pop("size", SIZE), **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dataset tree + DRAEM pairs for both categories (built once for this module)."""
    base = tmp_path_factory.mktemp("world")
    tree = make_mvtec_tree(base / "data")
    pairs = base / "pairs"
    for cat in ("widget", "gadget"):
        idx = index_category("mvtec", tree, cat)
        for d in idx.defects:
            synthesize_baseline("draem", pairs, idx.train_good, cat, d, 3, "perlin", SIZE, progress=False)
    return tree, pairs


def test_scan_pairs_accepts_three_levels(world):
    _, pairs = world
    everything = scan_pairs(pairs)
    assert len(everything) == 12
    assert len(scan_pairs(pairs, "widget")) == 6
    assert len(scan_pairs(pairs / "widget")) == 6
    one = scan_pairs(pairs / "widget" / "bump")
    assert len(one) == 3 and {r.category for r in one} == {"widget"} and {r.defect for r in one} == {"bump"}


def test_scan_pairs_missing_mask(tmp_path):
    (tmp_path / "c" / "d" / "image").mkdir(parents=True)
    (tmp_path / "c" / "d" / "mask").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c" / "d" / "image" / "0.png")
    with pytest.raises(FileNotFoundError, match="without mask"):
        scan_pairs(tmp_path)


def test_mixed_train_set(world):
    tree, pairs = world
    idx = index_category("mvtec", tree, "widget")
    recs = scan_pairs(pairs, "widget")
    ds = MixedTrainSet(recs, idx.train_good, SIZE, length=40, seed=3)
    a, b = ds[5], MixedTrainSet(recs, idx.train_good, SIZE, length=40, seed=3)[5]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    frac = np.mean([ds[i]["synthetic"] for i in range(40)])
    assert 0.2 < frac < 0.8
    normals = MixedTrainSet(recs, idx.train_good, SIZE, length=5, normal_ratio=1.0)
    assert all(not normals[i]["synthetic"] and not normals[i]["mask"].any() for i in range(5))
    synth = MixedTrainSet(recs, idx.train_good, SIZE, length=5, normal_ratio=0.0)
    assert all(synth[i]["synthetic"] and synth[i]["mask"].any() for i in range(5))
    with pytest.raises(ValueError, match="no synthetic pairs"):
        MixedTrainSet([], idx.train_good, SIZE)


def test_evaluation_set_is_held_out_side(world):
    tree, _ = world
    idx = index_category("mvtec", tree, "widget")
    ev = EvaluationSet(idx, SIZE, "third")
    expected = [s.image for d in idx.defects for s in split_anomalies(idx.samples(d), "third")[1]]
    assert [p for p, _, _ in ev.items[:len(expected)]] == expected
    assert len(ev) == len(expected) + len(idx.test_good) and sum(ev.labels) == len(expected)
    assert "real held-out anomalies (evaluation side of the split" in ev.description
    item = ev[len(ev) - 1]
    assert item["label"] == 0 and not item["mask"].any()


def test_split_validation():
    recs = list(range(10))
    tr, va = split_validation(recs, 0.2, seed=1)
    assert len(va) == 2 and sorted(tr + va) == recs and split_validation(recs, 0.2, seed=1) == (tr, va)
    assert split_validation(recs, 0.0) == (recs, [])


def test_losses():
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), torch.nn.functional.cross_entropy(logits, target))
    assert focal_loss(logits, target, 2.0) < focal_loss(logits, target, 0.0)
    assert ce_dice_loss(logits, target) > 0


def test_unet_shapes():
    model = build_segmenter("unet", base_channels=4)
    x = torch.rand(2, 3, 40, 36) * 2 - 1
    y = model(x)
    assert y.shape == (2, 2, 40, 36)
    y.mean().backward()
    p = predict_probs(model.eval(), x)
    assert p.shape == (2, 40, 36) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_end_to_end_train_evaluate_checkpoint(world, tmp_path, capsys):
    tree, pairs = world
    from ldm.segmentation.train_on_pairs import cli as main

    out = tmp_path / "run"
    assert main(["--pairs", str(pairs), "--dataset_root", str(tree), "--category", "widget", "--out", str(out),
                 "--val_fraction", "0.2", "--examples", "2", *TINY]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(doc["metrics"])
    assert "real held-out anomalies" in doc["test_set"] and doc["n_val_pairs"] == 1
    assert (out / "predictions.png").is_file() and (out / "segmenter.last.ckpt").is_file()
    assert "real held-out anomalies" in capsys.readouterr().out
    # the checkpoint rebuilds the same network and gives the same numbers
    model, ckpt = load_segmenter(out / "segmenter.ckpt")
    ev = EvaluationSet(index_category("mvtec", tree, "widget"), SIZE)
    again = evaluate_segmenter(model, ev, device="cpu", progress=False)
    for k in METRIC_KEYS:
        v = doc["metrics"][k]
        assert (v is None and math.isnan(again[k])) or again[k] == pytest.approx(v, abs=1e-6), k


def test_segformer_from_config_and_checkpoint_spec(tmp_path):
    from ldm.segmentation import segmenter_spec

    model = build_segmenter("segformer-tiny")
    x = torch.rand(1, 3, 36, 44) * 2 - 1
    y = model(x)
    assert y.shape == (1, 2, 36, 44)
    y.mean().backward()
    spec = segmenter_spec(model, "segformer-tiny")
    again = build_segmenter(spec["arch"], spec["num_classes"], **spec["kwargs"])   # rebuilt from the stored config
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again.eval()(x), model.eval()(x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_segmenter("segformer-b0", pretrained_dir="/nonexistent")
    # user-provided local weights (a save_pretrained folder with another head size) load offline
    from ldm.segmentation.segformer import segformer_config
    from transformers import SegformerForSemanticSegmentation

    SegformerForSemanticSegmentation(segformer_config("tiny", num_labels=5)).save_pretrained(tmp_path / "w")
    local = build_segmenter("segformer-b0", pretrained_dir=str(tmp_path / "w"))
    assert local(x).shape == (1, 2, 36, 44)


def test_train_segmenter_errors(world, tmp_path, capsys):
    tree, pairs = world
    from ldm.segmentation.train_on_pairs import cli as main

    assert main(["--pairs", str(tmp_path / "none"), "--dataset_root", str(tree), "--category", "widget",
                 "--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_segmenter.py: error:") and "none" in err and "\n" not in err
    assert main(["--pairs", str(pairs), "--dataset_root", str(tree), "--category", "widget", "--out", str(tmp_path),
                 "--segformer_dir", str(tmp_path), "--arch", "segformer-tiny", *TINY[:-2]]) == 2
    assert "config.json" in capsys.readouterr().err


def test_compare_options_are_its_flags_and_share_the_segmenter_recipe():
    """Every CompareOptions field is one flag of compare_synthesizers.py (the recipe's fields included, declared
    once in SegmenterOptions and shared with train_segmenter.py); parsing gives the options object the run uses."""
    import dataclasses

    from ldm.segmentation.compare import CompareOptions, get_parser
    from ldm.segmentation.recipe import SegmenterOptions
    from ldm.segmentation.train_on_pairs import TrainOnPairsOptions
    from ldm.segmentation.train_on_pairs import get_parser as train_parser
    from utils.options import options_from_args

    dests = {a.dest for a in get_parser()._actions} - {"help"}
    assert dests == {f.name for f in dataclasses.fields(CompareOptions)}
    recipe = {f.name for f in dataclasses.fields(SegmenterOptions)}
    assert recipe <= dests and recipe <= {a.dest for a in train_parser()._actions}
    a = options_from_args(CompareOptions, get_parser().parse_args(
        ["--out", "o", "--generated", "x=1", "--generated", "y=2", "--quiet", "--steps", "7", "--lr", "0.001"]))
    assert a == CompareOptions(out="o", generated=["x=1", "y=2"], quiet=True, steps=7, lr=0.001)
    assert (a.size, a.n_samples, a.arch, a.mask_source, a.allow_leak) == (None, 500, "unet", "native", False)
    t = options_from_args(TrainOnPairsOptions, train_parser().parse_args(
        ["--pairs", "p", "--dataset_root", "d", "--category", "c", "--out", "o"]))
    assert (t.size, t.examples, t.layout) == (256, 6, "mvtec")


def test_compare_synthesizers_tiny(world, tmp_path, capsys):
    tree, pairs = world
    from ldm.segmentation.compare import cli as main

    fast_dir = tmp_path / "fast"                                     # FAST pairs for one category only
    for r in scan_pairs(pairs, "widget"):
        for sub in ("image", "mask", "image-mask-ori"):
            dst = fast_dir / "widget" / r.defect / sub / r.image.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((r.image.parent.parent / sub / r.image.name).read_bytes())
    out = tmp_path / "cmp"
    args = ["--dataset_root", str(tree), "--layout", "mvtec", "--synthesizers", "fast,draem,cutpaste,normal",
            "--fast_dir", str(fast_dir), "--n_samples", "2", "--out", str(out), "--examples", "2", "--quiet", *TINY]
    # pairs without provenance: the comparison cannot tell what their generator saw, so it refuses
    assert main(args) == 2
    assert "cannot tell what the fast generator of 'widget' trained on" in capsys.readouterr().err
    assert main(args + ["--allow_leak"]) == 0
    printed = capsys.readouterr().out
    assert "fast: skipped" in printed and "real held-out anomalies (evaluation side of the split)" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["synthesizers"] == ["fast", "draem", "cutpaste", "normal"]
    for s in ("draem", "cutpaste", "normal"):
        for cat in ("gadget", "widget", "mean"):
            assert set(METRIC_KEYS) <= set(doc["results"][s][cat]), (s, cat)
    assert set(doc["results"]["fast"]) == {"widget", "mean"} and "gadget" in doc["skipped"]["fast"]
    md = (out / "results.md").read_text()
    assert "real held-out anomalies" in md and "| **mean** |" in md
    assert "LEAK ALLOWED" in md and doc["leaks"]["fast"]["widget"].startswith("LEAK ALLOWED")
    assert (out / "bars.png").is_file()
    for s in ("fast", "draem", "cutpaste", "normal"):
        assert (out / "sheets" / "widget" / f"{s}.png").is_file()
    assert main(["--dataset_root", str(tree), "--layout", "mvtec", "--synthesizers", "draem,gan",
                 "--out", str(out), *TINY]) == 2
    assert "gan" in capsys.readouterr().err
    # pairs of a defect type the category does not have (another dataset or family in the same folder)
    # would change what the segmenter learns: refused, naming the folder and the type
    import shutil

    first = next(d for d in (fast_dir / "widget").iterdir() if d.is_dir())
    shutil.copytree(first, fast_dir / "widget" / "fissure")
    assert main(args + ["--allow_leak"]) == 2
    err = capsys.readouterr().err
    assert "pairs of defect types fissure" in err and str(fast_dir / "widget") in err


def test_a_finished_segmenter_run_is_reused_only_for_the_same_pair_bytes(tmp_path):
    """The comparison reuses a segmenter run when its pairs are the same: same names are not enough, since
    regenerating a folder (another generation default) keeps the names and changes the pixels."""
    from types import SimpleNamespace

    from ldm.segmentation.compare import fingerprint

    keys = ("arch", "segformer_dir", "base_channels", "size", "steps", "batch_size", "lr", "loss", "normal_ratio",
            "val_fraction", "val_every", "split", "seed", "examples")
    a = SimpleNamespace(**{k: 1 for k in keys})
    image, mask = tmp_path / "0.png", tmp_path / "0_mask.png"
    image.write_bytes(b"pixels")
    mask.write_bytes(b"mask")
    records = [SimpleNamespace(image=image, mask=mask)]
    before = fingerprint(records, a, "fast", "brick")
    assert fingerprint(records, a, "fast", "brick") == before
    image.write_bytes(b"other pixels")
    assert fingerprint(records, a, "fast", "brick") != before
    image.write_bytes(b"pixels")
    mask.write_bytes(b"other mask")
    assert fingerprint(records, a, "fast", "brick") != before
