"""Textual-inversion ``EmbeddingManager`` (TI, AnomalyDiffusion and FAST flavours).

The placeholder token (``*``) in a caption is swapped, inside the text encoder, for learned
vectors. Classic TI learns one set per placeholder string; AnomalyDiffusion/FAST learn one set per
``"category+anomaly"`` name and pick them per sample from ``batch["name"]``. With more than one
vector per token the vectors are *inserted* (later tokens shift right, the sequence is truncated
back to its length), exactly as TI does.

Files are ``{"string_to_token": {str: 0-dim tensor}, "string_to_param": {str: Tensor[n, dim]}}``;
we write plain tensors, and read both that and the upstream pickled ``nn.ParameterDict``.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from utils.errors import UserError

__all__ = ["EmbeddingManager", "PROGRESSIVE_SCALE"]

PROGRESSIVE_SCALE = 2000  # TI: with progressive_words, one more vector every 2000 forward calls


def _tokenizer_of(embedder):
    tknz = getattr(embedder, "tknz_fn", None)
    tok = getattr(tknz, "tokenizer", None)
    if tok is None:
        raise ValueError("EmbeddingManager needs an embedder with a tokenizer (BERTEmbedder(use_tokenizer=True))")
    return tok


def _single_token(tokenizer, word: str, what: str) -> int:
    """Id of ``word`` if it is exactly one wordpiece (as upstream asserts), else a one-line error."""
    pieces = tokenizer.tokenize(word)
    if len(pieces) != 1:
        raise ValueError(f"{what} '{word}' must be a single BERT wordpiece but tokenizes to {pieces}")
    tid = tokenizer.convert_tokens_to_ids(pieces[0])
    if tid == tokenizer.unk_token_id and pieces[0] != tokenizer.unk_token:
        raise ValueError(f"{what} '{word}' is not in the vocabulary (maps to {tokenizer.unk_token})")
    return int(tid)


def _read_names(names) -> list[str]:
    """A list of names, or a path to AnomalyDiffusion's ``name-anomaly.txt`` (one ``cat+anom`` a line)."""
    if isinstance(names, (str, os.PathLike)):
        p = Path(names)
        if not p.is_file():
            raise FileNotFoundError(f"names '{p}' is neither a list nor a name-anomaly.txt file")
        return [line.strip() for line in p.read_text().split("\n") if line.strip()]
    out = [str(n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate entries in names: {sorted({n for n in out if out.count(n) > 1})}")
    return out


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class EmbeddingManager(nn.Module):
    """Learned placeholder vectors, one ``nn.Parameter[num_vectors_per_token, dim]`` per name or placeholder."""

    def __init__(
        self,
        embedder,
        placeholder_strings: Sequence[str] = ("*",),
        initializer_words: Sequence[str] | None = None,
        names=None,
        num_vectors_per_token: int = 1,
        per_image_tokens: bool = False,
        progressive_words: bool = False,
        **kwargs,
    ):
        super().__init__()
        if per_image_tokens:
            raise NotImplementedError("per_image_tokens=True (TI's per-image placeholders) is not supported")
        if num_vectors_per_token < 1:
            raise ValueError(f"num_vectors_per_token must be >= 1, got {num_vectors_per_token}")
        placeholder_strings = list(placeholder_strings or ["*"])
        tokenizer = _tokenizer_of(embedder)
        token_emb: nn.Embedding = embedder.transformer.token_emb
        self.token_dim = token_emb.embedding_dim
        self.num_vectors_per_token = num_vectors_per_token
        self.max_vectors_per_token = num_vectors_per_token
        self.progressive_words = progressive_words
        self.progressive_counter = 0
        self.per_name = names is not None

        self.string_to_token_dict: dict[str, torch.Tensor] = {}
        self.string_to_param_dict = nn.ParameterDict()
        self._initial: dict[str, torch.Tensor] = {}  # for embedding_to_coarse_loss; not in state_dict

        if self.per_name and len(placeholder_strings) != 1:
            raise ValueError(f"per-name embeddings use one placeholder string, got {placeholder_strings}")
        for ph in placeholder_strings:
            self.string_to_token_dict[ph] = torch.tensor(_single_token(tokenizer, ph, "placeholder string"))

        def init_vectors(word: str | None) -> torch.Tensor:
            if word is None:  # TI: no init word -> uniform random
                return torch.rand(num_vectors_per_token, self.token_dim, device=token_emb.weight.device)
            tid = _single_token(tokenizer, word, "initializer word")
            with torch.no_grad():
                vec = token_emb.weight[tid].detach().clone()
            return vec.unsqueeze(0).repeat(num_vectors_per_token, 1)

        words = list(initializer_words) if initializer_words else []
        self._init_words: dict[str, str | None] = {}
        if self.per_name:
            init = init_vectors(words[0] if words else None)
            for name in _read_names(names):
                self.string_to_param_dict[name] = nn.Parameter(init.clone())
                self._initial[name] = init.detach().cpu().clone()
                self._init_words[name] = words[0] if words else None
        else:
            for i, ph in enumerate(placeholder_strings):
                init = init_vectors(words[i] if i < len(words) else None)
                self.string_to_param_dict[ph] = nn.Parameter(init)
                self._initial[ph] = init.detach().cpu().clone()
                self._init_words[ph] = words[i] if i < len(words) else None

    @torch.no_grad()
    def reinitialize_from(self, embedder) -> None:
        """Re-read the initial vectors from ``embedder``'s token embedding.

        The manager is built with the model, before a pretrained checkpoint is loaded into the text
        encoder; initialising from the loaded (not the random) embedding of the init word is the point.
        """
        tokenizer = _tokenizer_of(embedder)
        weight = embedder.transformer.token_emb.weight
        for key, word in self._init_words.items():
            if word is None or key not in self.string_to_param_dict:
                continue
            param = self.string_to_param_dict[key]
            tid = _single_token(tokenizer, word, "initializer word")
            vec = weight[tid].detach().to(param.device, param.dtype)
            param.copy_(vec.unsqueeze(0).expand_as(param))
            self._initial[key] = param.detach().cpu().clone()

    # ------------------------------------------------------------------ forward
    def _vectors_for(self, placeholder: str, row: int, names) -> torch.Tensor:
        if not self.per_name:
            return self.string_to_param_dict[placeholder]
        if names is None:
            raise ValueError("this EmbeddingManager is per-name: pass names=[...] (one 'cat+anom' per sample)")
        name = names[row]
        if name not in self.string_to_param_dict:
            raise KeyError(f"unknown embedding name '{name}'; known: {_short_list(self.string_to_param_dict.keys())}")
        return self.string_to_param_dict[name]

    def _num_vectors(self) -> int:
        if not self.progressive_words:
            return self.max_vectors_per_token
        if self.training:
            self.progressive_counter += 1
        return min(self.max_vectors_per_token, 1 + self.progressive_counter // PROGRESSIVE_SCALE)

    def forward(self, tokenized_text: torch.Tensor, embedded_text: torch.Tensor, names=None) -> torch.Tensor:
        """Replace each placeholder by its vectors (inserting and shifting when there are several).

        Does not modify its inputs; returns new embeddings of the same shape.
        """
        b, n = tokenized_text.shape
        if self.per_name and names is not None:
            names = [names] * b if isinstance(names, str) else list(names)
            if len(names) != b:
                raise ValueError(f"got {len(names)} names for a batch of {b}")
        tokens = tokenized_text
        embedded = embedded_text
        nv_limit = self._num_vectors()
        for ph, ph_token in self.string_to_token_dict.items():
            ph_token = ph_token.to(tokens.device)
            rows, cols = torch.where(tokens == ph_token)
            if rows.numel() == 0:
                continue
            tok_rows = list(tokens.unbind(0))
            emb_rows = list(embedded.unbind(0))
            # right to left, so an insertion never moves a placeholder still to be processed
            order = torch.argsort(cols, descending=True, stable=True).tolist()
            rows_l, cols_l = rows.tolist(), cols.tolist()
            for k in order:
                r, c = rows_l[k], cols_l[k]
                vecs = self._vectors_for(ph, r, names)
                m = min(vecs.shape[0], nv_limit)
                vecs = vecs[:m].to(device=embedded.device, dtype=embedded.dtype)
                emb_rows[r] = torch.cat([emb_rows[r][:c], vecs, emb_rows[r][c + 1:]], dim=0)[:n]
                tok_rows[r] = torch.cat([tok_rows[r][:c], ph_token.repeat(m), tok_rows[r][c + 1:]], dim=0)[:n]
            tokens = torch.stack(tok_rows)
            embedded = torch.stack(emb_rows)
        return embedded

    # ------------------------------------------------------------------ training helpers
    def embedding_parameters(self):
        return self.string_to_param_dict.parameters()

    def embedding_to_coarse_loss(self) -> torch.Tensor:
        """TI's regulariser: mean squared distance of the vectors to their initial embedding."""
        loss = None
        for key, param in self.string_to_param_dict.items():
            if key not in self._initial:
                continue
            d = param - self._initial[key].to(param.device, param.dtype)
            term = (d * d).sum() / max(len(self._initial), 1)
            loss = term if loss is None else loss + term
        if loss is None:
            return torch.zeros((), device=next(iter(self.string_to_param_dict.values())).device)
        return loss

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write plain tensors (loadable with ``torch.load(weights_only=True)``), atomically."""
        ckpt = {
            "string_to_token": {k: v.detach().cpu().clone() for k, v in self.string_to_token_dict.items()},
            "string_to_param": {k: p.detach().cpu().clone() for k, p in self.string_to_param_dict.items()},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def save_safetensors(self, path: str | os.PathLike) -> Path:
        """The same content as ``save`` in safetensors: ``string_to_token/<placeholder>`` and
        ``string_to_param/<name>`` tensors."""
        from utils.tensor_files import save_safetensors

        tensors = {f"string_to_token/{k}": torch.as_tensor(v).reshape(-1) for k, v in self.string_to_token_dict.items()}
        tensors.update({f"string_to_param/{k}": p for k, p in self.string_to_param_dict.items()})
        return save_safetensors(tensors, path, metadata={"format": "fast-embeddings"})

    @staticmethod
    def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(string_to_token, string_to_param)`` as plain CPU tensors, from our or the upstream format.

        The upstream (TI/AnomalyDiffusion/FAST) files pickle an ``nn.ParameterDict``; only that class
        and ``nn.Parameter`` are allowed on top of the tensor-only loader, never arbitrary pickles.
        ``.safetensors`` files (``save_safetensors``) need no unpickling at all.
        """
        from utils.safe_load import is_safetensors_file

        if is_safetensors_file(path):
            from utils.tensor_files import load_safetensors

            tensors, _ = load_safetensors(path)
            tokens = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("string_to_token/")}
            params = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("string_to_param/")}
            if not params:
                raise UserError(f"{path}: no string_to_param/* tensors (not an embeddings file)")
            return {k: v.reshape(()) if v.numel() == 1 else v for k, v in tokens.items()}, params
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals([nn.ParameterDict, nn.Parameter]):
                try:
                    ckpt = torch.load(path, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as e:
                    lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln] or [type(e).__name__]
                    raise ValueError(f"{path}: not an embeddings file we can load safely ({lines[0]})") from None
        if not isinstance(ckpt, dict) or "string_to_param" not in ckpt or "string_to_token" not in ckpt:
            raise ValueError(f"{path}: expected a dict with 'string_to_token' and 'string_to_param'")

        def plain(obj, key: str) -> dict[str, torch.Tensor]:
            if isinstance(obj, nn.Module):  # pickled ParameterDict, old (torch 1.x) or new layout
                obj = obj._parameters
            if not hasattr(obj, "items"):
                raise ValueError(f"{path}: '{key}' is a {type(obj).__name__}, expected a mapping")
            out = {}
            for k, v in obj.items():
                if not torch.is_tensor(v):
                    raise ValueError(f"{path}: '{key}[{k}]' is a {type(v).__name__}, expected a tensor")
                out[str(k)] = v.detach().clone() if isinstance(v, nn.Parameter) else v.detach()
            return out

        tokens = {k: v.reshape(()).to(torch.long) for k, v in plain(ckpt["string_to_token"], "string_to_token").items()}
        params = {k: v.reshape(-1, v.shape[-1]) for k, v in plain(ckpt["string_to_param"], "string_to_param").items()}
        return tokens, params

    def load(self, path: str | os.PathLike) -> None:
        """Load vectors; unknown names are added. A per-name file makes a classic manager per-name."""
        tokens, params = self.read_file(path)
        for ph, tid in tokens.items():
            mine = self.string_to_token_dict.get(ph)
            if mine is not None and int(mine) != int(tid):
                raise ValueError(
                    f"{path}: placeholder '{ph}' is token {int(tid)} there but {int(mine)} with this tokenizer (different vocab?)"
                )
        device = self._device()
        file_per_name = not set(params) <= set(tokens)
        if file_per_name and not self.per_name:
            for ph in list(self.string_to_param_dict.keys()):
                del self.string_to_param_dict[ph]
                self._initial.pop(ph, None)
            self.per_name = True
        elif not file_per_name and self.per_name:
            raise ValueError(f"{path}: holds per-placeholder embeddings {sorted(params)} but this manager is per-name")
        for ph, tid in tokens.items():
            self.string_to_token_dict.setdefault(ph, tid)
        for name, value in params.items():
            if name in self.string_to_param_dict:
                p = self.string_to_param_dict[name]
                if p.shape != value.shape:
                    raise ValueError(f"{path}: '{name}' has shape {tuple(value.shape)}, manager expects {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(value.to(p.device, p.dtype))
            else:
                if value.shape[-1] != self.token_dim:
                    raise ValueError(f"{path}: '{name}' has width {value.shape[-1]}, text encoder width is {self.token_dim}")
                self.string_to_param_dict[name] = nn.Parameter(value.to(device).clone())
        self.max_vectors_per_token = max(p.shape[0] for p in self.string_to_param_dict.values())

    def _device(self) -> torch.device:
        for p in self.string_to_param_dict.values():
            return p.device
        return torch.device("cpu")
