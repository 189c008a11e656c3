"""IS and IC-LPIPS (``ldm/quality/generative.py``), the local Inception-v3 and ``scripts/generation_quality.py``.

The metrics are checked against closed forms; the Inception-v3 state dict against torchvision's
layout (580 entries and 27,161,264 parameters per torchvision's ``Inception_V3_Weights`` docs; the
shapes below read off torchvision's ``inception.py``); the CLI end to end on 32×32 PNGs with
random-init weight files.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.modules.inception import (InceptionV3, check_inception_state_dict, inception_state_dict_shapes,
                                   load_inception, torchvision_transform_input)
from utils.errors import InputNotFound, UserError
from ldm.quality.generative import (ic_lpips, ic_lpips_details, inception_score, load_images_uint8,
                                      load_png_folder)
from utils.images import uint8_to_float


# ----------------------------------------------------------------------------- Inception Score

def test_is_one_hot_with_uniform_marginal_is_number_of_classes():
    probs = torch.eye(5).repeat(3, 1)  # every class equally often, each prediction certain
    mean, std = inception_score(probs)
    assert mean == pytest.approx(5.0, abs=1e-9) and std == 0.0


def test_is_identical_rows_is_one():
    probs = torch.softmax(torch.tensor([[0.3, -1.0, 2.0, 0.0]]), 1).repeat(6, 1)
    assert inception_score(probs) == (pytest.approx(1.0, abs=1e-9), 0.0)


def test_is_splits_by_hand():
    # N=5, splits=2 → chunks [0, 2) and [2, 5) (i*N//s boundaries)
    probs = torch.tensor([[0.5, 0.5, 0.0],   # chunk 1: marginal (0.75, 0.25, 0)
                          [1.0, 0.0, 0.0],   # KLs 0.5·ln(4/3) and ln(4/3) → IS = (4/3)^0.75
                          [0.0, 0.0, 1.0],   # chunk 2: one-hot over 3 classes, uniform marginal → IS = 3
                          [0.0, 1.0, 0.0],
                          [1.0, 0.0, 0.0]])
    is1, is2 = (4 / 3) ** 0.75, 3.0
    mean, std = inception_score(probs, splits=2)
    assert mean == pytest.approx((is1 + is2) / 2, abs=1e-9)
    assert std == pytest.approx(abs(is1 - is2) / 2, abs=1e-9)  # population std of two values
    assert inception_score(probs[:2])[0] == pytest.approx(is1, abs=1e-9)


def test_is_degenerate_inputs():
    assert all(math.isnan(v) for v in inception_score(torch.zeros(0, 10)))
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.eye(3), splits=4)
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(torch.rand(4, 3) + 1.0)  # unnormalised scores
    with pytest.raises(ValueError, match="non-negative"):
        inception_score(torch.tensor([[1.5, -0.5]]))  # logits, not probabilities


# ----------------------------------------------------------------------------- IC-LPIPS

def _img(v: float) -> torch.Tensor:
    return torch.full((1, 2, 2), v, dtype=torch.float64)


def _mean_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.mean((1, 2, 3)) - b.mean((1, 2, 3))).abs()


def test_ic_lpips_by_hand():
    centres = torch.stack([_img(0.0), _img(1.0), _img(5.0)])
    # 0.5 is equidistant from centres 0 and 1: ties go to the first centre
    gen = torch.stack([_img(v) for v in (0.1, 0.9, 0.2, 0.4, 0.7, 0.5)])
    c0 = np.mean([0.1, 0.3, 0.4, 0.2, 0.3, 0.1])  # pairs of {0.1, 0.2, 0.4, 0.5}
    c1 = 0.2                                      # {0.9, 0.7}
    d = ic_lpips_details(gen, centres, _mean_gap, batch_size=4)
    assert d["cluster_sizes"] == [4, 2, 0]
    assert d["ic_lpips"] == pytest.approx((c0 + c1) / 2, abs=1e-12)
    assert d["ic_lpips_all_clusters"] == pytest.approx((c0 + c1) / 3, abs=1e-12)
    assert math.isnan(d["cluster_scores"][2])
    assert ic_lpips(gen, centres, _mean_gap, batch_size=1) == pytest.approx((c0 + c1) / 2, abs=1e-12)
    assert ic_lpips(gen, centres, _mean_gap, singletons="zero") == pytest.approx((c0 + c1) / 3, abs=1e-12)
    # only the first two members of each cluster: {0.1, 0.2} and {0.9, 0.7}
    assert ic_lpips(gen, centres, _mean_gap, max_per_cluster=2) == pytest.approx((0.1 + 0.2) / 2, abs=1e-12)


def test_ic_lpips_nan_conventions():
    centres = torch.stack([_img(0.0), _img(1.0)])
    singles = torch.stack([_img(0.1), _img(0.9)])
    assert math.isnan(ic_lpips(singles, centres, _mean_gap))
    assert ic_lpips(singles, centres, _mean_gap, singletons="zero") == 0.0  # DFMGAN's convention
    assert math.isnan(ic_lpips(torch.zeros(0, 1, 2, 2), centres, _mean_gap))
    with pytest.raises(ValueError, match="centre"):
        ic_lpips(singles, centres[:0], _mean_gap)
    with pytest.raises(ValueError, match="one per pair"):
        ic_lpips(singles, centres, lambda a, b: torch.zeros(1))


def test_png_helpers(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):  # names 2, 10, 1: natural order is 1, 2, 10
        Image.fromarray(a).save(tmp_path / f"{[2, 10, 1][i]}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    x = load_png_folder(tmp_path)
    assert x.shape == (3, 3, 6, 5) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(arrays[2]).permute(2, 0, 1).float() / 127.5 - 1)
    assert load_images_uint8(sorted(tmp_path.glob("*.png")), size=4).shape == (3, 3, 4, 4)
    assert uint8_to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


# ----------------------------------------------------------------------------- Inception-v3

def test_inception_state_dict_layout_is_torchvision():
    shapes = inception_state_dict_shapes()
    assert len(shapes) == 580
    assert sum(k.endswith("num_batches_tracked") for k in shapes) == 96  # one per BasicConv2d
    with torch.device("meta"):
        assert sum(p.numel() for p in InceptionV3().parameters()) == 27_161_264
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_1a_3x3.bn.num_batches_tracked": (),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
        "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
        "AuxLogits.conv0.conv.weight": (128, 768, 1, 1),
        "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
        "AuxLogits.fc.weight": (1000, 768),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert not any(".conv.bias" in k for k in shapes)  # BasicConv2d convs have no bias
    tops = list(dict.fromkeys(k.split(".")[0] for k in shapes))
    assert tops == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]


def test_inception_forward_and_bn_eps():
    torch.manual_seed(0)
    model = InceptionV3().eval()
    assert model.Mixed_7c.branch_pool.bn.eps == 0.001
    with torch.no_grad():
        y = model(torch.rand(2, 3, 64, 64) * 2 - 1)  # resized to 299 inside
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


def test_transform_input_matches_minus1_1_convention():
    x = torch.rand(2, 3, 5, 5) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet_normalised = ((x + 1) / 2 - mean) / std
    assert torch.allclose(torchvision_transform_input(imagenet_normalised), x, atol=1e-6)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-init Inception-v3 and VGG16 (torchvision layouts) and LPIPS heads, saved to files."""
    from taming.modules.losses.lpips import vgg16_features

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    inc = InceptionV3().state_dict()
    torch.save(inc, d / "inception.pth")
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    torch.save(vgg, d / "vgg16.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 128, 256, 512, 512])}
    torch.save(lin, d / "lin.pth")
    return {"dir": d, "inception": d / "inception.pth", "inception_sd": inc, "vgg": d / "vgg16.pth",
            "lin": d / "lin.pth"}


def test_inception_load_round_trip(weights):
    model = load_inception(str(weights["inception"]))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in weights["inception_sd"].items())
    # DataParallel prefix, a {"state_dict": ...} wrapper and no num_batches_tracked (pre-0.4.1 files) load too
    old = {f"module.{k}": v for k, v in weights["inception_sd"].items() if not k.endswith("num_batches_tracked")}
    path = weights["dir"] / "old_style.pth"
    torch.save({"state_dict": old}, path)
    assert torch.equal(load_inception(str(path)).fc.weight, weights["inception_sd"]["fc.weight"])
    path.unlink()


