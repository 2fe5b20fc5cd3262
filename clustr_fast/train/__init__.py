"""Training: cross-entropy warm start, Magnet-loss fine-tuning on cluster
neighbourhoods (ClusTR), Magnet from random init, and QTRADES, all on the public
ops of ``clustr_fast``; atomic, resumable checkpoints. CLI: ``clustr-fast train``."""
from .checkpoint import load_checkpoint
from .classifier import ClusterClassifier
from .config import METHODS, TrainConfig
from .fit import TrainResult, fit
from .sampler import NeighbourhoodBatch, NeighbourhoodSampler

__all__ = ["METHODS", "ClusterClassifier", "NeighbourhoodBatch", "NeighbourhoodSampler", "TrainConfig",
           "TrainResult", "fit", "load_checkpoint"]
