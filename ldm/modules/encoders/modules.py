"""LDM's conditioning encoders: the offline BERT tokenizer and the x-transformer ``BERTEmbedder``.

Class names, constructor arguments and submodule names follow CompVis LDM so the text2img-large
checkpoint (``cond_stage_model.transformer.*``) and its configs load unchanged. Unlike upstream,
nothing is downloaded and no device is hard-coded: tokens follow the module's parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.x_transformer import Encoder, TransformerWrapper

__all__ = ["AbstractEncoder", "BERTTokenizer", "BERTEmbedder"]


class AbstractEncoder(nn.Module):
    """Interface of every ``cond_stage_model``: ``encode(x)`` gives the conditioning."""

    def encode(self, *args, **kwargs):
        raise NotImplementedError


class BERTTokenizer(AbstractEncoder):
    """Text → ``[CLS] … [SEP]`` ids padded/truncated to ``max_length`` (no parameters).

    ``device=None`` keeps the ids on the CPU; callers move them where their weights live.
    """

    def __init__(self, device=None, vq_interface: bool = True, max_length: int = 77, tokenizer_path=None):
        super().__init__()
        from ldm.modules.encoders.tokenizer import load_bert_tokenizer

        self.tokenizer = load_bert_tokenizer(tokenizer_path)
        self.device = device
        self.vq_interface = vq_interface
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def forward(self, text) -> torch.Tensor:
        if isinstance(text, str):
            text = [text]
        batch = self.tokenizer(
            list(text),
            truncation=True,
            max_length=self.max_length,
            return_length=True,
            return_overflowing_tokens=False,
            padding="max_length",
            return_tensors="pt",
        )
        tokens = batch["input_ids"]
        return tokens if self.device is None else tokens.to(self.device)

    @torch.no_grad()
    def encode(self, text):
        tokens = self(text)
        if not self.vq_interface:
            return tokens
        return None, None, [None, None, tokens]

    def decode(self, text):
        return text


class BERTEmbedder(AbstractEncoder):
    """LDM's text encoder: BERT tokenizer + an x-transformer trained from scratch.

    ``encode(text, embedding_manager, names)`` returns post-LayerNorm embeddings ``B×max_seq_len×n_embed``.
    ``device`` is accepted for config compatibility only; the parameters' device is used.
    """

    def __init__(
        self,
        n_embed: int,
        n_layer: int,
        vocab_size: int = 30522,
        max_seq_len: int = 77,
        device=None,
        use_tokenizer: bool = True,
        embedding_dropout: float = 0.0,
        tokenizer_path=None,
    ):
        super().__init__()
        self.use_tokenizer = use_tokenizer
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        if use_tokenizer:
            self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, tokenizer_path=tokenizer_path)
            if self.tknz_fn.vocab_size > vocab_size:
                raise ValueError(
                    f"tokenizer has {self.tknz_fn.vocab_size} tokens but BERTEmbedder vocab_size is {vocab_size}; "
                    f"raise vocab_size or use a smaller vocab"
                )
        self.transformer = TransformerWrapper(
            num_tokens=vocab_size,
            max_seq_len=max_seq_len,
            attn_layers=Encoder(dim=n_embed, depth=n_layer),
            emb_dropout=embedding_dropout,
        )

    @property
    def device(self) -> torch.device:
        return self.transformer.token_emb.weight.device

    def tokenize(self, text) -> torch.Tensor:
        """Token ids on this module's device (text is passed through when ``use_tokenizer`` is False)."""
        if not self.use_tokenizer:
            if not torch.is_tensor(text):
                raise TypeError("BERTEmbedder(use_tokenizer=False) expects a LongTensor of token ids, not text")
            return text.to(self.device)
        return self.tknz_fn(text).to(self.device)

    def forward(self, text, embedding_manager=None, names=None) -> torch.Tensor:
        tokens = self.tokenize(text)
        return self.transformer(tokens, return_embeddings=True, embedding_manager=embedding_manager, names=names)

    def encode(self, text, embedding_manager=None, names=None) -> torch.Tensor:
        return self(text, embedding_manager=embedding_manager, names=names)
