"""Check a ``main.py`` run before anything is built: one ``UserError`` line naming the file, key or flag.

``main.py`` merges its YAML files left to right, then the ``key=value`` overrides, then its flags
(``--max_steps``, ``--gpus``, ``--mvtec_path``, ...). Mistakes in any of them used to surface only
once the model was being built, as a traceback from YAML, OmegaConf, torch or Lightning. ``check_run``
does the same merge first and refuses, in one line:

* a YAML file that does not parse (file, line and column) or whose top level is not a mapping;
* an override that does not parse or cannot be merged;
* a config without ``model`` / ``data``, a ``target`` anywhere under them that cannot be imported
  (the dotted key is named);
* numbers out of range: ``max_steps``, ``batch_size``, ``base_learning_rate``, ``accumulate_grad_batches``,
  ``--seed``, ``--threads``; an image size that the autoencoder (``ddconfig.ch_mult``) or the UNet
  (``channel_mult``) cannot downsample and upsample back to the same size;
* data roots that do not exist or are empty folders, checkpoints (``ckpt_path``, ``--actual_resume``,
  ``--embedding_manager_ckpt``) that do not exist;
* ``--gpus`` that this machine cannot honour (a GPU asked for where torch sees none, or one that
  does not exist).

Nothing here instantiates a model or a dataset, and nothing is written. ``scripts/train_all.py`` runs
the same checks on its config (without the data paths, which it sets per run).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from utils.errors import InputNotFound, UserError

from .util import get_obj_from_str

SPLITS = ("train", "validation", "test")
MAX_SEED = 2 ** 32 - 1          # what Lightning's seed_everything accepts (it silently uses 0 otherwise)
_SENTINELS = ("__is_first_stage__", "__is_unconditional__")
_KINDS = {int: "a number", float: "a number", bool: "a boolean", str: "a string"}


# ------------------------------------------------------------------------------------------ loading
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _yaml_error(path, e, text: str) -> UserError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or _first_line(e)
    if mark is None:
        return UserError(f"{path}: YAML syntax error: {problem}")
    line = mark.line + 1
    lines = text.splitlines()
    # the scanner reports a tab on the line it reached, which is the tab's line or the one after it
    near = lines[max(0, mark.line - 1):mark.line + 1]
    hint = " (a tab in the indentation: YAML indents with spaces)" if any(
        "\t" in ln[:len(ln) - len(ln.lstrip())] for ln in near) else ""
    return UserError(f"{path}, line {line}, column {mark.column + 1}: YAML syntax error: {problem}{hint}")


def load_config_file(path):
    """One YAML config file → ``DictConfig``; ``UserError`` for a missing/unreadable file, a syntax error
    (with the line) or a top level that is not a mapping."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"config file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text (YAML) file") from None
    try:
        config = OmegaConf.load(p)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e, text) from None
    except OSError:  # OmegaConf: "Invalid loaded object type" (a bare scalar at the top level)
        config = None
    if not isinstance(config, DictConfig):
        kind = "a list" if config is not None else _KINDS.get(type(yaml.safe_load(text)), "a scalar")
        raise UserError(f"{path}: the top level must be a mapping of sections (model:, data:, lightning:), "
                        f"got {kind}")
    return config


def parse_overrides(overrides: Sequence[str]) -> list:
    """``key=value`` arguments → one ``DictConfig`` each; ``UserError`` naming the one that does not parse."""
    from omegaconf import OmegaConf

    parsed = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key or any(part == "" for part in key.split(".")):
            raise UserError(f"override {item!r}: empty key (write key.subkey=value)")
        try:
            parsed.append(OmegaConf.from_dotlist([item]))
        except Exception as e:  # yaml / OmegaConf grammar errors: the value does not parse
            why = getattr(e, "problem", None) or _first_line(e)
            raise UserError(f"override {item!r}: the value does not parse ({why})") from None
    return parsed


def merge_configs(paths: Sequence, overrides: Sequence[str] = ()):
    """``main.py``'s merge (files left to right, then the overrides), each step checked."""
    from omegaconf import OmegaConf

    configs = [(str(p), load_config_file(p)) for p in paths]
    configs += [(f"override {o!r}", c) for o, c in zip(overrides, parse_overrides(overrides))]
    if not configs:
        return OmegaConf.create()
    merged = configs[0][1]
    for name, config in configs[1:]:
        try:
            merged = OmegaConf.merge(merged, config)
        except Exception as e:  # OmegaConf validation/merge errors: incompatible types at some key
            raise UserError(f"{name}: cannot be merged onto the configs before it ({_first_line(e)})") from None
    return merged


