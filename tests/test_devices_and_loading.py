"""--gpus parsing, atomic writes and loading files without executing code from them."""
import os

import pytest
import torch

from ldm.trainer.devices import parse_gpus
from utils.atomic import atomic_path
from utils.safe_load import UnsafePickleError, extract_state_dict, load_module_weights, safe_load


@pytest.mark.parametrize("value,count,expected", [
    (None, 0, ("cpu", 1)), ("", 2, ("cpu", 1)), ("none", 2, ("cpu", 1)),
    ("0", 2, ("gpu", [0])), ("0,", 2, ("gpu", [0])), ("1", 2, ("gpu", [1])),
    ("0,1", 2, ("gpu", [0, 1])), ("0,1,", 2, ("gpu", [0, 1])), ("-1", 3, ("gpu", [0, 1, 2])),
])
def test_parse_gpus(value, count, expected):
    choice = parse_gpus(value, cuda_count=count)
    assert (choice.accelerator, choice.devices) == expected
    assert choice.strategy == ("ddp" if isinstance(expected[1], list) and len(expected[1]) > 1 else "auto")


def test_parse_gpus_falls_back_to_cpu_without_gpu():
    with pytest.warns(UserWarning, match="no GPU"):
        assert parse_gpus("0,", cuda_count=0).accelerator == "cpu"
    with pytest.warns(UserWarning):
        assert parse_gpus("-1", cuda_count=0).accelerator == "cpu"


@pytest.mark.parametrize("bad", ["a", "0,x", "-2", "0,0", "3"])
def test_parse_gpus_errors(bad):
    with pytest.raises(ValueError, match="--gpus"):
        parse_gpus(bad, cuda_count=2)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)


class _Renamed(torch.nn.Module):
    """Same architecture, other attribute names (like an official module whose names differ)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(2, 3, 3)
        self.b = torch.nn.BatchNorm2d(3)


def test_pickled_module_loads_as_tensors_without_importing_its_class(tmp_path, capsys):
    net = _Net()
    net.bn.running_mean.fill_(0.5)
    torch.save(net, tmp_path / "FARM-10.pt")  # a whole pickled module, like the official files
    obj = safe_load(tmp_path / "FARM-10.pt")
    assert not isinstance(obj, torch.nn.Module)
    sd = extract_state_dict(obj)
    for k, v in net.state_dict().items():
        assert torch.equal(sd[k], v)
    same, renamed = _Net(), _Renamed()
    load_module_weights(same, tmp_path / "FARM-10.pt")
    assert "by position" not in capsys.readouterr().err      # names matched: nothing to report
    load_module_weights(renamed, tmp_path / "FARM-10.pt")
    err = capsys.readouterr().err                            # loading by position shows the mapping it used
    assert "by position" in err and "conv.weight -> a.weight" in err and "bn.running_mean -> b.running_mean" in err
    assert torch.equal(same.conv.weight, net.conv.weight) and torch.equal(renamed.a.weight, net.conv.weight)
    assert torch.equal(renamed.b.running_mean, net.bn.running_mean)


def test_load_module_weights_rejects_other_architecture(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="does not fit|tensors"):
        load_module_weights(torch.nn.Linear(4, 3), tmp_path / "w.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="refusing to call"):
        safe_load(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        safe_load(tmp_path / "nope.pt")
