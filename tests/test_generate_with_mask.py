"""generate_with_mask.py: layout, exact background, determinism across batch sizes, resume, errors."""
import numpy as np
import pytest
from PIL import Image

import generate_with_mask as gen
from tests.run_fixture import gen_args, make_dataset, make_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("gen")
    data = make_dataset(work / "texture-ad")
    return work, data, make_run(work, data)


def _args(work, data, ckdir, out, *extra):
    return gen_args(data, ckdir, out, *extra)


def _read(folder, sub, n):
    return np.asarray(Image.open(folder / sub / f"{n}.png"))


def test_layout_background_and_batch_size_determinism(setup, tmp_path):
    work, data, ckdir = setup
    gen.main(_args(work, data, ckdir, tmp_path / "a", "--batch_size", "1", "--weight_idx", "5"))
    gen.main(_args(work, data, ckdir, tmp_path / "b", "--batch_size", "4"))
    a, b = tmp_path / "a" / "brick" / "scratch", tmp_path / "b" / "brick" / "scratch"
    assert (a / "contact_sheet.png").is_file()
    for n in range(5):
        img, mask, strip = _read(a, "image", n), _read(a, "mask", n), _read(a, "image-mask-ori", n)
        assert img.shape == (32, 32, 3) and mask.shape == (32, 32) and strip.shape == (32, 96, 3)
        assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        original = strip[:, 64:]
        outside = mask == 0
        assert np.array_equal(img[outside], original[outside])  # background copied exactly
        assert not np.array_equal(img[~outside], original[~outside])  # something was synthesised inside
        # pair n is drawn from the same noise in any batch; a batched convolution rounds differently
        # (latents differ by ~1e-5), which may move a pixel by one grey level, never more
        assert np.array_equal(_read(a, "mask", n), _read(b, "mask", n)), n
        assert np.array_equal(strip[:, 32:], _read(b, "image-mask-ori", n)[:, 32:]), n
        for sub in ("image", "image-mask-ori"):
            moved = np.abs(_read(a, sub, n).astype(int) - _read(b, sub, n).astype(int))
            assert moved.max() <= 1 and (moved > 0).mean() < 0.01, (sub, n, moved.max(), (moved > 0).sum())
    assert not [p for p in a.rglob(".*") if p.is_file()]  # no temp files left behind


def test_resume_skips_finished_pairs_and_rewrites_deleted_ones(setup, tmp_path):
    work, data, ckdir = setup
    args = _args(work, data, ckdir, tmp_path, "--batch_size", "2")
    gen.main(args)
    root = tmp_path / "brick" / "scratch"
    before = {n: _read(root, "image", n) for n in range(5)}
    mtime = (root / "image" / "0.png").stat().st_mtime_ns
    (root / "image" / "3.png").unlink()
    (root / "image-mask-ori" / "4.png").unlink()
    stats = gen.main(args)
    assert stats["written"] == 2
    assert (root / "image" / "0.png").stat().st_mtime_ns == mtime
    for n in range(5):
        assert np.array_equal(_read(root, "image", n), before[n])


def test_other_settings_into_the_same_folder_are_refused(setup, tmp_path):
    work, data, ckdir = setup
    gen.main(_args(work, data, ckdir, tmp_path))
    with pytest.raises(ValueError, match="other settings"):
        gen.main(_args(work, data, ckdir, tmp_path, "--mask_source", "perlin"))


def test_wrong_weight_idx_lists_available(setup, tmp_path):
    work, data, ckdir = setup
    with pytest.raises(ValueError, match=r"--weight_idx 10000 not found .* available: \[5\]"):
        gen.main(_args(work, data, ckdir, tmp_path, "--weight_idx", "10000"))


def test_rank_split_has_no_duplicates(setup, tmp_path, monkeypatch):
    work, data, ckdir = setup
    written = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        written.append(gen.main(_args(work, data, ckdir, tmp_path))["written"])
    assert written == [3, 2]
    assert sorted(p.name for p in (tmp_path / "brick" / "scratch" / "image").iterdir()) == [f"{n}.png" for n in range(5)]