def test_inception_load_errors_name_the_file(tmp_path, weights):
    missing = tmp_path / "no_such_inception.pth"
    with pytest.raises(InputNotFound, match="no_such_inception.pth"):
        load_inception(str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth"):
        load_inception(str(garbage))
    listed = tmp_path / "listed.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match="listed.pth.*state dict"):
        load_inception(str(listed))
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048), "head.weight": torch.zeros(1)}, partial)
    with pytest.raises(UserError, match=r"partial.pth.*missing key.*unexpected key.*head.weight"):
        load_inception(str(partial))
    bad_shape = dict(weights["inception_sd"], **{"fc.weight": torch.zeros(1008, 2048)})
    with pytest.raises(UserError, match=r"x.pth: 'fc.weight' has shape \(1008, 2048\), expected \(1000, 2048\)"):
        check_inception_state_dict(bad_shape, weights["inception_sd"], "x.pth")


# ----------------------------------------------------------------------------- CLI

@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(1)
    gen = tmp_path / "generated" / "fast" / "brick" / "crack"
    (gen / "image").mkdir(parents=True)
    (gen / "mask").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(gen / "image" / f"{i}.png")
    real = tmp_path / "real" / "crack"
    real.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(real / f"{i:03d}.png")
    return gen, real


def _cli(argv):
    from ldm.quality.generative_folders import main
    from utils.cli import run_cli

    return run_cli("generation_quality.py", lambda: main(argv))


