"""``TrainConfig``: every knob of a training run, per-data-set defaults, and checks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..data import CIFAR_SHAPES, DATASETS
from ..models import MODELS, default_model

METHODS = ("ce", "magnet", "clustr", "clustr-qtrades")
# sigma^2 of the Magnet batch loss under several processes: each rank's batch, or all of them.
BATCH_VARIANCES = ("local", "global")

# Per-data-set defaults for the fields left as None. CIFAR/SVHN follow the paper
# (appendix D: CE warm start Adam 1e-2 for 90 epochs, decayed x0.1 at 1/3 and 2/3;
# Magnet fine-tuning Adam 1e-4 for 30 (CIFAR-10) or 60 epochs; alpha and lambda
# from its grid search). The small sets are tuned to converge in seconds.
DATA_DEFAULTS = {
    "moons":    dict(epochs_ce=30, epochs_magnet=30, lr_ce=1e-2, lr=1e-3, lr_scratch=1e-2, batch_size=64,
                     alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.1, augment=False),
    "rings":    dict(epochs_ce=30, epochs_magnet=30, lr_ce=1e-2, lr=1e-3, lr_scratch=1e-2, batch_size=64,
                     alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.1, augment=False),
    "digits":   dict(epochs_ce=10, epochs_magnet=10, lr_ce=2e-3, lr=1e-4, lr_scratch=1e-3, batch_size=64,
                     alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.1, augment=False, margin_radius=0.8),
    "mnist5k":  dict(epochs_ce=10, epochs_magnet=10, lr_ce=1e-3, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                     alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.3, augment=False, margin_radius=2.0),
    "mnist":    dict(epochs_ce=10, epochs_magnet=10, lr_ce=1e-3, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                     alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.3, augment=False, margin_radius=2.0),
    "fashion-mnist": dict(epochs_ce=10, epochs_magnet=10, lr_ce=1e-3, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                          alpha=12.5, qtrades_lambda=1.0, qtrades_eps=0.1, augment=False, margin_radius=0.6),
    "cifar10":  dict(epochs_ce=90, epochs_magnet=30, lr_ce=1e-2, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                     alpha=12.5, qtrades_lambda=8.0, qtrades_eps=8 / 255, augment=True),
    "cifar100": dict(epochs_ce=90, epochs_magnet=60, lr_ce=1e-2, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                     alpha=8.5, qtrades_lambda=2.0, qtrades_eps=8 / 255, augment=True),
    "svhn":     dict(epochs_ce=90, epochs_magnet=60, lr_ce=1e-2, lr=1e-4, lr_scratch=1e-3, batch_size=128,
                     alpha=13.0, qtrades_lambda=9.7, qtrades_eps=8 / 255, augment=False),
}
SVHN_QTRADES_ALPHA = 10.0
# The certified-margin term (certified_margin.py) is on by default for a model with a proven bound
# (a lip-* model) trained on clusters: weight 3 and the data set's radius (else MARGIN_RADIUS).
LIPSCHITZ_MARGIN_WEIGHT = 3.0
MARGIN_RADIUS = 0.5
DRY_RUN_EPOCHS = 1

# Fields that may change between an interrupted run and its resumption.
RESUME_FREE = ("device", "out_dir", "data_root", "progress", "resume")


class ConfigError(ValueError):
    """A run cannot start as configured (bad field, model/data mismatch, foreign checkpoint)."""


@dataclass
class TrainConfig:
    """A training run. ``None`` fields take the data set's default (``DATA_DEFAULTS``).

    method: "ce" (cross-entropy only), "magnet" (Magnet loss from random init),
    "clustr" (CE warm start then Magnet), "clustr-qtrades" (clustr plus the
    one-step adversary, loss = magnet + qtrades_lambda * CE(p(x), p(x_adv))).
    kmeans_iters / kmeans_n_init: Lloyd iterations and k-means++ seedings per class
    at every refresh (the seeding of least inertia kept). qtrades_centers: p(.) of
    QTRADES against the batch's cluster means ("batch") or the last refresh's
    centers, training sigma^2, every class and top_d nearest ("global"). init_from:
    a finished warm-start (method "ce") checkpoint whose network starts the Magnet
    phase (no CE epochs). magnet_lr_milestones: Magnet epochs after which lr is
    multiplied by 0.1.
    k clusters per class, Magnet margin alpha, sampler of m clusters x d samples,
    top_d nearest centers at prediction (None: all). lr is the Magnet phase's
    learning rate, lr_ce the warm start's. max_steps caps the steps per epoch;
    train_size / test_size subsample the data; dry_run trains on random
    32x32 images with the size of ``data`` (or CIFAR-10's). Under torchrun,
    batch_size, m and d are per process and batch_variance is "local" (sigma^2
    of each rank's Magnet batch) or "global" (of every rank's batches together).
    model_options: constructor keywords of the model that a run may set (its registered
    ``options``, e.g. ``width``).
    margin_weight / margin_radius: weight of the certified-margin term added to the
    Magnet loss (``certified_margin.py``; 0: none) and the certified radius it asks
    of every sample, in input units (the bound L of the feature map is taken at
    the start of every Magnet epoch). None: ``LIPSCHITZ_MARGIN_WEIGHT`` for a model with a
    proven bound (lip-*) and 0 otherwise; the data set's radius.
    """

    data: str = "digits"
    method: str = "clustr"
    model: str | None = None
    epochs_ce: int | None = None
    epochs_magnet: int | None = None
    k: int = 2
    alpha: float | None = None
    lr: float | None = None
    lr_ce: float | None = None
    m: int = 12
    d: int = 20
    top_d: int | None = None
    qtrades_lambda: float | None = None
    qtrades_eps: float | None = None
    qtrades_step: float | None = None
    batch_size: int | None = None
    weight_decay: float = 0.0
    augment: bool | None = None
    kmeans_iters: int = 20
    kmeans_n_init: int = 1
    qtrades_centers: str = "batch"
    init_from: str | None = None
    magnet_lr_milestones: tuple = ()
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    out_dir: str | None = None
    max_steps: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    dry_run: bool = False
    progress: bool = False
    resume: bool = True
    batch_variance: str = "local"
    margin_weight: float | None = None
    margin_radius: float | None = None
    model_options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def resolved(self) -> "TrainConfig":
        """A checked copy with every ``None`` default filled in; ValueError names a bad field."""
        _check(self)
        c = dataclasses.replace(self, extra=dict(self.extra))
        base = DATA_DEFAULTS[c.data]
        scratch = c.method == "magnet"
        if c.model is None:
            c.model = default_model(c.data)
        if c.epochs_ce is None:
            c.epochs_ce = DRY_RUN_EPOCHS if c.dry_run else (0 if scratch else base["epochs_ce"])
        if c.epochs_magnet is None:
            total = base["epochs_magnet"] + (base["epochs_ce"] if scratch else 0)
            c.epochs_magnet = DRY_RUN_EPOCHS if c.dry_run else total
        if c.method == "ce":
            c.epochs_magnet = 0
        if scratch:
            c.epochs_ce = 0
        if c.alpha is None:
            c.alpha = SVHN_QTRADES_ALPHA if (c.data == "svhn" and c.method == "clustr-qtrades") else base["alpha"]
        if c.lr is None:
            c.lr = base["lr_scratch"] if scratch else base["lr"]
        for name in ("lr_ce", "batch_size", "qtrades_lambda", "qtrades_eps", "augment"):
            if getattr(c, name) is None:
                setattr(c, name, base[name])
        if c.margin_weight is None:
            proven = MODELS[c.model].lipschitz is not None
            c.margin_weight = LIPSCHITZ_MARGIN_WEIGHT if proven and c.method != "ce" else 0.0
        if c.margin_radius is None:
            c.margin_radius = base.get("margin_radius", MARGIN_RADIUS)
        if c.qtrades_step is None:
            c.qtrades_step = c.qtrades_eps
        if c.init_from is not None:
            c.epochs_ce = 0                       # the warm start is the checkpoint's
        c.magnet_lr_milestones = tuple(c.magnet_lr_milestones)
        _check(c)
        return c


def _positive_int(c, name, low=1, optional=False):
    v = getattr(c, name)
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"TrainConfig: `{name}` must be an int >= {low}, got {v!r}")


def _positive_float(c, name, allow_zero=False, optional=True):
    v = getattr(c, name)
    if v is None and optional:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v != float("inf")
    if not ok or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"TrainConfig: `{name}` must be a finite number {bound}, got {v!r}")


def _check(c: TrainConfig):
    if c.data not in DATASETS:
        raise ConfigError(f"TrainConfig: `data` must be one of {', '.join(DATASETS)}, got {c.data!r}")
    if c.method not in METHODS:
        raise ConfigError(f"TrainConfig: `method` must be one of {', '.join(METHODS)}, got {c.method!r}")
    if c.model is not None and c.model not in MODELS:
        raise ConfigError(f"TrainConfig: `model` must be one of {', '.join(MODELS)}, got {c.model!r}")
    if not isinstance(c.model_options, dict):
        raise ConfigError(f"TrainConfig: `model_options` must be a dict, got {type(c.model_options).__name__}")
    if c.model_options:
        allowed = MODELS[c.model or default_model(c.data)].options
        bad = sorted(set(c.model_options) - set(allowed))
        if bad:
            raise ConfigError(f"TrainConfig: `model_options` {bad} are not options of model {c.model!r} "
                              f"(its options: {', '.join(allowed) or 'none'})")
    if c.dry_run and c.data not in CIFAR_SHAPES:
        raise ConfigError(f"TrainConfig: a dry run times 32x32 images: `data` must be one of "
                         f"{', '.join(CIFAR_SHAPES)}, got {c.data!r}")
    for name, low in (("k", 1), ("m", 2), ("d", 2), ("kmeans_iters", 1), ("seed", 0)):
        _positive_int(c, name, low)
    for name in ("epochs_ce", "epochs_magnet"):
        _positive_int(c, name, 0, optional=True)
    for name in ("top_d", "max_steps", "train_size", "test_size", "batch_size"):
        _positive_int(c, name, 1, optional=True)
    for name in ("lr", "lr_ce", "alpha"):
        _positive_float(c, name)
    for name in ("qtrades_lambda", "qtrades_eps", "qtrades_step", "weight_decay"):
        _positive_float(c, name, allow_zero=True)
    for name in ("margin_weight", "margin_radius"):
        _positive_float(c, name, allow_zero=True, optional=True)
    _check_reproduction(c)
    if c.batch_variance not in BATCH_VARIANCES:
        raise ConfigError(f"TrainConfig: `batch_variance` must be one of {', '.join(BATCH_VARIANCES)}, "
                         f"got {c.batch_variance!r}")
    try:
        dev = torch.device(c.device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"TrainConfig: `device` {c.device!r} is not a device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig: `device` {c.device!r} is not available (no CUDA GPU here)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"TrainConfig: `device` must be cpu or cuda, got {c.device!r}")


QTRADES_CENTERS = ("global", "batch")


def _check_reproduction(c: TrainConfig):
    """The fields that run the paper's recipes: seedings, QTRADES centers, warm start, lr milestones."""
    _positive_int(c, "kmeans_n_init", 1)
    if c.qtrades_centers not in QTRADES_CENTERS:
        raise ConfigError(f"TrainConfig: `qtrades_centers` must be one of {', '.join(QTRADES_CENTERS)}, "
                          f"got {c.qtrades_centers!r}")
    m = c.magnet_lr_milestones
    if not isinstance(m, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in m):
        raise ConfigError(f"TrainConfig: `magnet_lr_milestones` must be a list of ints >= 1, got {m!r}")
    if c.init_from is not None:
        if not isinstance(c.init_from, str) or not c.init_from:
            raise ConfigError(f"TrainConfig: `init_from` must be a checkpoint path, got {c.init_from!r}")
        if c.method not in ("clustr", "clustr-qtrades"):
            raise ConfigError(f"TrainConfig: `init_from` starts the Magnet phase of clustr or clustr-qtrades "
                              f"from a warm start; method {c.method!r} has none")
