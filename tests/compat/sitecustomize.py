"""Make this interpreter's ``torch.load`` refuse safetensors files, as torch < 2.13 does.

``scripts/test.sh`` puts this folder on ``PYTHONPATH``, so the whole suite and every subprocess it
starts (``main.py``, ``generate_with_mask.py``, the demo) run as on the torch a GPU user already has:
a code path that reads ``.safetensors`` through ``torch.load`` fails there as it would for them.
torch is patched when it is first imported (a meta-path hook), so Python processes that never
import torch pay nothing.
"""
import importlib.abc
import importlib.machinery
import pickle
import sys

REFUSAL = "invalid load key, '\\xf8'. (simulated torch < 2.13: torch.load does not read safetensors)"


def _is_safetensors(f) -> bool:
    try:
        if hasattr(f, "read"):
            pos = f.tell()
            head = f.read(9)
            f.seek(pos)
        else:
            with open(f, "rb") as fh:
                head = fh.read(9)
    except (OSError, TypeError, ValueError):
        return False
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith((b"PK", b"\x80"))


def _patch(torch) -> None:
    original = torch.load

    def load(f, *args, **kwargs):
        if _is_safetensors(f):
            raise pickle.UnpicklingError(REFUSAL)
        return original(f, *args, **kwargs)

    load.__wrapped__ = original
    load.refuses_safetensors = True
    torch.load = load
    torch.serialization.load = load


class _PatchTorchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if __name__ == "sitecustomize":  # at interpreter start-up; tests import this file under another name
    sys.meta_path.insert(0, _PatchTorchOnImport())