def resolved(config) -> dict:
    """The merged config as plain containers, interpolations resolved (``UserError`` naming the key)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise UserError(f"{key}: {_first_line(e)}") from None


# ------------------------------------------------------------------------------------------ helpers
def _get(tree: Any, dotted: str, default=None):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _walk(node: Any, prefix: str) -> Iterable[tuple[str, dict]]:
    """Every mapping under ``node`` with its dotted key (list items as ``key.0``)."""
    if isinstance(node, dict):
        yield prefix, node
        for k, v in node.items():
            yield from _walk(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}.{i}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_target(key: str, target: Any) -> None:
    """``target`` names an importable ``package.module.Name``; ``key`` is its dotted config key."""
    if not isinstance(target, str) or not target.strip():
        raise UserError(f"{key}: expected a dotted class path like 'package.module.Class', got {target!r}")
    try:
        get_obj_from_str(target)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    except ImportError as e:
        raise UserError(f"{key}: cannot import '{target}' ({_first_line(e)})") from None


def check_int(key: str, value, minimum: int, allow: str = "") -> None:
    """An integer >= ``minimum``; ``allow="-1: no limit"`` also accepts that one value."""
    special = int(allow.split(":")[0]) if allow else None
    if _is_int(value) and (value >= minimum or value == special):
        return
    extra = f" (or {allow.split(':')[0]} for{allow.split(':', 1)[1]})" if allow else ""
    raise UserError(f"{key} must be an integer >= {minimum}{extra}, got {value!r}")


def check_seed(seed, flag: str = "--seed") -> None:
    if seed is not None and not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        raise UserError(f"{flag} must be in 0..{MAX_SEED}, got {seed!r}")


def _size_pair(key: str, value) -> Optional[tuple]:
    if value is None:
        return None
    if _is_int(value):
        value = [value, value]
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)):
        raise UserError(f"{key} must be a positive integer or [height, width], got {value!r}")
    if min(value) < 1:
        raise UserError(f"{key} must be positive, got {value!r}")
    return tuple(value)


def _levels(key: str, value) -> Optional[int]:
    """The downsampling factor of a ``ch_mult``/``channel_mult`` list (one halving between levels)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise UserError(f"{key} must be a non-empty list like [1, 2, 4], got {value!r}")
    return 2 ** (len(value) - 1)


