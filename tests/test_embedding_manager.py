"""Textual-inversion EmbeddingManager: placement, per-name selection, gradients, file formats."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from torch import nn

from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.modules import BERTEmbedder
from ldm.modules.encoders.tokenizer import TINY_VOCAB_SIZE

DIM = 32
NAMES = ["brick+scratch", "grass+hole", "hazelnut+crack"]


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return BERTEmbedder(n_embed=DIM, n_layer=1, vocab_size=TINY_VOCAB_SIZE, tokenizer_path="tiny")


def _tok(embedder, word):
    return embedder.tknz_fn.tokenizer.convert_tokens_to_ids(word)


def _embed(embedder, texts):
    tokens = embedder.tokenize(texts)
    return tokens, embedder.transformer.token_emb(tokens).detach()


def test_single_vector_replacement(embedder):
    em = EmbeddingManager(embedder, initializer_words=["crack"])
    assert set(em.string_to_token_dict) == {"*"} and em.string_to_token_dict["*"].dim() == 0
    assert torch.equal(em.string_to_param_dict["*"].detach(), embedder.transformer.token_emb.weight[_tok(embedder, "crack")][None].detach())
    with torch.no_grad():
        em.string_to_param_dict["*"].normal_()
    tokens, emb = _embed(embedder, ["anomaly *", "no placeholder here"])
    tokens_before = tokens.clone()
    out = em(tokens, emb)
    assert out.shape == emb.shape
    assert torch.equal(tokens, tokens_before)  # inputs untouched
    assert torch.equal(out[0, 2], em.string_to_param_dict["*"][0].detach())
    keep = torch.ones(77, dtype=torch.bool)
    keep[2] = False
    assert torch.equal(out[0, keep], emb[0, keep])
    assert torch.equal(out[1], emb[1])


def test_four_vectors_insert_and_shift(embedder):
    em = EmbeddingManager(embedder, initializer_words=["crack"], num_vectors_per_token=4)
    with torch.no_grad():
        em.string_to_param_dict["*"].normal_()
    vecs = em.string_to_param_dict["*"].detach()
    tokens, emb = _embed(embedder, ["a * on the brick", "* and *"])
    out = em(tokens, emb)
    assert out.shape == (2, 77, DIM)
    # row 0: [CLS] a * on the brick [SEP] -> [CLS] a v0..v3 on the brick [SEP]
    assert torch.equal(out[0, :2], emb[0, :2])
    assert torch.equal(out[0, 2:6], vecs)
    assert torch.equal(out[0, 6:77], emb[0, 3:74])
    # row 1: [CLS] * and * [SEP] -> [CLS] v v v v and v v v v [SEP]
    assert torch.equal(out[1, 1:5], vecs) and torch.equal(out[1, 5], emb[1, 2])
    assert torch.equal(out[1, 6:10], vecs) and torch.equal(out[1, 10:], emb[1, 4:71])


def test_truncation_keeps_length(embedder):
    em = EmbeddingManager(embedder, initializer_words=["crack"], num_vectors_per_token=4)
    tokens, emb = _embed(embedder, [" ".join(["grass"] * 70) + " *"])
    star = (tokens[0] == em.string_to_token_dict["*"]).nonzero().item()
    assert star == 71
    out = em(tokens, emb)
    assert out.shape == (1, 77, DIM)
    assert torch.equal(out[0, 71:75], em.string_to_param_dict["*"].detach())
    assert torch.equal(out[0, 75:77], emb[0, 72:74])  # [SEP] and the first pad shifted right


def test_per_name_selection_and_gradient(embedder):
    em = EmbeddingManager(embedder, initializer_words=["crack"], names=NAMES, num_vectors_per_token=4)
    assert list(em.string_to_param_dict.keys()) == NAMES
    init = embedder.transformer.token_emb.weight[_tok(embedder, "crack")].detach()
    for p in em.string_to_param_dict.values():
        assert p.shape == (4, DIM) and torch.equal(p.detach(), init.expand(4, DIM))
    with torch.no_grad():
        for p in em.embedding_parameters():
            p.normal_()
    tokens, emb = _embed(embedder, ["anomaly *", "anomaly *"])
    out = em(tokens, emb, names=["grass+hole", "brick+scratch"])
    assert torch.equal(out[0, 2:6], em.string_to_param_dict["grass+hole"].detach())
    assert torch.equal(out[1, 2:6], em.string_to_param_dict["brick+scratch"].detach())

    z = embedder.encode(["anomaly *"], embedding_manager=em, names=["hazelnut+crack"])
    assert z.shape == (1, 77, DIM)
    z.square().sum().backward()
    grads = {k: p.grad for k, p in em.string_to_param_dict.items()}
    assert grads["hazelnut+crack"] is not None and grads["hazelnut+crack"].abs().sum() > 0
    assert grads["brick+scratch"] is None and grads["grass+hole"] is None
    embedder.zero_grad(set_to_none=True)


def test_per_name_errors(embedder):
    em = EmbeddingManager(embedder, initializer_words=["crack"], names=NAMES)
    tokens, emb = _embed(embedder, ["anomaly *"])
    with pytest.raises(KeyError) as e:
        em(tokens, emb, names=["tile+crack"])
    assert "tile+crack" in str(e.value) and "brick+scratch" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="names"):
        em(tokens, emb)
    # captions without the placeholder need no names (e.g. unconditional "")
    t2, e2 = _embed(embedder, [""])
    assert torch.equal(em(t2, e2), e2)


def test_init_word_must_be_single_wordpiece(embedder):
    with pytest.raises(ValueError) as e:
        EmbeddingManager(embedder, initializer_words=["xylophone"], names=NAMES)
    msg = str(e.value)
    assert "xylophone" in msg and "##" in msg and "\n" not in msg


def test_unknown_kwargs_ignored_and_names_file(embedder, tmp_path):
    f = tmp_path / "name-anomaly.txt"
    f.write_text("brick+scratch\ngrass+hole")  # AnomalyDiffusion style: no trailing newline
    em = EmbeddingManager(embedder, initializer_words=["crack"], names=str(f), embedding_to_coarse_loss=True)
    assert list(em.string_to_param_dict.keys()) == ["brick+scratch", "grass+hole"]
    assert em.embedding_to_coarse_loss().item() == 0.0


def test_save_load_round_trip(embedder, tmp_path):
    em = EmbeddingManager(embedder, initializer_words=["crack"], names=NAMES, num_vectors_per_token=4)
    with torch.no_grad():
        for p in em.embedding_parameters():
            p.normal_()
    path = tmp_path / "embeddings.pt"
    em.save(path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"string_to_token", "string_to_param"}
    assert all(type(v) is torch.Tensor for v in raw["string_to_param"].values())
    assert raw["string_to_token"]["*"].dim() == 0

    other = EmbeddingManager(embedder, initializer_words=["stain"], names=NAMES[:1], num_vectors_per_token=4)
    param_obj = other.string_to_param_dict[NAMES[0]]
    other.load(path)
    assert list(other.string_to_param_dict.keys()) == NAMES  # missing names were added
    assert other.string_to_param_dict[NAMES[0]] is param_obj  # loaded in place (optimizer-safe)
    for k in NAMES:
        assert torch.equal(other.string_to_param_dict[k].detach(), em.string_to_param_dict[k].detach())
        assert other.string_to_param_dict[k].requires_grad


def test_classic_round_trip(embedder, tmp_path):
    em = EmbeddingManager(embedder, placeholder_strings=["*"], initializer_words=["crack"])
    path = tmp_path / "ti.pt"
    em.save(path)
    other = EmbeddingManager(embedder)  # random init
    other.load(path)
    assert torch.equal(other.string_to_param_dict["*"].detach(), em.string_to_param_dict["*"].detach())
    tokens, emb = _embed(embedder, ["a photo of *"])
    assert torch.equal(other(tokens, emb, names=["ignored"]), em(tokens, emb))


def _anomalydiffusion_file(path, embedder, old_layout=False):
    star = _tok(embedder, "*")
    pd = nn.ParameterDict({n: nn.Parameter(torch.randn(4, DIM)) for n in ["carpet+color", "brick+scratch"]})
    if old_layout:  # torch 1.x ParameterDict had no _keys; parameters only in _parameters
        del pd.__dict__["_keys"]
    torch.save({"string_to_token": {"*": torch.tensor(star)}, "string_to_param": pd}, path)
    return {k: v.detach().clone() for k, v in pd._parameters.items()}


@pytest.mark.parametrize("old_layout", [False, True])
def test_load_anomalydiffusion_parameterdict(embedder, tmp_path, old_layout):
    path = tmp_path / "embeddings_gs-499.pt"
    expected = _anomalydiffusion_file(path, embedder, old_layout)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # really a pickled module, not tensor-only
    em = EmbeddingManager(embedder, initializer_words=["crack"], names=["brick+scratch"], num_vectors_per_token=4)
    em.load(path)
    assert set(em.string_to_param_dict.keys()) == {"brick+scratch", "carpet+color"}
    for k, v in expected.items():
        assert torch.equal(em.string_to_param_dict[k].detach(), v)
    tokens, emb = _embed(embedder, ["anomaly *"])
    out = em(tokens, emb, names=["carpet+color"])
    assert torch.equal(out[0, 2:6], expected["carpet+color"])
    # a classic manager becomes per-name when handed a per-name file
    classic = EmbeddingManager(embedder, initializer_words=["crack"], num_vectors_per_token=4)
    classic.load(path)
    assert set(classic.string_to_param_dict.keys()) == set(expected)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_refuses_arbitrary_pickle(embedder, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"string_to_token": {}, "string_to_param": _Evil()}, path)
    em = EmbeddingManager(embedder)
    with pytest.raises(ValueError, match=r"evil.pt.*GLOBAL .*system"):
        em.load(path)


def test_token_mismatch_rejected(embedder, tmp_path):
    path = tmp_path / "bert.pt"
    torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": {"a+b": torch.zeros(4, DIM)}}, path)
    em = EmbeddingManager(embedder, names=["a+b"], num_vectors_per_token=4)
    with pytest.raises(ValueError, match="1008"):
        em.load(path)


def test_safetensors_export_round_trips_and_is_preferred(tmp_path):
    """Artifacts are written as .pt and .safetensors; loading prefers .safetensors with equal tensors."""
    import torch

    from ldm.util import instantiate_from_config
    from tests.tiny_configs import fast_config
    from utils.tensor_files import load_safetensors

    torch.manual_seed(0)
    m = instantiate_from_config(fast_config(names=["a+b"]))
    written = {p.name for p in m.export_artifacts(tmp_path, 3)}
    for stem in ("embeddings_gs-3", "embeddings", "FARM-3", "fine-3"):
        assert {f"{stem}.pt", f"{stem}.safetensors"} <= written, stem
    tensors, _ = load_safetensors(tmp_path / "FARM-3.safetensors")
    for k, v in m.FARM.state_dict().items():
        assert torch.equal(tensors[k], v)
    fresh = instantiate_from_config(fast_config(names=["a+b"]))
    (tmp_path / "FARM-3.pt").unlink()                       # only the safetensors copy is left
    (tmp_path / "embeddings_gs-3.pt").write_bytes(b"")      # a broken .pt must not even be read
    fresh.load_artifacts(tmp_path, 3)
    for k, v in m.FARM.state_dict().items():
        assert torch.equal(fresh.FARM.state_dict()[k], v), k
    for k in m.embedding_manager.string_to_param_dict:
        assert torch.equal(fresh.embedding_manager.string_to_param_dict[k], m.embedding_manager.string_to_param_dict[k])
