"""Exponential moving average of a model's trainable weights, with CompVis ``LitEma`` buffer names.

Shadow weights are buffers named after the parameter with the dots removed
(``diffusion_model.time_embed.0.weight`` → ``diffusion_modeltime_embed0weight``), next to the scalar
buffers ``decay`` and ``num_updates``, so EMA checkpoints of the LDM family load unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.detach().clone())
        self._stored: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        decay = float(self.decay)
        if int(self.num_updates) >= 0:
            self.num_updates += 1
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            s_name = self.m_name2s_name.get(name)
            if s_name is None:
                continue
            s = shadow[s_name]
            s.sub_((1.0 - decay) * (s - p.detach().to(s.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            s_name = self.m_name2s_name.get(name)
            if s_name is not None:
                p.copy_(shadow[s_name])

    def store(self, parameters) -> None:
        self._stored = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters) -> None:
        for stored, p in zip(self._stored, parameters):
            p.copy_(stored)
        self._stored = []

    @contextmanager
    def average_parameters(self, model: nn.Module):
        """Temporarily swap the EMA weights into ``model``."""
        params = list(model.parameters())
        self.store(params)
        self.copy_to(model)
        try:
            yield
        finally:
            self.restore(params)
