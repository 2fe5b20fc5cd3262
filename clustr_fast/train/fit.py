"""``fit``: the training run (cross-entropy warm start and/or Magnet phase), with
per-epoch evaluation, metrics files and resumable checkpoints."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..data import ArrayDataset, load_dataset, random_images
from ..models import build_model, input_keywords
from ..nn import SoftClusterHead
from .ce import ce_epoch, ce_lr
from .certified_margin import feature_lipschitz
from .checkpoint import CHECKPOINT_NAME, FORMAT, head_state, read_state, save_atomic
from .classifier import ClusterClassifier
from .config import RESUME_FREE, ConfigError, TrainConfig
from .distributed import (barrier, ddp_model, from_rank0, mean_stats, rank_generator, setup, sync_buffers,
                          teardown)
from .magnet import magnet_epoch, refresh
from .metrics import write_metrics
from .refresh import Clustering, accuracy
from .sampler import NeighbourhoodSampler
from .timing import Timer


@dataclass
class TrainResult:
    """``classifier`` (eval mode), ``history`` (one dict per epoch), ``seconds`` (wall time
    of this call), ``checkpoint`` (path, or None without ``out_dir``), ``config`` (resolved)."""

    classifier: ClusterClassifier
    history: list
    seconds: float
    checkpoint: str | None
    config: TrainConfig
    rank: int = 0
    world_size: int = 1


def _datasets(cfg, train_set, test_set):
    if train_set is None or test_set is None:
        if cfg.dry_run:
            loaded = random_images(cfg.data, cfg.seed, cfg.train_size, cfg.test_size)
        else:
            loaded = load_dataset(cfg.data, cfg.data_root, cfg.seed)
        train_set = train_set if train_set is not None else loaded[0]
        test_set = test_set if test_set is not None else loaded[1]
    for name, ds in (("train_set", train_set), ("test_set", test_set)):
        if not isinstance(ds, ArrayDataset):
            raise TypeError(f"fit: `{name}` must be a clustr_fast.data.ArrayDataset, got {type(ds).__name__}")
    if train_set.num_classes != test_set.num_classes:
        raise ConfigError(f"fit: `train_set` has {train_set.num_classes} classes, `test_set` {test_set.num_classes}")
    if cfg.train_size is not None:
        train_set = train_set.subset(cfg.train_size, cfg.seed)
    if cfg.test_size is not None:
        test_set = test_set.subset(cfg.test_size, cfg.seed)
    if len(train_set) < 2 or len(test_set) < 1:
        raise ConfigError(f"fit: need >= 2 training and >= 1 test examples, got {len(train_set)} and {len(test_set)}")
    return train_set, test_set


def _model_spec(cfg, train):
    """Model name, classes and constructor keywords (input size and normalisation from ``train``,
    then ``cfg.model_options``)."""
    try:
        kw = input_keywords(cfg.model, train.x)
    except ValueError as exc:
        raise ConfigError(f"fit: {exc} ({train.name})") from None
    kw.update(cfg.model_options)
    return {"name": cfg.model, "num_classes": int(train.num_classes), "kwargs": kw}


def _schedule(cfg):
    phases = []
    if cfg.method in ("ce", "clustr", "clustr-qtrades"):
        phases += [("ce", e) for e in range(1, cfg.epochs_ce + 1)]
    if cfg.method != "ce":
        phases += [("magnet", e) for e in range(1, cfg.epochs_magnet + 1)]
    return phases


def _check_clusters(cfg, train, num_classes):
    if cfg.method == "ce":
        return
    counts = torch.bincount(train.y, minlength=num_classes)
    if int(counts.min()) < cfg.k:
        c = int(counts.argmin())
        raise ConfigError(f"fit: class {c} has {int(counts[c])} training examples, fewer than `k`={cfg.k}")
    if cfg.top_d is not None and cfg.top_d > cfg.k * num_classes:
        raise ConfigError(f"fit: `top_d`={cfg.top_d} exceeds the {cfg.k * num_classes} cluster centers")


def _resume_state(cfg, path, spec, n_train):
    if path is None or not cfg.resume or not os.path.exists(path):
        return None
    try:
        state = read_state(path)
    except ValueError as exc:
        raise ConfigError(f"fit: cannot resume from {path}: {exc}; use another `out_dir` or resume=False") from None
    old, new = state["config"], cfg.to_dict()
    defaults = TrainConfig().to_dict()      # a field added since that checkpoint was written
    diff = [k for k in new if k not in RESUME_FREE and old.get(k, defaults.get(k)) != new[k]]
    if diff or state["model"] != spec or state.get("num_train") != n_train:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff) or "model or data set"
        raise ConfigError(f"fit: {path} holds a run with another configuration ({what}); "
                         "use another `out_dir` or resume=False")
    return state


def _head(clustering, num_classes, top_d):
    return SoftClusterHead(clustering.centers, clustering.center_classes, num_classes,
                           float(clustering.variance), top_d=top_d)


def fit(config: TrainConfig, train_set: ArrayDataset | None = None, test_set: ArrayDataset | None = None,
        *, callback=None) -> TrainResult:
    """Train ``config.method`` and return a :class:`TrainResult`.

    Data come from ``config.data`` unless ``train_set``/``test_set`` are given.
    With ``config.out_dir``, every epoch ends with an atomic checkpoint
    (``out_dir/checkpoint.pt``) and rewritten ``metrics.jsonl``/``metrics.csv``; a
    later call with the same config resumes after the last finished epoch (an
    interrupted epoch is redone from its start). ``callback(record)`` is called
    after each epoch's record is saved.

    Under torchrun (or in an initialised default process group) every rank calls ``fit``
    with the same config: training runs in DistributedDataParallel, each rank on its share
    (docs/training.md, "More than one process"); rank 0 alone reads and writes the
    checkpoint and metrics and calls ``callback``; every rank returns the same classifier.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: `config` must be a TrainConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    cfg = config.resolved()
    world, device = setup(cfg.device)
    try:
        return _fit(cfg, world, device, train_set, test_set, callback, t0)
    finally:
        teardown(world)


