"""Refuse evaluations whose synthetic pairs come from a generator that saw the test images.

A generator trained on real anomalies (FAST, STAGE) writes ``provenance.json`` beside its pairs with
the exact image files it trained on. If any of them is in the evaluation set, the segmenter's test
numbers measure memorisation, not synthesis. Files match by resolved path or by (category, defect,
file name), so a dataset copied to another folder is still recognised.
"""
from __future__ import annotations

from pathlib import Path

from ldm.pairs import read_provenance
from utils.errors import UserError


def _keys(path: str, category: str, defect: str) -> set:
    p = Path(path)
    return {("path", str(p.resolve())), ("name", str(category), str(defect), p.name)}


def leaked_images(pairs_category_dir, eval_items, category: str) -> tuple[list[str], list[str]]:
    """(test images the generator trained on, defect folders without usable provenance)."""
    test = {}
    for image, _, defect in eval_items:
        if defect == "good":
            continue
        for k in _keys(str(image), category, defect):
            test[k] = str(image)
    leaked, unknown = set(), []
    for folder in sorted(p for p in Path(pairs_category_dir).iterdir() if p.is_dir()):
        prov = read_provenance(folder)
        if prov is None or prov.get("training_anomalies") is None:
            why = "no provenance.json" if prov is None else prov.get("training_anomalies_unknown") or "unknown"
            unknown.append(f"{folder.name} ({why})")
            continue
        for a in prov["training_anomalies"]:
            for k in _keys(a["image"], a.get("category", category), a.get("defect", folder.name)):
                if k in test:
                    leaked.add(test[k])
    return sorted(leaked), unknown


def check_leakage(pairs_category_dir, eval_items, category: str, allow: bool = False, what: str = "fast") -> str | None:
    """Raise a UserError when the pairs' generator saw test images (or cannot tell), unless ``allow``;
    returns a note for the results table when it was allowed, else None."""
    leaked, unknown = leaked_images(pairs_category_dir, eval_items, category)
    if not leaked and not unknown:
        return None
    problem = (f"{len(leaked)} test image(s) of '{category}' were training images of the {what} generator "
               f"(e.g. {leaked[0]})" if leaked else
               f"cannot tell what the {what} generator of '{category}' trained on: {', '.join(unknown[:3])}")
    if not allow:
        raise UserError(f"{problem}; evaluate on a split the generator did not train on, or pass --allow_leak "
                        "(the table then says so)")
    return f"LEAK ALLOWED: {problem}"
