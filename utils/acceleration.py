"""How the networks run: numeric precision and compilation, in one place for generation and training.

``Acceleration(precision, compile)`` is what ``--precision {fp32,bf16}`` and ``--compile`` mean everywhere
(``precision_option`` / ``compile_option``: the options' one declaration, help text included):

- ``bf16``: the networks (UNet, FARM, adaptor, encoder and decoder of the first stage) run under
  ``torch.autocast(dtype=bfloat16)``; the sampler's state and its closed-form updates
  ``x_te = Pi x + Sigma x0_hat + sqrt(V) z`` stay float32 (``Sampler._predict`` casts the network's
  output back), and the final pixel paste ``decoded * M + image * (1 - M)`` runs in float32, so every
  pixel outside the mask stays the normal image's bit for bit. Training: Lightning's ``bf16-mixed``.
- ``compile``: each of the model's hot modules (``hot_modules()``: the UNet, FARM, …) is compiled in
  place (its ``forward``; parameter names and checkpoints unchanged). On CUDA the mode is
  ``reduce-overhead`` (CUDA graphs: AIAS's grid is static, so every call has the same shapes and the
  per-kernel launch cost, which dominates a batch-8 UNet call, disappears); on the CPU ``default``.
  A CUDA graph's outputs live in memory its next replay overwrites, so a compiled module hands out
  copies (PLMS keeps earlier noise predictions; FARM's and the UNet's outputs meet in one step).

What a pair may differ by is stated with the tests (``tests/test_acceleration.py``): bf16 and
compiled pairs match fp32 within a tolerance there; outside the mask they are identical.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from utils.options import option

PRECISIONS = ("fp32", "bf16")
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


@dataclass(frozen=True)
class Acceleration:
    precision: str = "fp32"
    compile: bool = False
    backend: str = "inductor"   # torch.compile's backend (the CPU tests trace with "aot_eager": no C++ build)

    def __post_init__(self):
        from utils.errors import UserError

        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def lightning_precision(self) -> str:
        """The Lightning ``Trainer(precision=...)`` value of this precision."""
        return LIGHTNING_PRECISION[self.precision]

    def autocast(self, device):
        """The context every network call of a generation runs in (a no-op for fp32)."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type(device), dtype=torch.bfloat16)

    def compile_mode(self, device) -> str:
        return "reduce-overhead" if device_type(device) == "cuda" else "default"

    def prepare(self, model, device) -> list[str]:
        """Compile ``model.hot_modules()`` in place (once; a no-op without ``compile``). Returns the
        names of the modules compiled now."""
        if not self.compile:
            return []
        mode = self.compile_mode(device)
        done = []
        for name, module in hot_modules(model):
            if getattr(module, "_fast_compiled", None) is not None:
                continue
            _compile_forward(module, mode, self.backend)
            done.append(name)
        return done


def _compile_forward(module, mode: str, backend: str = "inductor") -> None:
    """Replace ``module.forward`` (an instance attribute: state_dict and hooks unchanged) by its
    compiled version; with CUDA graphs, each call starts a new graph step and returns copies."""
    import torch

    eager = module.forward
    compiled = torch.compile(eager, mode=mode, dynamic=False) if backend == "inductor" else \
        torch.compile(eager, backend=backend, dynamic=False)
    graphs = mode == "reduce-overhead"

    def forward(*args, **kwargs):
        # one memory layout per input: a latent that arrives channels-last from some elementwise op
        # would otherwise compile (and capture) the whole network a second time
        args, kwargs = torch.utils._pytree.tree_map(lambda v: v.contiguous() if torch.is_tensor(v) else v,
                                                    (args, kwargs))
        if not graphs:
            return compiled(*args, **kwargs)
        mark_step()
        out = compiled(*args, **kwargs)
        return torch.utils._pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, out)

    forward.eager = eager
    module.forward = forward
    module._fast_compiled = mode


def hot_modules(model) -> list[tuple[str, object]]:
    """``(name, module)`` of the networks a model calls per sampling step (its ``hot_modules()``, else
    the UNet)."""
    if hasattr(model, "hot_modules"):
        return list(model.hot_modules())
    return [("model.diffusion_model", model.model.diffusion_model)]


def mark_step() -> None:
    """Tell CUDA-graph trees a new iteration starts (earlier outputs may now be overwritten)."""
    import torch

    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    if mark is not None:
        mark()


def device_type(device) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def describe(accel: Acceleration, device) -> str:
    """One line for logs and reports."""
    s = f"precision {accel.precision}"
    if accel.compile:
        s += f", compiled ({accel.compile_mode(device)})"
    return s


def precision_option(training: bool = False, **meta):
    """The ``--precision`` option of a job's options dataclass (``utils.options.option``), with the same
    meaning on every command. Training: default None (the config's ``lightning.trainer.precision``, else
    fp32). ``meta``: further metadata (e.g. ``pixel=True`` for generation)."""
    if training:
        return option(None, help="fp32 or bf16 (Lightning bf16-mixed: bf16 autocast, fp32 weights and optimizer); "
                                 "default: the config's lightning.trainer.precision, else fp32",
                      choices=PRECISIONS, **meta)
    return option("fp32", help="fp32 (default) or bf16: the networks run under bfloat16 autocast; the sampler "
                               "state and the background paste stay float32 (bf16 pays off on GPUs only)",
                  choices=PRECISIONS, **meta)


def compile_option(**meta):
    """The ``--compile`` flag of a generation job's options dataclass (``utils.options.option``)."""
    return option(False, help="torch.compile the UNet and FARM (CUDA graphs on a GPU; the first batch pays "
                              "the compilation)", **meta)
