"""Training datasets: the item contract, splits as seen by the datasets, the data module, bad input."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.anomaly import ANOMALYDIFFUSION_TEMPLATES, AnomalyDataset, NormalImagesDataset
from ldm.data.datamodule import DataModuleFromConfig
from tests.fixtures_data import make_btad, make_mvtec, make_visa


def _check_item(item, size, name):
    assert set(item) >= {"image", "mask", "caption", "name"}
    img, m = item["image"], item["mask"]
    assert img.shape == (size, size, 3) and img.dtype == np.float32
    assert -1.0 <= img.min() and img.max() <= 1.0
    assert m.shape == (size, size) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    assert item["name"] == name


@pytest.fixture
def ds(tmp_path):
    return make_mvtec(tmp_path / "ds")


def test_anomaly_dataset_item_contract_and_third_split(ds):
    train = AnomalyDataset(ds, "bottle", "broken_large", size=16, repeats=3)
    assert len(train) == 2 * 3  # 7 anomalies -> k = 2
    for i in range(len(train)):
        it = train[i]
        _check_item(it, 16, "bottle+broken_large")
        assert it["caption"] == "Anomaly *" and it["mask"].sum() > 0
    ev = AnomalyDataset(ds, "bottle", "broken_large", size=16, set="evaluation")
    assert len(ev) == 5
    assert not {s.image for s in train.samples} & {s.image for s in ev.samples}
    val = AnomalyDataset(ds, "bottle", "broken_large", size=16, set="validation", repeats=9, val_count=1)
    assert len(val) == 1 and val.samples[0] == train.samples[0]


def test_anomaly_dataset_all_split_and_every_name(ds):
    every = AnomalyDataset(ds, None, None, size=8, anomaly_split="all")
    assert every.names == ["bottle+broken_large", "bottle+contamination", "grid+bent"]
    assert len(every) == 7 + 3 + 6


def test_anomaly_dataset_grayscale_category_and_flip(ds):
    d = AnomalyDataset(ds, "grid", "bent", size=12, flip_p=1.0)
    plain = AnomalyDataset(ds, "grid", "bent", size=12)
    a, b = d[0], plain[0]
    assert np.array_equal(a["image"], b["image"][:, ::-1]) and np.array_equal(a["mask"], b["mask"][:, ::-1])
    assert np.allclose(a["image"][..., 0], a["image"][..., 2])


def test_anomaly_dataset_fast_path_and_templates(ds):
    d = AnomalyDataset(mvtec_path=ds / "bottle" / "ground_truth" / "contamination", size=8,
                       anomaly_split="all", caption_template="anomalydiffusion")
    assert d.names == ["bottle+contamination"] and len(d) == 3
    assert d[0]["caption"] in {t.format("*") for t in ANOMALYDIFFUSION_TEMPLATES}
    d2 = AnomalyDataset(ds, "bottle", "broken_large", size=8, caption_template="{defect} on {category}, {}")
    assert d2[0]["caption"] == "broken large on bottle, *"
    with pytest.raises(ValueError, match="caption_template '{colour}'"):
        AnomalyDataset(ds, "bottle", "broken_large", size=8, caption_template="{colour}")


def test_anomaly_dataset_btad_and_visa(tmp_path):
    b = AnomalyDataset(make_btad(tmp_path / "btad"), "03", "ko", layout="btad", size=8)
    _check_item(b[0], 8, "03+ko")
    named = AnomalyDataset(tmp_path / "btad", 3, "ko", layout="btad", size=8, name_template="damaged")
    assert named[0]["name"] == "damaged"
    v = AnomalyDataset(make_visa(tmp_path / "visa"), "candle", "bad", layout="visa", size=8)
    assert len(v) == 2
    _check_item(v[1], 8, "candle+bad")
    assert v[1]["mask"].sum() > 0  # class-id mask binarised


def test_normal_images_dataset(ds):
    tr = NormalImagesDataset(ds, size=8)
    va = NormalImagesDataset(ds, size=8, set="validation", val_count=2)
    assert len(tr) == (5 - 2) + (4 - 2) and len(va) == 4
    assert not set(e[0] for e in tr.entries) & set(e[0] for e in va.entries)
    it = tr[0]
    _check_item(it, 8, "bottle+good")
    assert it["caption"] == "a photo of bottle" and it["mask"].sum() == 0
    mixed = NormalImagesDataset(ds, categories=["grid"], size=8, include_anomalies=True)
    assert len(mixed) == 2 + 2  # 6 bent -> 2 on the generator side
    last = mixed[len(mixed) - 1]
    assert last["name"] == "grid+bent" and last["caption"] == "a photo of bent on grid" and last["mask"].sum() > 0


def test_datamodule_batches(ds):
    cfg = {"target": "ldm.data.anomaly.AnomalyDataset",
           "params": {"root": str(ds), "category": "bottle", "defect": "broken_large", "size": 8, "repeats": 2}}
    dm = DataModuleFromConfig(batch_size=3, train=cfg, validation={**cfg, "params": {**cfg["params"],
                                                                               "set": "validation"}})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 8, 8, 3) and batch["mask"].shape == (3, 8, 8)
    assert batch["image"].dtype == torch.float32 and batch["caption"] == ["Anomaly *"] * 3
    assert len(dm.val_dataloader().dataset) == 2
    assert dm.train_dataloader().persistent_workers is False
    dm2 = DataModuleFromConfig(batch_size=1, train=cfg, wrap=True)
    assert type(dm2).val_dataloader is DataModuleFromConfig.val_dataloader and "val_dataloader" not in vars(dm2)
    with pytest.raises(ValueError, match="data.params.train"):
        DataModuleFromConfig(batch_size=1, train={"params": {}}).setup()


# ---------------------------------------------------------------- bad input

def test_corrupt_image(ds):
    (ds / "bottle" / "test" / "broken_large" / "001.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*broken_large/001\.png"):
        AnomalyDataset(ds, "bottle", "broken_large", size=8)


def test_mask_size_differs(ds):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(ds / "bottle/ground_truth/broken_large/000_mask.png")
    with pytest.raises(ValueError, match=r"mask size 10x10 differs from image size 32x24: .*000_mask\.png"):
        AnomalyDataset(ds, "bottle", "broken_large", size=8)


def test_all_zero_mask_skipped_with_warning_or_error(ds):
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(ds / "bottle/ground_truth/broken_large/000_mask.png")
    with pytest.warns(UserWarning, match=r"all-zero mask .*000_mask\.png"):
        d = AnomalyDataset(ds, "bottle", "broken_large", size=8)
    assert len(d) == 1
    with pytest.raises(ValueError, match=r"all-zero mask .*000_mask\.png"):
        AnomalyDataset(ds, "bottle", "broken_large", size=8, empty_masks="error")


def test_empty_split_and_unknowns(ds):
    (ds / "bottle/test/contamination/002.png").unlink()
    (ds / "bottle/ground_truth/contamination/002_mask.png").unlink()
    with pytest.raises(ValueError, match=r"empty split: .*bottle\+contamination.*anomaly_split: all"):
        AnomalyDataset(ds, "bottle", "contamination", size=8, anomaly_split="third")  # n = 2 -> k = 0
    assert len(AnomalyDataset(ds, "bottle", "contamination", size=8, anomaly_split="all")) == 2
    with pytest.raises(FileNotFoundError, match="unknown defect 'scratch'"):
        AnomalyDataset(ds, "bottle", "scratch", size=8)
    with pytest.raises(FileNotFoundError, match="unknown category 'zipper'"):
        AnomalyDataset(ds, "zipper", "broken", size=8)
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        AnomalyDataset(ds / "nope", "bottle", "broken_large", size=8)
    with pytest.raises(ValueError, match="set must be"):
        AnomalyDataset(ds, "bottle", "broken_large", set="holdout")
