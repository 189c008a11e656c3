"""Small helpers shared by the whole code base, above all the LDM config language.

A config node is ``{"target": "dotted.path.Class", "params": {...}}``; ``instantiate_from_config``
imports ``target`` and calls it with ``params`` (plus any keyword arguments the caller adds, which is
how a model hands itself to its embedding manager).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from utils.errors import UserError


def exists(x: Any) -> bool:
    return x is not None


def default(val: Any, d: Any) -> Any:
    """``val`` unless it is None; ``d`` may be a zero-argument callable evaluated lazily."""
    if exists(val):
        return val
    return d() if callable(d) else d


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    module, _, name = string.rpartition(".")
    if not module:
        raise UserError(f"target '{string}' is not a dotted path (expected 'package.module.Name')")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ImportError(f"cannot import module '{module}' for target '{string}': {e}") from e
    if reload:
        mod = importlib.reload(mod)
    try:
        return getattr(mod, name)
    except AttributeError:
        raise ImportError(f"module '{module}' has no attribute '{name}' (target '{string}')") from None


def instantiate_from_config(config: Mapping | None, **kwargs: Any) -> Any:
    """Build ``config.target(**config.params, **kwargs)``.

    The sentinels ``__is_first_stage__`` and ``__is_unconditional__`` return None, as in CompVis LDM.
    """
    if config is None or "target" not in config:
        if config in ("__is_first_stage__", "__is_unconditional__"):
            return None
        raise UserError(f"config node has no 'target' key: {dict(config) if config is not None else None}")
    params = config.get("params", None) or {}
    params = dict(params)
    target = get_obj_from_str(config["target"])
    check_params(target, params, str(config["target"]))
    params.update(kwargs)
    return target(**params)


_OWN_PACKAGES = ("ldm", "taming", "utils")


def _accepted_params(cls) -> dict | None:
    """Keyword name → default over the constructor chain of one of our classes (following ``**kwargs``
    to the base classes); None when the chain ends somewhere that takes anything (no check possible)."""
    import inspect

    names: dict = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if not klass.__module__.split(".")[0] in _OWN_PACKAGES:
            return names  # torch / Lightning bases take no config keys
        sig = inspect.signature(klass.__init__)
        for name, p in sig.parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self":
                names.setdefault(name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return names
    return names


def check_params(target, params: Mapping, where: str) -> None:
    """Refuse config keys our classes do not take (a typo would otherwise be silently dropped or fail
    deep inside) and values of the wrong kind for bool/int/float keys, naming the key."""
    import difflib
    import inspect

    if not inspect.isclass(target) or target.__module__.split(".")[0] not in _OWN_PACKAGES:
        return
    accepted = _accepted_params(target)
    if accepted is None:
        return
    for key, value in params.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"config key '{key}' is not a parameter of {where}{hint}")
        d = accepted[key]
        if d is inspect.Parameter.empty or d is None or value is None:
            continue
        if isinstance(d, bool) and not isinstance(value, bool):
            raise UserError(f"config key '{key}' of {where} must be true or false, got {value!r}")
        if isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(value, (str, bool)):
            raise UserError(f"config key '{key}' of {where} must be a number, got {value!r}")


def count_params(model, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total



def fused_optimizer_kwargs(params) -> dict:
    """``{"fused": True}`` when every parameter is a floating tensor on one device whose fused Adam/AdamW
    kernel this torch has (one kernel per step instead of a loop over tensors: 3-4x less optimizer time
    on the tiny CPU models; the same update), else ``{}``. The CPU kernel is newer than the CUDA one:
    on a torch without it the plain loop is used."""
    params = list(params)
    ok = bool(params) and all(p.is_floating_point() for p in params)
    devices = {p.device.type for p in params}
    return {"fused": True} if ok and len(devices) == 1 and fused_adam_supported(devices.pop()) else {}


_FUSED_SUPPORT: dict = {}


def fused_adam_supported(device_type: str) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` accepts parameters on ``device_type`` (probed once)."""
    import torch

    if device_type not in ("cpu", "cuda"):
        return False
    if device_type not in _FUSED_SUPPORT:
        try:
            torch.optim.AdamW([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
            _FUSED_SUPPORT[device_type] = True
        except (RuntimeError, TypeError, ValueError):
            _FUSED_SUPPORT[device_type] = False
    return _FUSED_SUPPORT[device_type]
