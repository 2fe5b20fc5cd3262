"""Smoke test of tools/op_outputs.py: it saves every case and --compare finds equal and unequal files."""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_op_outputs_saves_and_compares(tmp_path):
    script = os.path.join(ROOT, "tools", "op_outputs.py")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    for path in (a, b):
        out = subprocess.run([sys.executable, script, path, "--backend", "reference"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    same = subprocess.run([sys.executable, script, "--compare", a, b], capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and " 0 differ" in same.stdout, same.stdout
    saved = torch.load(b)
    assert len(saved) > 80
    key = sorted(saved)[0]
    saved[key] = saved[key] + 1
    torch.save(saved, b)
    diff = subprocess.run([sys.executable, script, "--compare", a, b], capture_output=True, text=True, timeout=120)
    assert diff.returncode == 1 and key in diff.stdout, diff.stdout