@dataclass
class _Run:
    """What one training run holds between its steps; the config itself is never changed."""

    cfg: TrainConfig
    world: object
    device: torch.device
    train: ArrayDataset
    test: ArrayDataset
    spec: dict
    path: str | None
    net: torch.nn.Module
    classifier: ClusterClassifier
    cpu_gen: torch.Generator
    dev_gen: torch.Generator
    sampler: NeighbourhoodSampler | None
    schedule: list
    history: list
    done: int = 0
    clustering: Clustering | None = None
    opt_state: dict | None = None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _fit(cfg, world, device, train_set, test_set, callback, t0):
    """The paper's algorithm, one step per function: data and model (``_start``), then per epoch the
    cross-entropy warm start (``_warm_start_epoch``) or a Magnet epoch (``_magnet_epoch``: refresh
    the clusters, Magnet loss with the QTRADES and certified-margin terms, refresh again), the test
    accuracy and the checkpoint (``_end_epoch``)."""
    run = _start(cfg, world, device, train_set, test_set)
    optimizer, phase_now, model, frozen = None, None, run.net, []
    for global_epoch, (phase, epoch) in enumerate(run.schedule, 1):
        if global_epoch <= run.done:
            continue
        if phase != phase_now:
            optimizer, model, frozen = _start_phase(run, phase)
            phase_now = phase
        timer = Timer(device)
        with timer("epoch"):
            if phase == "ce":
                lr, stats = _warm_start_epoch(run, model, optimizer, epoch, global_epoch, timer)
            else:
                lr, stats = _magnet_epoch(run, model, optimizer, epoch, global_epoch, timer)
            stats = mean_stats(stats, ("train_loss", "magnet_loss", "qtrades_loss", "margin_loss"), world)
            with timer("eval"):
                test_acc = accuracy(run.classifier, run.test.x, run.test.y, device, world=world)
        _end_epoch(run, optimizer, _record(phase, epoch, global_epoch, lr, stats, test_acc, timer.seconds,
                                           run.clustering), callback)
    for p in frozen:
        p.requires_grad_(True)
    if cfg.method != "ce" and run.clustering is None:      # no Magnet epoch: cluster the warm-start features
        _refresh(run, Timer(device))
        _checkpoint(run, optimizer)
    barrier(world)
    return TrainResult(run.classifier.eval(), run.history, time.perf_counter() - t0, run.path, cfg, world.rank,
                       world.size)


