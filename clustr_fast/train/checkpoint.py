"""Checkpoints: one file holding the network, the clustering head (centers, center
classes, variance, K, top_d), the config, and the training state needed to resume
(optimizer, generators, sampler losses, epochs done, history). Saved atomically."""
from __future__ import annotations

import os
import tempfile

import torch

from ..models import build_model
from ..nn import SoftClusterHead
from .classifier import ClusterClassifier

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def save_atomic(state: dict, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_state(path: str) -> dict:
    """The checkpoint's dict (tensors on the CPU); clear errors for missing or foreign files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: `path` {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"load_checkpoint: `path` {path} is not a clustr_fast checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: `path` {path} is not a clustr_fast checkpoint (format {FORMAT})")
    return state


def head_state(clustering, k, top_d):
    """The head's fields as stored at the checkpoint's top level (None before any clustering)."""
    if clustering is None:
        return {"centers": None, "center_classes": None, "variance": None, "k": k, "top_d": top_d}
    return {"centers": clustering.centers.detach().cpu(), "center_classes": clustering.center_classes.cpu(),
            "variance": float(clustering.variance), "k": k, "top_d": top_d}


def classifier_from_state(state: dict, device="cpu") -> ClusterClassifier:
    """Rebuild the ClusterClassifier (eval mode) on ``device``."""
    spec = state["model"]
    net = build_model(spec["name"], spec["num_classes"], **spec["kwargs"])
    net.load_state_dict(state["net"])
    method = state["config"]["method"]
    head = None
    if method != "ce":
        if state["centers"] is None:
            raise ValueError("load_checkpoint: the checkpoint has no cluster centers yet "
                             "(saved during the cross-entropy warm start); resume training first")
        top_d = state["top_d"]
        if top_d is not None:
            top_d = min(int(top_d), state["centers"].shape[0])
        head = SoftClusterHead(state["centers"], state["center_classes"], spec["num_classes"],
                               state["variance"], top_d=top_d)
    return ClusterClassifier(net, head, method, spec["num_classes"]).to(device).eval()


def load_checkpoint(path: str, device="cpu"):
    """``(ClusterClassifier in eval mode on device, config dict)`` from a checkpoint file."""
    state = read_state(path)
    return classifier_from_state(state, device), dict(state["config"])
