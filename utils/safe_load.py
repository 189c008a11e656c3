"""Loading ``.pt`` / ``.ckpt`` files without executing code from them.

The official FAST artifacts (``FARM-*.pt``, ``fine-*.pt``) are whole pickled modules, and
``embeddings*.pt`` pickles an ``nn.ParameterDict``; LDM checkpoints may hold Lightning objects.
``torch.load(weights_only=True)`` rejects them, and ``weights_only=False`` would run whatever the
file asks for. :func:`safe_load` first tries ``weights_only=True``; if that fails it unpickles with a
restricted unpickler: tensors, parameters and plain containers are rebuilt, any other class becomes
an inert :class:`PickledObject` that only records its pickled state, and a file that asks to *call*
anything outside the allow-list (``os.system``, ``eval``, a class constructor, …) is refused with
:class:`UnsafePickleError`. :func:`extract_state_dict` then turns such a pickled module into a plain
``state_dict``.
"""
from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import sys
import types
from typing import Any

import torch

from utils.errors import InputNotFound, UserError


class UnsafePickleError(pickle.UnpicklingError, UserError):
    """The file asked to call something that is not needed to rebuild tensors."""


class PickledObject:
    """Inert stand-in for an instance of a class we refuse to import."""

    _qualname = "?"

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_pickled_state", state)

    def __repr__(self) -> str:
        return f"<PickledObject {self._qualname}>"


class _RefuseCalls(type):
    def __call__(cls, *args, **kwargs):
        raise UnsafePickleError(f"refusing to call '{cls._qualname}' while loading (code execution is not allowed)")


