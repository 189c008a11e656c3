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
    params.update(kwargs)
    return get_obj_from_str(config["target"])(**params)


def count_params(model, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total

