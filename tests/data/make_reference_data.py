#!/usr/bin/env python
"""Regenerate the vendored reference facts in tests/data/ from the project's shared reference folder.

    python tests/data/make_reference_data.py [/work/shared/reference]

Writes
  ldm-txt2img-large-keys.tsv.gz     every key of the released text2img-large checkpoint with its shape,
                                    dtype and group (unet, first_stage, cond_stage, schedule, extra);
                                    the same columns as ldm-txt2img-large-state-dict.tsv
  ldm-txt2img-large-schedule.json   the parameter counts, key counts and schedule statistics

The gzip header carries no timestamp or file name, so the output is byte-identical on every run.
Tests read only these files; they never need the reference folder.
"""
from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REF = HERE.parents[1].parent / "shared" / "reference"
KEEP_JSON = ("config", "key_counts", "parameter_counts", "schedule_config", "schedule_float64",
             "schedule_float32_stored")


def main(argv: list[str]) -> int:
    ref = Path(argv[0]) if argv else DEFAULT_REF
    tsv = ref / "ldm-txt2img-large-state-dict.tsv"
    lines = tsv.read_text().splitlines()
    if lines[0].split("\t") != ["key", "shape", "dtype", "group"]:
        raise SystemExit(f"{tsv}: unexpected header {lines[0]!r}")
    rows = [line.split("\t") for line in lines[1:] if line]
    if any(len(r) != 4 for r in rows):
        raise SystemExit(f"{tsv}: every row needs 4 columns")
    text = "\n".join(["key\tshape\tdtype\tgroup"] + ["\t".join(r) for r in rows]) + "\n"
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode())
    (HERE / "ldm-txt2img-large-keys.tsv.gz").write_bytes(buf.getvalue())
    facts = json.loads((ref / "ldm-txt2img-large-schedule.json").read_text())
    kept = {k: facts[k] for k in KEEP_JSON}
    (HERE / "ldm-txt2img-large-schedule.json").write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} keys and {len(kept)} JSON sections to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
