"""A full disk while writing pairs (``generate_with_mask.py``) or an export (``scripts/export_pairs.py``).

The disk fills up after K files: from the (K+1)-th file opened for writing under the test's folder on,
every write puts half of its bytes on disk and then fails with ``ENOSPC`` and no file name, as
``write(2)`` does on a full disk (so a non-atomic writer would leave a truncated PNG or CSV behind).
For several K (sweeping every kind of file the command writes) the command must

* stop with exit code 2 and exactly one stderr line, ``no space left on device``, naming the folder it
  was writing (not a temporary name), without a traceback;
* leave no temporary file, no truncated file, no partial pair (every pair on disk has its image, mask,
  meta and strip) and no ``pairs.csv`` row without all its files; an export leaves nothing at ``--out``;
* once space is freed, a plain rerun ends with exactly the bytes of an uninterrupted run into another
  folder. Generation: every file, no exclusion. Export: every file, after replacing the export's own
  absolute path with ``<out>`` in the two files that legitimately record where the export lives
  (``export_manifest.json``'s ``out`` field and the mmseg ``dataset_config.py``'s ``data_root``);
  nothing else is excluded (no file holds a time).
"""
from __future__ import annotations

import builtins
import errno
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

import generate_with_mask as gen_mod
from ldm.pairs import INDEX, read_index
from tests.run_fixture import gen_args, make_dataset, make_run
from utils.cli import run_cli

N_SAMPLES = 3