def _start(cfg, world, device, train_set, test_set) -> _Run:
    """Data, model, generators, sampler; a checkpoint of the same run resumes after its last epoch."""
    train, test = _datasets(cfg, train_set, test_set)
    if len(train) < world.size:
        raise ConfigError(f"fit: {world.size} processes need >= {world.size} training examples, got {len(train)}")
    _check_clusters(cfg, train, train.num_classes)
    spec = _model_spec(cfg, train)
    path = os.path.join(cfg.out_dir, CHECKPOINT_NAME) if cfg.out_dir else None
    state = from_rank0(lambda: _resume_state(cfg, path, spec, len(train)), world)
    torch.manual_seed(cfg.seed)
    net = build_model(spec["name"], spec["num_classes"], **spec["kwargs"]).to(device)
    cpu_gen = torch.Generator().manual_seed(cfg.seed)
    run = _Run(cfg, world, device, train, test, spec, path, net,
               ClusterClassifier(net, None, cfg.method, train.num_classes), cpu_gen,
               torch.Generator(device=device).manual_seed(cfg.seed + 1),
               NeighbourhoodSampler(len(train), cfg.m, cfg.d, cpu_gen) if cfg.method != "ce" else None,
               _schedule(cfg), [])
    if state is None and cfg.init_from is not None:     # the Magnet phase starts from the warm start
        net.load_state_dict(_warm_start(cfg, spec))
    if state is not None:
        _resume(run, state)
    return run


def _resume(run, state):
    run.net.load_state_dict(state["net"])
    run.cpu_gen.set_state(state["generators"]["cpu"])
    run.dev_gen.set_state(state["generators"]["device"])
    run.history, run.done, run.opt_state = list(state["history"]), int(state["epochs_done"]), state["optimizer"]
    if state["clustering"] is not None:
        run.clustering = Clustering.from_state(state["clustering"], run.device)
        run.sampler.set_clusters(run.clustering.assign, run.clustering.centers, run.clustering.center_classes)
        run.classifier.head = _head(run.clustering, run.num_classes, run.cfg.top_d).to(run.device)
    if run.sampler is not None and state["sampler"] is not None:
        run.sampler.load_state_dict(state["sampler"])


def _start_phase(run, phase):
    """A fresh Adam for the phase (its saved state when resuming inside it) and the model to train
    (DistributedDataParallel under several processes): ``(optimizer, model, frozen parameters)``."""
    cfg = run.cfg
    optimizer = torch.optim.Adam(run.net.parameters(), lr=cfg.lr_ce if phase == "ce" else cfg.lr,
                                 weight_decay=cfg.weight_decay)
    if run.opt_state is not None and run.schedule[run.done - 1][0] == phase:
        optimizer.load_state_dict(run.opt_state)
    run.opt_state = None
    features_of = None if phase == "ce" else run.train.x[:1].to(run.device)
    model, frozen = ddp_model(run.net, run.world, run.device, features_of=features_of)
    return optimizer, model, frozen


def _own_generators(run, global_epoch):
    """One process: the run's generators; several: each rank's own draws (augmentation, sampler,
    QTRADES noise) from generators keyed on (seed, epoch, rank); the shuffle and the k-means++
    seeding stay on the shared generators, which advance alike on every rank."""
    if not run.world.sharded:
        return run.cpu_gen, run.dev_gen
    return (rank_generator(run.cfg.seed, global_epoch, run.world.rank),
            rank_generator(run.cfg.seed, global_epoch, run.world.rank, run.device))


