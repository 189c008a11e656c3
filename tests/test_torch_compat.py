"""The torch a user already has: weights are read by their file format, the declared torch range holds,
and features newer than its floor fall back when missing.

torch >= 2.13 reads ``.safetensors`` through ``torch.load``; older torch (what GPU images ship) raises
``invalid load key``. ``tests/compat/sitecustomize.py`` gives any interpreter that older behaviour.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "tests" / "compat"


def _compat_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fast_compat_site", COMPAT / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def old_torch_load(monkeypatch):
    """In this process: ``torch.load`` refuses safetensors files, like torch < 2.13."""
    original = getattr(torch.load, "__wrapped__", torch.load)
    monkeypatch.setattr(torch, "load", original)
    monkeypatch.setattr(torch.serialization, "load", original)
    _compat_module()._patch(torch)
    yield


def _safetensors_file(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_the_simulated_old_torch_refuses_safetensors(old_torch_load, tmp_path):
    path = _safetensors_file(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    with pytest.raises(pickle.UnpicklingError, match="invalid load key"):
        torch.load(path, weights_only=True)
    torch.save({"a": torch.ones(2)}, tmp_path / "w.pt")  # torch files still load
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["a"], torch.ones(2))


def test_safe_load_reads_safetensors_with_its_own_library(old_torch_load, tmp_path):
    from utils.safe_load import extract_state_dict, is_safetensors_file, load_module_weights, safe_load

    net = torch.nn.Linear(3, 2)
    path = _safetensors_file(tmp_path / "FARM-3.safetensors", {k: v.detach().clone() for k, v in net.state_dict().items()})
    no_suffix = tmp_path / "weights.bin"
    no_suffix.write_bytes(path.read_bytes())
    assert is_safetensors_file(path) and is_safetensors_file(no_suffix)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert not is_safetensors_file(tmp_path / "w.pt")
    for p in (path, no_suffix):
        sd = extract_state_dict(safe_load(p))
        assert set(sd) == {"weight", "bias"} and torch.equal(sd["weight"], net.weight.detach())
    other = torch.nn.Linear(3, 2)
    load_module_weights(other, path)
    assert torch.equal(other.weight, net.weight)


def test_a_damaged_safetensors_file_is_one_line_naming_it(old_torch_load, tmp_path):
    from utils.safe_load import safe_load

    path = _safetensors_file(tmp_path / "fine-2.safetensors", {"a": torch.ones(64)})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UserError) as e:
        safe_load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_embeddings_load_by_format_whatever_the_suffix(old_torch_load, tmp_path):
    from ldm.modules.embedding_manager import EmbeddingManager
    from utils.tensor_files import save_safetensors

    tensors = {"string_to_token/*": torch.tensor(265), "string_to_param/brick+scratch": torch.randn(1, 8)}
    save_safetensors(tensors, tmp_path / "embeddings.safetensors")
    (tmp_path / "embeddings.bin").write_bytes((tmp_path / "embeddings.safetensors").read_bytes())
    for name in ("embeddings.safetensors", "embeddings.bin"):
        tokens, params = EmbeddingManager.read_file(tmp_path / name)
        assert int(tokens["*"]) == 265 and torch.equal(params["brick+scratch"], tensors["string_to_param/brick+scratch"])


DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    assert getattr(torch.load, "refuses_safetensors", False), "tests/compat/sitecustomize.py is not active"
    import generate_with_mask
    from ldm.export import ExportOptions, export_pairs
    from tests.run_fixture import gen_args, make_dataset, train_fast_run

    work = Path(sys.argv[1])
    data = make_dataset(work / "data")
    _, _, ckdir = train_fast_run(work, data, steps=2)
    assert (ckdir / "FARM-2.safetensors").is_file() and (ckdir / "embeddings_gs-2.safetensors").is_file()
    result = generate_with_mask.main(gen_args(data, ckdir, work / "pairs"))
    assert result["written"] == 5, result
    manifest = export_pairs(work / "pairs" / "brick" / "scratch", work / "export", ExportOptions("mvtec"))
    print("OK", result["written"], manifest["counts"]["kept"])
''')


def test_train_generate_export_where_torch_load_refuses_safetensors(tmp_path):
    """The GPU user's failure (``cannot read FARM-3.safetensors: invalid load key``): a real training run
    writes safetensors artifacts, generation reads them, export packs the pairs — all under a torch.load
    that refuses safetensors."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(COMPAT), str(ROOT)]), PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 5 5" in proc.stdout, proc.stdout[-2000:]


# ------------------------------------------------------------------------------------------ torch range
def _specifier(name: str):
    from packaging.requirements import Requirement

    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).name == name:
            return Requirement(line).specifier
    raise AssertionError(f"{name} is not in requirements.txt")


def test_requirements_accept_the_torch_a_gpu_user_has():
    spec = _specifier("torch")
    for version in ("2.5.1", "2.11.0", "2.13.0"):
        assert spec.contains(version), f"requirements.txt's torch {spec} refuses {version}"
    assert not spec.contains("2.4.1"), "the floor stated in README/requirements is torch 2.5"
    assert "safetensors" in (ROOT / "requirements.txt").read_text()
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert 'TORCH_PIN="${FAST_TORCH_PIN:-torch==2.13.0}"' in setup  # CPU machines keep the exact CPU build


def test_fused_adam_falls_back_where_the_kernel_is_missing(monkeypatch):
    """The fused CPU AdamW kernel is newer than some torch builds: without it, the plain loop."""
    import ldm.util as util

    params = [torch.nn.Parameter(torch.zeros(3))]
    monkeypatch.setattr(util, "_FUSED_SUPPORT", {})
    assert util.fused_optimizer_kwargs(params) == {"fused": True}

    real = torch.optim.AdamW

    def no_fused_cpu(p, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices: ['cuda', 'xpu', 'privateuseone']")
        return real(p, *args, **kwargs)

    monkeypatch.setattr(util, "_FUSED_SUPPORT", {})
    monkeypatch.setattr(torch.optim, "AdamW", no_fused_cpu)
    assert util.fused_optimizer_kwargs(params) == {}
    assert util.fused_optimizer_kwargs([torch.zeros(2, dtype=torch.long)]) == {}
