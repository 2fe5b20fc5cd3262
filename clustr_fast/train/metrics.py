"""Per-epoch metrics files: ``metrics.jsonl`` (one JSON object per epoch) and
``metrics.csv`` (one row per epoch, the union of the keys as columns). Both are
rewritten from the whole history, so a resumed run never repeats a row."""
from __future__ import annotations

import csv
import io
import json
import os


def _write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_metrics(history: list[dict], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    _write_text(os.path.join(out_dir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    columns = []
    for record in history:
        columns += [k for k in record if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text(os.path.join(out_dir, "metrics.csv"), buf.getvalue())