def _set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def _warm_start_epoch(run, model, optimizer, epoch, global_epoch, timer):
    """One cross-entropy epoch (the warm start): ``(lr, stats)``."""
    cfg = run.cfg
    lr = ce_lr(cfg.lr_ce, epoch - 1, cfg.epochs_ce)
    _set_lr(optimizer, lr)
    own_cpu, _ = _own_generators(run, global_epoch)
    with timer("train"):
        stats = ce_epoch(model, optimizer, run.train, batch_size=cfg.batch_size, device=run.device,
                         generator=run.cpu_gen, augment=cfg.augment, max_steps=cfg.max_steps,
                         progress=cfg.progress and run.world.main, desc=f"ce {epoch}/{cfg.epochs_ce}",
                         world=run.world, aug_generator=own_cpu)
    sync_buffers(run.net, run.world)
    return lr, stats


def _refresh(run, timer):
    """Embed the training set, cluster it per class (k-means++ and Lloyd), hand the clusters to the
    sampler and the prediction head."""
    cfg = run.cfg
    run.clustering = refresh(run.net, run.train, run.sampler, k=cfg.k, iters=cfg.kmeans_iters,
                             n_init=cfg.kmeans_n_init, alpha=cfg.alpha, device=run.device, generator=run.dev_gen,
                             timer=timer, world=run.world)
    run.classifier.head = _head(run.clustering, run.num_classes, cfg.top_d).to(run.device)
    return run.clustering


def _qtrades_term(run):
    """The QTRADES settings of this epoch (None without QTRADES); "global" p(.) reads the last refresh."""
    cfg = run.cfg
    if cfg.method != "clustr-qtrades":
        return None
    return {"lambda": cfg.qtrades_lambda, "eps": cfg.qtrades_eps, "step": cfg.qtrades_step,
            "centers": cfg.qtrades_centers, "num_classes": run.num_classes, "top_d": cfg.top_d,
            "clustering": run.clustering}


def _margin_term(run):
    """The certified-margin settings of this epoch (None when off); the bound is taken now, since it
    moves with the weights of a model whose bound is not fixed."""
    cfg = run.cfg
    if cfg.margin_weight <= 0 or cfg.method == "ce":
        return None
    return {"weight": cfg.margin_weight, "radius": cfg.margin_radius,
            "lipschitz": feature_lipschitz(run.net, run.train.x[:1].to(run.device))}


def _magnet_epoch(run, model, optimizer, epoch, global_epoch, timer):
    """One Magnet epoch: the clusters (refreshed first when there are none yet), the Magnet loss on
    neighbourhood batches with the QTRADES and certified-margin terms, then the refresh that serves
    the next epoch and the prediction head: ``(lr, stats)``, ``stats["full_loss_start"]`` when the
    epoch began with a refresh."""
    cfg = run.cfg
    lr = _magnet_lr(cfg.lr, epoch, cfg.magnet_lr_milestones)
    _set_lr(optimizer, lr)
    start_loss = None
    if run.clustering is None:
        start_loss = _refresh(run, timer).loss
    own_cpu, own_dev = _own_generators(run, global_epoch)
    run.sampler.gen = own_cpu
    with timer("train"):
        stats = magnet_epoch(model, optimizer, run.train, run.sampler, alpha=cfg.alpha, device=run.device,
                             cpu_gen=own_cpu, dev_gen=own_dev, timer=timer, augment=cfg.augment,
                             qtrades=_qtrades_term(run), max_steps=cfg.max_steps,
                             progress=cfg.progress and run.world.main, desc=f"magnet {epoch}/{cfg.epochs_magnet}",
                             world=run.world, batch_variance=cfg.batch_variance, margin=_margin_term(run))
    sync_buffers(run.net, run.world)
    _refresh(run, timer)
    if start_loss is not None:
        stats["full_loss_start"] = start_loss
    return lr, stats


def _end_epoch(run, optimizer, record, callback):
    """Keep the epoch's record; rank 0 writes the checkpoint and the metrics and calls ``callback``."""
    run.history.append(record)
    run.done = record["global_epoch"]
    _checkpoint(run, optimizer)
    if run.path is not None and run.world.main:
        write_metrics(run.history, run.cfg.out_dir)
    if callback is not None and run.world.main:
        callback(record)


