"""Every relative link and image in the README and ``docs/`` points at a file in the repository: evidence
records get renamed (``texture-ad-f4.md``) and pictures regenerated, and a dead link is a silent doc bug."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")          # [text](target) and ![alt](target)


def relative_targets(text: str) -> list[str]:
    """The link targets of markdown ``text`` that name a file of this repository (no URL, no bare anchor),
    without their ``#anchor``."""
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_relative_targets_skip_urls_and_anchors():
    text = "[a](docs/x.md#y) ![b](pic.png) [c](https://e.org/z) [d](#local) [e](mailto:a@b)"
    assert relative_targets(text) == ["docs/x.md", "pic.png"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    missing = [t for t in relative_targets(doc.read_text(encoding="utf-8")) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"
