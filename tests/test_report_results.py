"""Benchmark results as data: benchmarks/results/<card>.json and the RESULTS.md rendered from them.

The committed card files validate; ``report.py --render`` makes a table for every card, and what it
renders from them is what is committed (a saved measurement is followed by a render); ``--save``
on a tiny subset of cases writes a valid card file, merging by (case, provider).
"""
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RESULTS = os.path.join(BENCH, "results")
CARDS = sorted(glob.glob(os.path.join(RESULTS, "*.json")))

CARD_FIELDS = {"schema": int, "card": str, "machine": dict, "versions": dict, "date": str, "cases": list}
ENTRY_FIELDS = ("case", "op", "mode", "shape", "provider", "ms", "reference_ms", "ratio", "target", "met", "date")
PROVIDERS = {"reference", "compiled_reference", "cpu", "triton", "cuda", "auto"}
OURS = {"cpu", "triton", "cuda", "auto"}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _env():
    # the CPU cases whatever the machine: the GPU ones are large
    return dict(os.environ, CLUSTR_FAST_BENCH_DEVICE="cpu",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _report(*args, timeout=120):
    out = subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), *args], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def validate(doc, stem=None):
    """Assert ``doc`` is a well-formed card file; returns its (case, provider) keys."""
    for field, kind in CARD_FIELDS.items():
        assert isinstance(doc.get(field), kind), field
    assert "commit" in doc
    if stem is not None:
        assert doc["card"] == stem
    machine = doc["machine"]
    assert machine["card"] == doc["card"] and machine["kind"] in ("cpu", "cuda")
    assert all(isinstance(v, str) and v for v in doc["versions"].values())
    assert DATE.match(doc["date"])
    assert doc["cases"]
    keys = set()
    for e in doc["cases"]:
        for field in ENTRY_FIELDS:
            assert field in e, (field, e)
        assert e["case"] == f"{e['op']}:{e['mode']}:{e['shape']}", e
        assert e["mode"] in ("fwd", "bwd", "full") and e["provider"] in PROVIDERS, e
        assert (e["case"], e["provider"]) not in keys, ("twice", e["case"], e["provider"])
        keys.add((e["case"], e["provider"]))
        assert isinstance(e["ms"], (int, float)) and e["ms"] > 0, e
        assert DATE.match(e["date"]), e
        if e["reference_ms"] is None:
            assert e["ratio"] is None, e
        else:
            assert math.isclose(e["ratio"], e["reference_ms"] / e["ms"], rel_tol=2e-3), e
        if e["target"] is None:
            assert e["met"] is None, e
        else:
            assert e["provider"] in OURS, e
            assert e["target"]["text"] and e["target"].keys() & {"ms", "ratio", "peak_extra_mb"}, e
            assert e["met"] in (True, False, None), e
    refs = {c for c, p in keys if p == "reference"}
    for e in doc["cases"]:
        assert (e["reference_ms"] is not None) == (e["case"] in refs), e
    return keys


@pytest.mark.parametrize("path", CARDS, ids=[os.path.basename(p) for p in CARDS])
def test_card_file_validates(path):
    with open(path) as f:
        doc = json.load(f)
    validate(doc, os.path.splitext(os.path.basename(path))[0])
    for e in doc["cases"]:
        if "source" in e:  # entries converted by hand say so, with the date they were measured
            assert isinstance(e["source"], str) and e["source"] and DATE.match(e["date"]), e


def test_there_are_cards():
    kinds = set()
    for path in CARDS:
        with open(path) as f:
            kinds.add(json.load(f)["machine"]["kind"])
    assert kinds == {"cpu", "cuda"}


def test_render_makes_a_table_for_every_card_and_matches_the_committed_files(tmp_path):
    for path in CARDS:
        shutil.copy(path, tmp_path)
    md, summary = tmp_path / "RESULTS.md", tmp_path / "summary.md"
    _report("--render", "--results-dir", str(tmp_path), "--results-md", str(md), "--readme-table", str(summary))
    text = md.read_text()
    table = summary.read_text()
    assert not re.search(r"\brun [0-9]", text, re.I)
    for path in CARDS:
        with open(path) as f:
            doc = json.load(f)
        section = text.split(f"\n## {doc['card']}\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| op:mode")]
        assert len(rows) == len(doc["cases"]), doc["card"]
        assert f"| {doc['card']} (" in table.splitlines()[0]
        # the committed file is what render leaves (its derived fields are current)
        assert json.loads((tmp_path / os.path.basename(path)).read_text()) == doc, (
            f"{path}: derived fields are stale; run `python benchmarks/report.py --render`")
    assert table in text
    with open(os.path.join(BENCH, "RESULTS.md")) as f:
        assert f.read() == text, "benchmarks/RESULTS.md is stale; run `python benchmarks/report.py --render`"


def test_targets_name_cases_and_cards_are_named():
    code = ("import json, sys, torch; sys.path.insert(0, 'benchmarks'); import report, common\n"
            "ids = {(d, c.id) for c in report.load_cases() for d in c.devices}\n"
            "faiss = 'kmeans:full:N=50000,d=64,k=64,it=20,faiss'\n"  # defined only where faiss is installed
            "ids.add(('cpu', faiss))\n"
            "bad = [(t.device, t.case, t.against) for t in common.TARGETS if (t.device, t.case) not in ids\n"
            "       or (t.against and (t.device, t.against) not in ids)]\n"
            "print(json.dumps(dict(bad=bad, card=report.card_name(torch.device('cpu')))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["bad"] == []
    assert re.match(r"^cpu-\d+core-[a-z0-9-]+$", got["card"]), got["card"]


def test_save_writes_a_valid_card_and_merges_by_case(tmp_path):
    case = "pairwise_sqdist:fwd:N=20000,K=256,d=128"
    old = {"case": case, "op": "pairwise_sqdist", "mode": "fwd", "shape": "N=20000,K=256,d=128",
           "provider": "reference", "ms": 12345.0, "date": "2000-01-01"}
    other = dict(old, case="pairwise_sqdist:fwd:N=7,K=3,d=2", shape="N=7,K=3,d=2", ms=1.5)
    seed = {"schema": 1, "card": "test-card", "machine": {"card": "test-card", "kind": "cpu", "note": "kept"},
            "versions": {"torch": "0"}, "date": "2000-01-01", "commit": None, "cases": [old, other]}
    (tmp_path / "test-card.json").write_text(json.dumps(seed))
    _report("--save", "--results-dir", str(tmp_path), "--card", "test-card", "--quiet", "--only", "pairwise",
            "--no-compiled", "--skip", ":full:", ",cdist", timeout=240)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-card.json"]
    doc = json.loads((tmp_path / "test-card.json").read_text())
    keys = validate(doc, "test-card")
    by_key = {(e["case"], e["provider"]): e for e in doc["cases"]}
    new = by_key[(case, "reference")]
    assert new["ms"] != 12345.0 and new["date"] != "2000-01-01"  # the new measurement replaces the old
    assert by_key[(other["case"], "reference")]["ms"] == 1.5  # a case not measured stays
    assert doc["machine"]["note"] == "kept" and doc["machine"]["cores"] >= 1
    assert doc["versions"]["torch"] != "0" and doc["date"] != "2000-01-01"
    assert keys <= {(case, "reference"), (case, "cpu"), (other["case"], "reference")}
    if (case, "cpu") in keys:
        assert by_key[(case, "cpu")]["target"]["ratio"] == 1.5