def _checkpoint(run, optimizer):
    if run.path is not None and run.world.main:
        _save(run.path, run.cfg, run.spec, run.net, optimizer, run.cpu_gen, run.dev_gen, run.sampler,
              run.clustering, run.history, run.done, len(run.schedule), len(run.train))


def _record(phase, epoch, global_epoch, lr, stats, test_acc, sec, clustering):
    stats = dict(stats)
    start_loss = stats.pop("full_loss_start", None)
    r = {"phase": phase, "epoch": epoch, "global_epoch": global_epoch, "lr": lr, **stats, "test_acc": test_acc,
         "epoch_s": sec["epoch"], "train_s": sec["train"], "eval_s": sec["eval"]}
    if stats["steps"]:
        r["step_s"] = sec["train"] / stats["steps"]
    if phase == "magnet":
        r.update(loss_s=sec["loss"], embed_s=sec["embed"], kmeans_s=sec["kmeans"], monitor_s=sec["monitor"],
                 variance=float(clustering.variance))
        phase_s = sec["train"] + sec["embed"] + sec["kmeans"]
        r["cluster_frac"] = (sec["kmeans"] + sec["loss"]) / phase_s if phase_s > 0 else 0.0
    if stats["steps"] < stats["planned_steps"] and stats["steps"]:
        full = r["step_s"] * stats["planned_steps"]
        r["full_epoch_s_est"] = full + (sec["embed"] + sec["kmeans"] if phase == "magnet" else 0.0)
    if phase == "magnet":
        r["full_loss"] = clustering.loss
        if start_loss is not None:
            r["full_loss_start"] = start_loss
    return r


def _save(path, cfg, spec, net, optimizer, cpu_gen, dev_gen, sampler, clustering, history, done, total, n_train):
    state = {
        "format": FORMAT, "config": cfg.to_dict(), "model": spec, "num_train": n_train,
        "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "generators": {"cpu": cpu_gen.get_state(), "device": dev_gen.get_state()},
        "sampler": sampler.state_dict() if sampler is not None else None,
        "clustering": clustering.to_state() if clustering is not None else None,
        **head_state(clustering, cfg.k, cfg.top_d),
        "epochs_done": done, "epochs_total": total, "finished": done == total and (
            cfg.method == "ce" or clustering is not None),
        "history": history,
    }
    save_atomic(state, path)


def _magnet_lr(base_lr: float, epoch: int, milestones) -> float:
    """The Magnet phase's lr in (1-based) ``epoch``: x0.1 after each milestone epoch (MultiStepLR)."""
    return base_lr * 0.1 ** sum(epoch > m for m in milestones)


def _warm_start(cfg, spec) -> dict:
    """The network weights of ``cfg.init_from``, a finished warm-start (method ce) checkpoint of
    the same model and data set; ConfigError naming ``init_from`` otherwise."""
    path = cfg.init_from
    if not os.path.isfile(path):
        raise ConfigError(f"fit: `init_from` {path} is not a file (give a finished warm-start checkpoint.pt)")
    try:
        state = read_state(path)
    except ValueError:
        raise ConfigError(f"fit: `init_from` {path} is not a clustr_fast checkpoint") from None
    old, theirs = state["config"], state["model"]
    if old.get("method") != "ce":
        raise ConfigError(f"fit: `init_from` {path} holds a {old.get('method')!r} run; a warm start is a 'ce' run")
    if not state.get("finished"):
        raise ConfigError(f"fit: `init_from` {path} is unfinished ({state.get('epochs_done')} of "
                          f"{state.get('epochs_total')} epochs): finish the warm start first")
    if (old.get("data"), old.get("dry_run", False), theirs["name"], theirs["num_classes"]) != (
            cfg.data, cfg.dry_run, spec["name"], spec["num_classes"]):
        raise ConfigError(f"fit: `init_from` {path} is a {theirs['name']} trained on {old.get('data')}; "
                          f"this run trains a {spec['name']} on {cfg.data}")
    return state["net"]