def check_image_size(c: dict) -> None:
    """Every data split's image size must survive the autoencoder's (and then the UNet's) halvings: an
    encoder that rounds 30 px down to 7 latent cells decodes 28 px, and the loss fails on the shapes."""
    params = _get(c, "model.params", {}) or {}
    if "first_stage_config" in params:
        ae_key = "model.params.first_stage_config.params.ddconfig.ch_mult"
    else:
        ae_key = "model.params.ddconfig.ch_mult"
    f = _levels(ae_key, _get(c, ae_key))
    unet_key = "model.params.unet_config.params.channel_mult"
    g = _levels(unet_key, _get(c, unet_key))
    for split in SPLITS:
        sp = _get(c, f"data.params.{split}.params")
        if not isinstance(sp, dict):
            continue
        key = f"data.params.{split}.params.crop_size" if sp.get("crop_size") is not None else \
            f"data.params.{split}.params.size"
        hw = _size_pair(key, sp.get(key.rsplit(".", 1)[1]))
        if hw is None:
            continue
        if f is not None and any(s % f for s in hw):
            raise UserError(f"{key} {hw[0] if hw[0] == hw[1] else list(hw)} is not a multiple of {f}, the "
                            f"autoencoder's downsampling ({ae_key} has {int(math.log2(f)) + 1} levels)")
        if g is not None:
            latent = [s // (f or 1) for s in hw]
            if any(s % g for s in latent):
                where = f"its latent {latent[0]} px" if f else "it"
                raise UserError(f"{key} {hw[0] if hw[0] == hw[1] else list(hw)}: {where} is not a multiple of "
                                f"{g}, the UNet's downsampling ({unet_key} has {int(math.log2(g)) + 1} levels)")


def check_path(key: str, value, what: str = "{key} not found: {value}", folder: bool = False) -> None:
    """``value`` exists (a non-empty folder when ``folder``); ``key`` names the setting."""
    p = Path(str(value)).expanduser()
    if not p.exists():
        raise InputNotFound(what.format(key=key, value=value))
    if folder and p.is_dir() and not any(p.iterdir()):
        raise UserError(f"{key}: {value} is an empty folder (no categories found)")


def check_gpus(value, key: str = "--gpus", cuda_count: Optional[int] = None) -> None:
    """``--gpus`` syntax (``ldm.trainer.devices.parse_gpus``) and what this machine has: asking for a GPU
    where torch sees none is refused instead of quietly training on the CPU."""
    from ldm.trainer.devices import parse_gpus

    if value is None or str(value).strip().lower() in ("", "none", "cpu"):
        return
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        parse_gpus(value, cuda_count=1 << 16)  # the syntax alone
        if cuda_count == 0:
            raise UserError(f"--gpus '{value}': asks for a GPU but this machine has none (torch sees no CUDA "
                            "device); give --gpus none to train on the CPU")
        parse_gpus(value, cuda_count=cuda_count)
    except UserError as e:
        raise UserError(str(e).replace("--gpus", key, 1)) from None


# ------------------------------------------------------------------------------------------ the checks
def check_config(config, *, files: Sequence = (), max_steps=None, gpus=None, mvtec_path=None,
                 actual_resume=None, paths: bool = True) -> dict:
    """Check a merged config (``DictConfig``) plus the flags that override it; returns it resolved.

    ``paths=False`` skips the data roots and checkpoints named in the config (a caller that sets them
    itself, like ``train_all.py``)."""
    c = resolved(config)
    where = f" ({', '.join(map(str, files))})" if files else ""
    for section in ("model", "data"):
        if section not in c:
            found = ", ".join(map(str, c)) or "none"
            raise UserError(f"no '{section}' section in the config{where}; sections found: {found}")
        if not isinstance(c[section], dict):
            raise UserError(f"{section}: expected a mapping (target:, params:), got {c[section]!r}")
    if "target" not in c["model"]:
        raise UserError(f"model.target is missing{where}: the model section names its class as target:")

    # numbers
    if max_steps is not None:
        check_int("--max_steps", max_steps, 1, allow="-1: no step limit")
    elif _get(c, "lightning.trainer.max_steps") is not None:
        check_int("lightning.trainer.max_steps", _get(c, "lightning.trainer.max_steps"), 1,
                  allow="-1: no step limit")
    if _get(c, "lightning.trainer.accumulate_grad_batches") is not None:
        check_int("lightning.trainer.accumulate_grad_batches",
                  _get(c, "lightning.trainer.accumulate_grad_batches"), 1)
    bs = _get(c, "data.params.batch_size")
    if bs is not None or str(c["data"].get("target", "")).endswith("DataModuleFromConfig"):
        if bs is None:
            raise UserError(f"data.params.batch_size is missing{where}")
        check_int("data.params.batch_size", bs, 1)
    lr = c["model"].get("base_learning_rate")
    if lr is not None and not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise UserError(f"model.base_learning_rate must be a number > 0, got {lr!r}")
    check_image_size(c)

    # the machine
    if gpus is not None:
        check_gpus(gpus, "--gpus")
    elif _get(c, "lightning.trainer.gpus") is not None:
        check_gpus(_get(c, "lightning.trainer.gpus"), "lightning.trainer.gpus")

    # files and folders
    if mvtec_path is not None:
        check_path("--mvtec_path", mvtec_path)
    if actual_resume is not None and not os.path.isfile(actual_resume):
        raise InputNotFound(f"--actual_resume checkpoint not found: {actual_resume}")
    if paths:
        for split in SPLITS:
            sp = _get(c, f"data.params.{split}.params")
            if not isinstance(sp, dict) or mvtec_path is not None:  # --mvtec_path replaces the config's root
                continue
            for name in ("root", "mvtec_path"):
                if sp.get(name) not in (None, ""):
                    check_path(f"data.params.{split}.params.{name}", sp[name], "{key}: dataset root not found: "
                               "{value}", folder=True)
        for key, node in _walk(c["model"], "model"):
            ckpt = node.get("ckpt_path")
            if key == "model.params" and actual_resume is not None:
                continue  # --actual_resume replaces it
            if isinstance(ckpt, str) and ckpt and not os.path.isfile(os.path.expanduser(ckpt)):
                raise InputNotFound(f"{key}.ckpt_path: checkpoint not found: {ckpt}")

    # classes last: importing them is the slow part
    for section in ("model", "data"):
        for key, node in _walk(c[section], section):
            if "target" in node and node["target"] not in _SENTINELS:
                check_target(f"{key}.target", node["target"])
    return c


def check_run(opt, base_configs: Sequence, overrides: Sequence[str]):
    """``main.py``'s checks on its parsed flags, configs and overrides; returns the merged ``DictConfig``.

    Runs before any model, dataset, trainer or log folder is made."""
    if opt.threads < 0:
        raise UserError(f"--threads must be >= 0, got {opt.threads}")
    check_seed(opt.seed, "--seed")
    if opt.embedding_manager_ckpt and not os.path.isfile(opt.embedding_manager_ckpt):
        raise InputNotFound(f"--embedding_manager_ckpt not found: {opt.embedding_manager_ckpt}")
    config = merge_configs(base_configs, overrides)
    check_config(config, files=base_configs, max_steps=opt.max_steps, gpus=opt.gpus, mvtec_path=opt.mvtec_path,
                 actual_resume=opt.actual_resume)
    return config