def _stub_class(module: str, name: str) -> type:
    return _RefuseCalls(name, (PickledObject,), {"_qualname": f"{module}.{name}", "__module__": "utils.safe_load"})


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` for protocol-0/1 pickles, only for inert stand-ins."""
    if isinstance(cls, type) and issubclass(cls, PickledObject) and base is object:
        obj = object.__new__(cls)
        return obj
    raise UnsafePickleError(f"refusing copyreg._reconstructor for {cls!r}")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
}
for _opt in ("_rebuild_tensor_v3", "_rebuild_parameter_with_state"):
    if hasattr(torch._utils, _opt):
        _ALLOWED[("torch._utils", _opt)] = getattr(torch._utils, _opt)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        # protocol-2 pickles written by Python 3 name builtins the Python 2 way
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stub_class(module, name)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) needs Unpickler (zip archives) and load (legacy, raw pickle files)
_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=_restricted_load,
                                           __name__="restricted_pickle")


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a weights file, never executing code from it (see module docstring).

    The file's own format decides the reader, never the torch version: ``.safetensors`` (by its
    header, whatever the suffix) through the safetensors library, returning ``{name: tensor}``;
    anything else through ``torch.load``. (torch >= 2.13 happens to read safetensors in
    ``torch.load``; older torch, what a GPU user may have, does not.)"""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputNotFound(f"no such file: {path}")
    if path.endswith(".safetensors") or is_safetensors_file(path):
        from utils.tensor_files import load_safetensors

        tensors = load_safetensors(path)[0]
        if map_location not in (None, "cpu") and not callable(map_location):
            tensors = {k: v.to(map_location) for k, v in tensors.items()}
        return tensors
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # corrupt or truncated archive, random bytes (IndexError, struct.error, ...)
        if "weights_only" not in str(e) and "Unsupported" not in str(e):
            raise UserError(f"cannot read {path}: truncated or not a torch file ({_first_line(e)})") from None
    try:
        return torch.load(path, map_location=map_location, pickle_module=_restricted_pickle, weights_only=False)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:
        raise UserError(f"cannot read {path}: truncated or not a torch file ({_first_line(e)})") from None


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file: 8 bytes of little-endian header length, then a JSON
    object of that length (torch files start with a zip or pickle header instead)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _module_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = getattr(obj, "_pickled_state", None)
    if not isinstance(state, dict):
        return
    for key in ("_parameters", "_buffers"):
        for name, value in (state.get(key) or {}).items():
            if isinstance(value, torch.Tensor):
                non_persistent = state.get("_non_persistent_buffers_set") or set()
                if key == "_buffers" and name in non_persistent:
                    continue
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{name}.", out)


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a state dict, a Lightning checkpoint, a real module or a
    pickled module loaded by :func:`safe_load`."""
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, PickledObject):
        out: dict[str, torch.Tensor] = {}
        _module_tensors(obj, "", out)
        if not out:
            raise UserError(f"pickled object {obj!r} holds no tensors")
        return out
    if isinstance(obj, dict):
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            return extract_state_dict(obj["state_dict"])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise UserError(f"cannot find a state dict in an object of type {type(obj).__name__}")


def read_weights_file(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, torch.Tensor]:
    """The flat state dict of a user-supplied local weights file (``what``: e.g. "LPIPS VGG16 weights"),
    with one-line errors that name the file; a ``module.`` prefix (DataParallel) is dropped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputNotFound(f"{what} file not found: {path} (nothing is downloaded{'; ' + hint if hint else ''})")
    try:
        sd = extract_state_dict(safe_load(path))
    except UserError as e:
        raise UserError(f"{what} file {path} does not hold a state dict of tensors ({_first_line(e)})") from None
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_module_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load weights saved by us (a state dict) or an official pickled module into ``module``.

    Names are matched first; if the file uses other attribute names but the same architecture, the
    tensors are matched in registration order and must agree in shape, and the name mapping used is
    printed (to stderr) so a wrong pairing can be seen. Anything else is an error.
    """
    sd = extract_state_dict(safe_load(path))
    own = module.state_dict()
    if set(sd) == set(own):
        for name, value in sd.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise UserError(f"{path}: tensor '{name}' {tuple(value.shape)} does not fit "
                                 f"{tuple(own[name].shape)} of {module.__class__.__name__}")
        module.load_state_dict(sd, strict=True)
        return
    if len(sd) != len(own):
        raise UserError(f"{path}: {len(sd)} tensors, but {module.__class__.__name__} has {len(own)} "
                         f"(first unknown key: {next(iter(set(sd) - set(own)), None)})")
    mapped = {}
    for (name, ref), (src_name, value) in zip(own.items(), sd.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise UserError(f"{path}: tensor '{src_name}' {tuple(value.shape)} does not fit '{name}' "
                             f"{tuple(ref.shape)} of {module.__class__.__name__}")
        mapped[name] = value
    renamed = [(src_name, name) for name, src_name in zip(own, sd) if src_name != name]
    print(f"{path}: parameter names differ from {module.__class__.__name__}'s; loaded {len(mapped)} tensors "
          f"by position ({len(renamed)} renamed):", file=sys.stderr)
    for src_name, name in renamed:
        print(f"  {src_name} -> {name}", file=sys.stderr)
    module.load_state_dict(mapped, strict=True)


def summarise_keys(keys, limit: int = 20) -> str:
    keys = list(keys)
    if len(keys) <= limit:
        return str(keys)
    return f"{keys[:limit]} … and {len(keys) - limit} more"


def load_checkpoint_nonstrict(module: torch.nn.Module, path: str | os.PathLike, ignore_keys=(),
                              strip_prefix: str | None = None) -> tuple[dict, list, list]:
    """CompVis ``init_from_ckpt``: read ``path`` safely, drop ``ignore_keys`` prefixes, load non-strictly
    and print the missing/unexpected summary. ``strip_prefix`` (e.g. ``first_stage_model.``) is removed
    when none of the file's keys match the module but prefixed ones do (a full LDM checkpoint given to
    its autoencoder). Returns ``(state_dict, missing, unexpected)``."""
    sd = extract_state_dict(safe_load(path))
    if strip_prefix and not set(module.state_dict()).intersection(sd) and any(k.startswith(strip_prefix) for k in sd):
        sd = {k[len(strip_prefix):]: v for k, v in sd.items() if k.startswith(strip_prefix)}
    for k in list(sd):
        if any(k.startswith(ik) for ik in ignore_keys):
            print(f"Deleting key {k} from state_dict.")
            del sd[k]
    own = module.state_dict()
    matched = [k for k in sd if k in own]
    if sd and not matched:
        raise UserError(f"{path}: none of its {len(sd)} tensors matches {module.__class__.__name__} "
                        f"(e.g. '{next(iter(sd))}'): a checkpoint of another model?")
    for k in matched:
        if tuple(sd[k].shape) != tuple(own[k].shape):
            raise UserError(f"{path}: tensor '{k}' has shape {tuple(sd[k].shape)}, {module.__class__.__name__} "
                            f"expects {tuple(own[k].shape)}: a checkpoint of another architecture?")
    missing, unexpected = module.load_state_dict(sd, strict=False)
    print(f"Restored from {path} with {len(missing)} missing and {len(unexpected)} unexpected keys")
    if missing:
        print(f"Missing Keys: {summarise_keys(missing)}")
    if unexpected:
        print(f"Unexpected Keys: {summarise_keys(unexpected)}")
    return sd, list(missing), list(unexpected)