class _FullFile:
    """A file on a full disk: ``write`` stores half of the data, then fails like write(2) does."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self):  # no fast paths (sendfile, PIL's direct fd writes): everything goes through write
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class Disk:
    """Counts files opened for writing under ``root``; after ``room`` of them the disk is full."""

    def __init__(self, root: Path, room: float = float("inf")):
        self.root, self.room = str(root), room
        self.opened: list[str] = []
        self._lock = threading.Lock()

    def install(self, mp) -> "Disk":
        real = builtins.open

        def fake_open(file, mode="r", *args, **kwargs):
            f = real(file, mode, *args, **kwargs)
            if isinstance(file, (str, Path)) and str(file).startswith(self.root) and set(mode) & set("wax+"):
                with self._lock:
                    self.opened.append(str(file))
                    full = len(self.opened) > self.room
                if full:
                    return _FullFile(f)
            return f

        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)  # pathlib's write_text/write_bytes
        return self


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    assert lines[0].startswith(f"{prog}: error: no space left on device"), lines[0]
    return lines[0]


def _no_temporary_or_truncated_files(root: Path) -> None:
    hidden = [p for p in root.rglob(".*")]
    assert not hidden, f"temporary files left: {hidden[:3]}"
    for p in root.rglob("*.png"):
        with Image.open(p) as im:
            im.load()  # a truncated PNG fails here


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("full")
    data = make_dataset(work / "texture-ad")
    ckdir = make_run(work, data)
    ref = work / "reference"
    assert run_cli("generate_with_mask.py", lambda: gen_mod.main(_args(data, ckdir, ref)) and 0) == 0
    return work, data, ckdir, ref / "brick" / "scratch"


def _args(data, ckdir, out) -> list:
    return gen_args(data, ckdir, out, "--n_samples", str(N_SAMPLES), "--batch_size", "2")


def _generate(data, ckdir, out) -> int:
    return run_cli("generate_with_mask.py", lambda: gen_mod.main(_args(data, ckdir, out)) and 0)


def test_generation_writes_the_files_the_sweep_assumes(run, tmp_path, monkeypatch):
    """The file order the K values below are chosen from: 2 manifests, 4 files per pair, index, sheet."""
    work, data, ckdir, _ = run
    disk = Disk(tmp_path).install(monkeypatch)
    assert _generate(data, ckdir, tmp_path / "out") == 0
    root = tmp_path / "out" / "brick" / "scratch"
    # every file goes through a temporary ".<name>.<random><suffix>" beside it (utils.atomic)
    names = [str(Path(p).parent.relative_to(root) / Path(p).name[1:].rsplit(".", 2)[0]) for p in disk.opened]
    assert len(names) == len(set(names)) == 2 + 4 * N_SAMPLES + 2, names
    assert names[:2] == ["synthesis.json", "provenance.json"] and names[-2:] == ["pairs.csv", "contact_sheet.png"]


# K (files written before the disk is full), every one: the disk fills at synthesis.json, provenance.json, at
# each of the image, mask, meta and strip (the completion mark) of every pair, at pairs.csv and at the
# contact sheet (the last file)
@pytest.mark.parametrize("room", range(2 + 4 * N_SAMPLES + 2))
def test_generation_on_a_full_disk_stops_cleanly_and_a_rerun_ends_identical(run, tmp_path, monkeypatch, capsys,
                                                                             room):
    work, data, ckdir, ref = run
    out = tmp_path / "out"
    root = out / "brick" / "scratch"
    with monkeypatch.context() as mp:
        Disk(tmp_path, room).install(mp)
        capsys.readouterr()
        rc = _generate(data, ckdir, out)
        err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_error_line(err, "generate_with_mask.py")
    assert str(root) in line, line  # names the folder being written, not a temporary file
    _no_temporary_or_truncated_files(out)
    files = {k: v for k, v in _tree(root).items()} if root.is_dir() else {}
    pairs = {Path(k).stem for k in files if k.split("/")[0] in ("image", "mask", "image-mask-ori", "meta")}
    for n in pairs:  # every pair on disk is complete
        for part in (f"image/{n}.png", f"mask/{n}.png", f"image-mask-ori/{n}.png", f"meta/{n}.json"):
            assert part in files, f"pair {n} left without {part} (room {room})"
    if (root / INDEX).is_file():
        for row in read_index(root):
            assert (root / row["image"]).is_file() and (root / row["mask"]).is_file()
            assert (root / "image-mask-ori" / f"{row['n']}.png").is_file()
    for name, data_ in files.items():  # what is there is already what the uninterrupted run has
        assert ref.joinpath(name).read_bytes() == data_, name

    assert _generate(data, ckdir, out) == 0  # space freed: the rerun resumes
    a, b = _tree(root), _tree(ref)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name


# ------------------------------------------------------------------------------------------------ export
def _export(pairs, out, fmt) -> int:
    from ldm.export import main

    return run_cli("export_pairs.py", lambda: main(["--pairs", str(pairs), "--format", fmt, "--out", str(out)]))


def _normalised(tree: dict, out: Path) -> dict:
    """The export's own absolute path is recorded in export_manifest.json ("out") and, for mmseg, in
    dataset_config.py (data_root): replaced by <out> there and only there."""
    norm = dict(tree)
    for name in ("export_manifest.json", "dataset_config.py"):
        if name in norm:
            norm[name] = norm[name].replace(str(out.resolve()).encode(), b"<out>")
    return norm


@pytest.mark.parametrize("fmt", ["mvtec", "mmseg", "hf"])
def test_export_on_a_full_disk_leaves_nothing_and_a_rerun_ends_identical(run, tmp_path, monkeypatch, capsys, fmt):
    work, data, ckdir, ref = run
    ref_out = tmp_path / "reference"
    with monkeypatch.context() as mp:
        disk = Disk(tmp_path).install(mp)
        assert _export(ref, ref_out, fmt) == 0
    total = len(disk.opened)
    assert total >= 2 * N_SAMPLES + 2, disk.opened  # images, masks, index.csv, manifest at least
    expected = _normalised(_tree(ref_out), ref_out)
    out = tmp_path / "parent" / "out"
    for room in range(total):  # the disk fills at every file of the export in turn
        with monkeypatch.context() as mp:
            Disk(tmp_path, room).install(mp)
            capsys.readouterr()
            rc = _export(ref, out, fmt)
            err = capsys.readouterr().err
        assert rc == 2, (room, err)
        line = _one_error_line(err, "export_pairs.py")
        assert line.endswith(f": {out}"), (room, line)  # names --out, not the temporary folder
        assert not out.exists() and list(out.parent.iterdir()) == [], (room, list(out.parent.iterdir()))
    assert _export(ref, out, fmt) == 0  # space freed
    assert _normalised(_tree(out), out) == expected
