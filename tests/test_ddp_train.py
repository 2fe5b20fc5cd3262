"""Training under torchrun: two ranks train, a run killed mid-way resumes with the same command,
its checkpoint scores the logged accuracy in one process, one rank under torchrun is bit-identical
to a plain run, and the sharded pieces (accuracy, refresh, global batch variance, shards) equal
their one-process values on two real processes.

Every process a test starts has a deadline and is killed by its pid (torchrun starts each worker
in a session of its own, so its workers are found under /proc and killed one by one)."""
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

RUN_S = 240          # one torchrun or plain run, start to end
PIECES_S = 180       # the two spawned ranks of the direct test
TIMING_KEYS = {"epoch_s", "train_s", "eval_s", "step_s", "loss_s", "embed_s", "kmeans_s", "monitor_s",
               "cluster_frac", "full_epoch_s_est"}
# --m/--d are left at their defaults: torchrun's own parser takes them for abbreviations of its flags
TINY = ["--data", "digits", "--max-steps", "3", "--train-size", "240", "--test-size", "100", "--quiet"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "clustr_fast.cli", *args]


def _descendants(pid):
    """Pids of every process below ``pid`` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(proc):
    """SIGKILL ``proc`` (started with start_new_session=True), its group and every descendant."""
    below = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _start(cmd, cwd, log):
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(cmd, cwd, timeout=RUN_S):
    """``(returncode, output)``; the process tree is killed and the test fails past ``timeout``."""
    log_path = os.path.join(cwd, f"log-{time.monotonic_ns()}.txt")
    with open(log_path, "w") as log:
        proc = _start(cmd, cwd, log)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            pytest.fail(f"{' '.join(cmd[2:6])} ... did not finish within {timeout} s:\n{open(log_path).read()[-3000:]}")
    with open(log_path) as fh:
        return proc.returncode, fh.read()


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _untimed(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _test_set(state):
    from clustr_fast.data import load_dataset

    cfg = state["config"]
    _, test = load_dataset(cfg["data"], cfg["data_root"], cfg["seed"])
    return test.subset(cfg["test_size"], cfg["seed"]) if cfg["test_size"] else test


def test_two_ranks_killed_mid_run_resume_and_score_the_logged_accuracy_in_one_process(tmp_path):
    from clustr_fast.train import load_checkpoint
    from clustr_fast.train.refresh import accuracy

    out = tmp_path / "run"
    cmd = _torchrun(2, "train", *TINY, "--method", "clustr", "--epochs-ce", "2", "--epochs-magnet", "3",
                    "--out-dir", str(out))
    ckpt = out / "checkpoint.pt"
    with open(tmp_path / "killed.txt", "w") as log:
        proc = _start(cmd, tmp_path, log)
        deadline = time.monotonic() + RUN_S
        try:
            while not ckpt.exists():
                assert proc.poll() is None, "the run ended before its first checkpoint:\n" + \
                    (tmp_path / "killed.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within the deadline"
                time.sleep(0.05)
        finally:
            _kill(proc)
    killed = _state(ckpt)
    assert 1 <= killed["epochs_done"] < killed["epochs_total"] == 5

    rc, text = _run(cmd, tmp_path)
    assert rc == 0, text[-3000:]
    assert text.count("trained clustr on digits") == 1          # rank 0 alone reports
    final = _state(ckpt)
    h = final["history"]
    assert final["finished"] and [r["global_epoch"] for r in h] == [1, 2, 3, 4, 5]
    assert h[:killed["epochs_done"]] == killed["history"]       # finished epochs are not redone
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["global_epoch"] for r in rows] == [1, 2, 3, 4, 5]

    # written by two ranks, loaded in one process: the logged test accuracy
    clf, cfg = load_checkpoint(str(ckpt))
    test = _test_set(final)
    assert accuracy(clf, test.x, test.y, "cpu") == h[-1]["test_acc"]
    assert 0.5 < h[-1]["test_acc"] <= 1.0


def test_one_rank_under_torchrun_is_bit_identical_to_a_plain_run(tmp_path):
    args = ["train", *TINY, "--method", "clustr-qtrades", "--epochs-ce", "2", "--epochs-magnet", "2"]
    rc, text = _run([sys.executable, "-m", "clustr_fast.cli", *args, "--out-dir", str(tmp_path / "plain")], tmp_path)
    assert rc == 0, text[-3000:]
    rc, text = _run(_torchrun(1, *args, "--out-dir", str(tmp_path / "one")), tmp_path)
    assert rc == 0, text[-3000:]
    a, b = _state(tmp_path / "plain" / "checkpoint.pt"), _state(tmp_path / "one" / "checkpoint.pt")
    assert set(a) == set(b)
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert _untimed(a["history"]) == _untimed(b["history"])
    for key in ("assign", "centers", "center_classes", "variance"):
        assert torch.equal(a["clustering"][key], b["clustering"][key]), key
    assert a["variance"] == b["variance"]
    la, lb = a["sampler"]["example_loss"], b["sampler"]["example_loss"]
    assert torch.equal(la.isnan(), lb.isnan()) and torch.equal(la.nan_to_num(), lb.nan_to_num())
    for key in ("cpu", "device"):
        assert torch.equal(a["generators"][key], b["generators"][key])


# --------------------------------------------------------------------------- the pieces, two ranks


def _pieces(rank, size, init_file, out_dir):
    """One rank of the direct test: every sharded piece against its one-process value,
    computed on this rank from every rank's inputs. Writes its findings to ``out_dir``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        torch.save(_check_pieces(rank, size), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _check_pieces(rank, size):
    import clustr_fast
    from clustr_fast.data import load_dataset
    from clustr_fast.models import build_model
    from clustr_fast.robust import attack_certified, certify, robust_accuracy
    from clustr_fast.robust import evaluate as E
    from clustr_fast.train import ClusterClassifier, TrainConfig
    from clustr_fast.train import distributed as D
    from clustr_fast.train.fit import _head, _model_spec
    from clustr_fast.train.magnet import full_magnet_loss, global_variance_scaled
    from clustr_fast.train.refresh import Clustering, accuracy, embed
    from clustr_fast.train.timing import Timer

    world = D.current()
    assert (world.rank, world.size, world.sharded) == (rank, size, True)
    found = {}

    # shards: every row once, equal step counts
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    parts = [D.shard_permutation(perm, D.World(r, size, active=True)) for r in range(size)]
    found["perm_covers"] = sorted(set(torch.cat(parts).tolist())) == list(range(11))
    found["perm_equal_steps"] = len({p.numel() for p in parts}) == 1
    spans = [s for r in range(size) for s in D.batches(10, 3, D.World(r, size, active=True))]
    found["batches_cover"] = sorted(spans) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    local = torch.arange(10)[D.rows(10, world)] * 7
    found["gather_rows"] = torch.equal(D.gather_rows(local, 10, world), torch.arange(10) * 7)

    train, test = load_dataset("digits", None, 0)
    train, test = train.subset(300, 0), test.subset(150, 0)
    cfg = TrainConfig(data="digits").resolved()
    spec = _model_spec(cfg, train)
    torch.manual_seed(0)
    net = build_model(spec["name"], spec["num_classes"], **spec["kwargs"])

    # the refresh: the same clusters as one process on the rank-ordered rows, seeded alike
    k, n = 2, len(train)
    gen = torch.Generator().manual_seed(5)
    got = D.sharded_refresh(net, train, k=k, iters=20, alpha=12.5, device=torch.device("cpu"), generator=gen,
                            timer=Timer("cpu"), world=world)
    order = torch.cat([D.rows(n, D.World(r, size, active=True)) for r in range(size)])
    feats = torch.cat([embed(net, train.x[D.rows(n, D.World(r, size, active=True))], "cpu") for r in range(size)])
    labels, centers = clustr_fast.kmeans_per_group(feats, train.y[order], k, max_iter=20,
                                                   generator=torch.Generator().manual_seed(5))
    assign = torch.empty_like(labels)
    assign[order] = labels
    variance = clustr_fast.cluster_variance(feats, centers, labels)
    ref = Clustering(assign, centers, torch.arange(centers.shape[0]) // k, variance)
    found["refresh_assign"] = torch.equal(got.assign, ref.assign)
    found["refresh_centers"] = float((got.centers - ref.centers).abs().max())
    found["refresh_variance"] = abs(float(got.variance) / float(ref.variance) - 1)
    in_order = Clustering(labels, centers, ref.center_classes, variance)
    found["refresh_loss"] = abs(got.loss - full_magnet_loss(feats, in_order, 12.5))
    states = D.all_gather(gen.get_state(), world)       # the shared generator advanced alike
    found["generator_alike"] = all(torch.equal(s, states[0]) for s in states)

    # the test accuracy, sharded by batches: the one-process fraction
    clf = ClusterClassifier(net, _head(got, 10, None), "clustr", 10)
    found["accuracy"] = (accuracy(clf, test.x, test.y, "cpu", batch_size=32, world=world),
                         accuracy(clf, test.x, test.y, "cpu", batch_size=32))

    # evaluation, sharded by batches: attacks and certificates equal one process's, sample by sample
    xs, ys = test.x[:40], test.y[:40]
    kw = dict(eps=0.05, batch_size=8, steps=3, restarts=2, clip=(0.0, 1.0), seed=1)
    (acc_s, ok_s), (acc_1, ok_1) = E.sharded_robust_accuracy(clf, xs, ys, world=world, **kw), robust_accuracy(clf, xs, ys, **kw)
    found["robust"] = acc_s == acc_1 and torch.equal(ok_s, ok_1)
    cert_s, cert_1 = E.sharded_certify(clf, xs, ys, batch_size=16, world=world), certify(clf, xs, ys, batch_size=16)
    found["certify"] = all(torch.equal(getattr(cert_s, f), getattr(cert_1, f)) for f in ("radii", "radii_paper", "pred", "correct")) \
        and (cert_s.lipschitz, cert_s.kind, cert_s.soft_agreement) == (cert_1.lipschitz, cert_1.kind, cert_1.soft_agreement)
    kw = dict(steps=3, restarts=1, clip=(0.0, 1.0), seed=0, batch_size=4)
    found["attack_certified"] = (E.sharded_attack_certified(clf, xs, ys, cert_1, world=world, **kw),
                                 attack_certified(clf, xs, ys, cert_1, **kw))

    # the global batch variance: rank r's gradient is that of the sum of every rank's loss
    def batch(r):
        g = torch.Generator().manual_seed(100 + r)
        m = 3 + r
        return torch.randn(m * 4, 5, generator=g, dtype=torch.float64), torch.arange(m).repeat_interleave(4), \
            torch.arange(m) % 2

    f, ids, classes = batch(rank)
    leaf = f.clone().requires_grad_(True)
    loss = clustr_fast.magnet_loss_batch(global_variance_scaled(leaf, ids, classes.shape[0], world), ids, classes,
                                         alpha=1.0, variance=1.0, reduction="none").mean()
    loss.backward()
    every = [batch(r) for r in range(size)]
    leaves = [b[0].clone().requires_grad_(True) for b in every]
    sq = sum((lf - clustr_fast.cluster_means(lf, b[1], b[2].shape[0])[0][b[1]]).pow(2).sum()
             for lf, b in zip(leaves, every))
    var = sq / (sum(b[0].shape[0] for b in every) - 1)
    total = sum(clustr_fast.magnet_loss_batch(lf / var.sqrt(), b[1], b[2], alpha=1.0, variance=1.0,
                                              reduction="none").mean() for lf, b in zip(leaves, every))
    total.backward()
    found["global_variance_grad"] = float((leaf.grad - leaves[rank].grad).abs().max())
    found["global_variance_loss"] = abs(float(loss) - float(clustr_fast.magnet_loss_batch(
        every[rank][0] / var.detach().sqrt(), ids, classes, alpha=1.0, variance=1.0)))

    # the sampler's losses: every rank records every rank's, in rank order
    idx, val = D.gather_losses(torch.tensor([rank, 10 + rank]), torch.tensor([0.5, 1.5]) + rank, 4, world)
    found["losses"] = (idx.tolist(), val.tolist())
    found["mean_stats"] = D.mean_stats({"train_loss": float(rank), "steps": 3}, ("train_loss",), world)
    return found


def test_sharded_pieces_equal_one_process_on_two_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    init_file = tmp_path / "rendezvous"
    procs = [ctx.Process(target=_pieces, args=(r, 2, str(init_file), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + PIECES_S
    try:
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=10)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, found in enumerate(results):
        assert found["perm_covers"] and found["perm_equal_steps"] and found["batches_cover"], r
        assert found["gather_rows"], r
        assert found["refresh_assign"], r
        assert found["refresh_centers"] < 1e-4 and found["refresh_variance"] < 1e-5, found
        assert found["refresh_loss"] < 1e-4 * max(1.0, abs(results[0]["refresh_loss"])), found
        assert found["generator_alike"], r
        sharded, single = found["accuracy"]
        assert sharded == single and 0.0 <= single <= 1.0
        assert found["robust"] and found["certify"], r
        sharded, single = found["attack_certified"]
        assert sharded == single and single[0] > 4, found["attack_certified"]    # more than one batch attacked
        assert found["global_variance_grad"] < 1e-12 and found["global_variance_loss"] < 1e-12, found
        assert found["losses"] == ([0, 10, 1, 11], [0.5, 1.5, 1.5, 2.5])
        assert found["mean_stats"] == {"train_loss": 0.5, "steps": 3}
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert not math.isnan(results[0]["refresh_centers"])