def test_cli_end_to_end(folders, weights, tmp_path, capsys):
    from taming.modules.losses.lpips import LPIPS

    gen, real = folders
    out = tmp_path / "res" / "results.json"
    rc = _cli(["--pairs", str(gen), "--real", str(real), "--inception_weights", str(weights["inception"]),
               "--vgg_weights", str(weights["vgg"]), "--lin_weights", str(weights["lin"]), "--lpips_size", "32",
               "--splits", "2", "--batch_size", "3", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "fast/brick/crack" in captured.out and "IC-LPIPS" in captured.out
    doc = json.loads(out.read_text())
    assert doc["metrics"] == {"is": True, "ic_lpips": True} and doc["settings"]["lpips_heads"] == "learned"
    (row,) = doc["results"]
    assert row["n_generated"] == 4 and row["n_real"] == 2 and sum(row["cluster_sizes"]) == 4

    # the same numbers computed directly from the library pieces
    imgs = uint8_to_float(load_images_uint8(sorted((gen / "image").glob("*.png"))))
    with torch.no_grad():
        probs = torch.softmax(load_inception(str(weights["inception"]))(imgs).double(), 1)
    is_mean, is_std = inception_score(probs, splits=2)
    assert row["is_mean"] == pytest.approx(is_mean, rel=1e-5) and row["is_std"] == pytest.approx(is_std, abs=1e-5)
    lp = LPIPS(use_dropout=False, vgg_weights=str(weights["vgg"]), lin_weights=str(weights["lin"]))
    g = load_png_folder(gen / "image", size=32)
    c = load_png_folder(real, size=32)
    with torch.no_grad():
        want = ic_lpips_details(g, c, lambda x, y: lp(x, y))
    assert row["cluster_sizes"] == want["cluster_sizes"]
    assert row["ic_lpips"] == pytest.approx(want["ic_lpips"], rel=1e-5)


def test_cli_without_weights_says_what_is_needed(folders, tmp_path, capsys):
    gen, real = folders
    rc = _cli(["--pairs", str(gen), "--real", str(real), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("generation_quality.py: error:")
    assert "--inception_weights" in err and "--vgg_weights" in err and "nothing is downloaded" in err
    assert not (tmp_path / "r.json").exists()
    rc = _cli(["--pairs", str(gen), "--inception_weights", str(tmp_path / "absent_inception.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "absent_inception.pth" in err and "\n" not in err
    junk = tmp_path / "junk_vgg.pth"
    junk.write_bytes(b"junk")
    rc = _cli(["--pairs", str(gen), "--real", str(real), "--vgg_weights", str(junk)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "junk_vgg.pth" in err and "\n" not in err
