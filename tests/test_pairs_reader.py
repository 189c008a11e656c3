"""The one reader of the pairs-folder layout (``ldm.pairs``): the export, the segmenter's training pairs
and the folder quality numbers see the same complete pairs and refuse a broken folder the same way."""
from __future__ import annotations

import numpy as np
import pytest

from ldm.export import ExportOptions, export_pairs
from ldm.pairs import PairWriter, find_pairs_folders, read_index, read_pairs, read_pairs_folder
from ldm.quality.folders import folder_quality
from ldm.segmentation.data import scan_pairs
from utils.errors import InputNotFound, UserError

SIZE = 16


def _write(root, category="widget", defect="bump", n=3):
    writer = PairWriter(root, category, defect)
    rng = np.random.default_rng(0)
    for i in range(n):
        original = rng.uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), np.float32)
        mask[4:10, 3:9] = 1
        writer.write(i, np.clip(original + mask[..., None], -1, 1), mask, original,
                     meta={"normal_image": f"good_{i}.png", "seed": 10 + i})
    writer.write_index()
    return writer.root


def _refusals(folder, out):
    """The error each reader gives for ``folder`` (the export, the segmenter, the quality numbers)."""
    errors = []
    for read in (lambda: export_pairs(folder, out, ExportOptions("mvtec")), lambda: scan_pairs(folder),
                 lambda: folder_quality(folder)):
        with pytest.raises(InputNotFound) as e:
            read()
        errors.append(str(e.value))
    return errors


def test_every_level_finds_the_same_folders(tmp_path):
    _write(tmp_path, "widget", "bump")
    _write(tmp_path, "widget", "scratch")
    _write(tmp_path, "gadget", "dent")
    (tmp_path / ".studio-uploads" / "x" / "image").mkdir(parents=True)  # dot-folders are not pairs
    names = lambda found: [(c, d) for _, c, d in found]  # noqa: E731
    assert names(find_pairs_folders(tmp_path)) == [("gadget", "dent"), ("widget", "bump"), ("widget", "scratch")]
    assert names(find_pairs_folders(tmp_path, "widget")) == [("widget", "bump"), ("widget", "scratch")]
    assert names(find_pairs_folders(tmp_path / "widget")) == [("widget", "bump"), ("widget", "scratch")]
    assert names(find_pairs_folders(tmp_path / "widget" / "bump")) == [("widget", "bump")]
    with pytest.raises(UserError, match="is category 'widget', not 'gadget'"):
        find_pairs_folders(tmp_path / "widget", "gadget")
    with pytest.raises(InputNotFound, match="pairs folder not found"):
        find_pairs_folders(tmp_path / "nowhere")
    assert [p.n for f in read_pairs(tmp_path) for p in f.pairs] == [0, 1, 2] * 3


def test_a_pair_without_its_strip_is_skipped_by_every_reader(tmp_path):
    folder = _write(tmp_path)
    (folder / "image-mask-ori" / "1.png").unlink()  # pair 1 is still being written
    read = read_pairs_folder(folder)
    assert [p.n for p in read.pairs] == [0, 2] and read.incomplete == 1
    assert [p.n for p in scan_pairs(tmp_path)] == [0, 2]
    assert folder_quality(folder)["n_total"] == 2
    manifest = export_pairs(folder, tmp_path / "out", ExportOptions("mvtec"))
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["incomplete_skipped"] == 1


def test_a_missing_mask_is_refused_the_same_way_by_every_reader(tmp_path):
    folder = _write(tmp_path)
    (folder / "mask" / "1.png").unlink()  # its strip says pair 1 is complete: its mask was lost
    expected = f"generated image without mask: {folder / 'image' / '1.png'} (expected {folder / 'mask' / '1'}.png)"
    assert set(_refusals(folder, tmp_path / "out")) == {expected}
    # a folder without strips (another tool's pairs): an image without its mask is refused too
    for strip in (folder / "image-mask-ori").iterdir():
        strip.unlink()
    (folder / "image-mask-ori").rmdir()
    assert set(_refusals(folder, tmp_path / "out")) == {expected}


def test_a_folder_without_masks_is_refused_the_same_way_by_every_reader(tmp_path):
    folder = _write(tmp_path)
    for mask in (folder / "mask").iterdir():
        mask.unlink()
    (folder / "mask").rmdir()
    assert set(_refusals(folder, tmp_path / "out")) == {f"pairs folder without mask/: {folder / 'mask'}"}


def test_the_index_reader_types_its_cells_and_names_a_bad_row(tmp_path):
    folder = _write(tmp_path)
    rows = read_index(folder)
    assert [(r["n"], r["seed"], r["normal_image"]) for r in rows] == [(0, 10, "good_0.png"), (1, 11, "good_1.png"),
                                                                      (2, 12, "good_2.png")]
    assert all(isinstance(r["score"], float) and r["mask_origin"] is None for r in rows)
    text = (folder / "pairs.csv").read_text().splitlines()
    (folder / "pairs.csv").write_text("\n".join(text[:2] + ["x" + text[2]] + text[3:]) + "\n")
    with pytest.raises(UserError, match=r"pairs\.csv, line 3: n='x1' is not an integer"):
        read_index(folder)
    # the export reads pairs.csv through the same reader
    with pytest.raises(UserError, match=r"pairs\.csv, line 3: n='x1' is not an integer"):
        export_pairs(folder, tmp_path / "out", ExportOptions("mvtec"))
