"""Plain-tensor artifacts of the anomaly-synthesis models (FAST, STAGE), written beside the Lightning
checkpoints and read back by ``--weight_idx``.

A model lists its small trained modules as ``(file prefix, attribute)`` pairs in ``ARTIFACT_MODULES``;
each is saved as ``<prefix>-{N}.pt`` holding the module's ``state_dict`` (never a pickled module), next
to the embeddings the ``LatentDiffusion`` base class writes (``embeddings_gs-{N}.pt``, ``embeddings.pt``).
``N`` counts completed optimizer steps (``ldm.trainer.callbacks.ArtifactExporter``). The first prefix
marks which steps exist. A run configured ``unfreeze_model: true`` (a small backbone fine-tuned with
the embeddings) also writes its UNet as ``unet-{N}``. Loading also accepts the official whole-module pickles (restricted unpickler).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from utils.atomic import torch_save_atomic
from utils.errors import InputNotFound, UserError
from utils.tensor_files import preferred, save_safetensors


def available_steps(dirpath: str | os.PathLike, prefix: str) -> list[int]:
    """Sorted steps N for which ``<prefix>-N.pt`` or ``.safetensors`` exists in ``dirpath`` (empty if it is not a folder)."""
    d = Path(dirpath)
    if not d.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.(pt|safetensors)$")
    return sorted({int(m.group(1)) for p in d.iterdir() if (m := pattern.match(p.name))})


class ArtifactsMixin:
    """``export_artifacts`` / ``load_artifacts`` for the modules named in ``ARTIFACT_MODULES``.

    Put it before ``LatentDiffusion`` in the bases. A module attribute that is ``None`` (e.g. an adaptor
    configured ``off``) is neither written nor expected.
    """

    ARTIFACT_MODULES: tuple[tuple[str, str], ...] = ()

    @classmethod
    def artifact_steps(cls, dirpath: str | os.PathLike) -> list[int]:
        return available_steps(dirpath, cls.ARTIFACT_MODULES[0][0])

    def _artifact_modules(self):
        for prefix, attr in self.ARTIFACT_MODULES:
            module = getattr(self, attr)
            if module is not None:
                yield prefix, attr, module
        if getattr(self, "unfreeze_model", False):  # a fine-tuned backbone UNet is part of the run too
            yield "unet", "model", self.model

    def export_artifacts(self, dirpath: str | os.PathLike, step: int) -> list[Path]:
        written = super().export_artifacts(dirpath, step)
        d = Path(dirpath)
        for prefix, _, module in self._artifact_modules():
            path = d / f"{prefix}-{step}.pt"
            torch_save_atomic({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
            written.append(path)
            written.append(save_safetensors(module.state_dict(), path.with_suffix(".safetensors")))
        return written

    def load_artifacts(self, dirpath: str | os.PathLike, step: int) -> None:
        """Load ``embeddings_gs-{step}.pt`` and every ``<prefix>-{step}.pt`` (ours or the official pickled
        modules, read without executing code)."""
        from utils.safe_load import load_module_weights

        d = Path(dirpath)
        steps = self.artifact_steps(d)
        if step not in steps:
            raise UserError(f"--weight_idx {step}: no artifacts for that step in {d}; available: "
                            f"{steps or 'none'}")
        if self.embedding_manager is not None:
            self.embedding_manager.load(preferred(d / f"embeddings_gs-{step}.pt"))
        for prefix, attr, module in self._artifact_modules():
            path = preferred(d / f"{prefix}-{step}.pt")
            if not path.is_file():
                raise InputNotFound(f"{path} is missing but this {type(self).__name__} config has "
                                    f"a '{attr}' module")
            load_module_weights(module, path)
