"""The paper's synthetic experiment and digits, end to end, on the CPU (``clustr-fast demo``).

(1) Synthetic 2-D sets (moons, rings), 3-layer MLP with 20 hidden units, K = 1:
    Magnet loss from random initialisation vs ClusTR (cross-entropy warm start),
    with exact certified-accuracy curves (Theorem 1, sound and paper mode).
(2) Digits (8x8), small CNN: cross-entropy, ClusTR and ClusTR+QTRADES, each with
    clean accuracy, PGD (CE on log-space logits, restarts), the official-loss
    diagnostic, the accuracy-vs-eps curve, certified accuracy and the sanity checks.
(3) Digits, Lipschitz-bounded ClusTR (``train_lipschitz_clustr``: lip-mlp with the
    certified-margin term), its certified accuracy beside the CNN ClusTR model's at the
    same L2 radii (``CERTIFIED_RADII``), with the certified-vs-attacked check.

``run_demo(options, out_dir)`` trains and evaluates, writes the PNG plots into
``out_dir`` and returns the report; ``tables`` and ``markdown`` render it.
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch

from .robust.certify import certified_accuracy, radius_grid
from .robust.evaluate import certificate_report, full_evaluation
from .robust.plots import plot_certified, plot_eps_curves
from .robust.sanity import majority_rate

SYNTHETIC_SETS = ("moons", "rings")
SYNTHETIC_METHODS = ("magnet", "clustr")
DIGITS_METHODS = ("ce", "clustr", "clustr-qtrades")
DEFAULT_EPS_CURVE = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
CERTIFIED_RADII = (0.1, 0.3, 0.5)


@dataclasses.dataclass
class DemoOptions:
    """What the demo runs; each field is the ``clustr-fast demo`` flag of the same name.

    ``sets``: synthetic sets (of ``SYNTHETIC_SETS``); ``digits``: run the digits part;
    ``eps``, ``steps``, ``restarts``: the digits PGD table; ``eps_curve``: digits radii of
    the accuracy-vs-eps curve; ``*_epochs``: epochs per phase (None: the training
    defaults); ``train_size``/``test_size``: random subsets; ``sanity_size``: samples of
    the costly sanity checks; ``lipschitz``: run part (3) (with ``digits``), training the
    Lipschitz model for ``lip_steps`` full-batch steps; ``certified_radii``: the L2 radii of the
    certified-accuracy table; ``real_data``: run the real-data row (``demo_real``), the certified
    recipe for ``real_epochs`` epochs (on ``train_size`` / ``test_size`` images when given).
    """
    sets: tuple = SYNTHETIC_SETS
    digits: bool = True
    eps: float = 0.1
    steps: int = 20
    restarts: int = 10
    eps_curve: tuple = DEFAULT_EPS_CURVE
    synthetic_epochs: int | None = None
    digits_epochs: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    sanity_size: int = 200
    lipschitz: bool = True
    lip_steps: int = 300
    certified_radii: tuple = CERTIFIED_RADII
    real_data: bool = True
    real_epochs: int = 3
    seed: int = 0


def _train(data, method, options, epochs):
    from .train import TrainConfig, fit

    kw = {}
    if epochs is not None:
        kw = dict(epochs_ce=0 if method == "magnet" else epochs,
                  epochs_magnet=0 if method == "ce" else (2 * epochs if method == "magnet" else epochs))
    if data in SYNTHETIC_SETS:
        kw.update(k=1, model="mlp")
    cfg = TrainConfig(data=data, method=method, seed=options.seed, train_size=options.train_size,
                      test_size=options.test_size, **kw)
    return fit(cfg)


def _test_set(data, options):
    from .data import load_dataset

    _, test = load_dataset(data, seed=options.seed)
    if options.test_size is not None and options.test_size < len(test):
        test = test.subset(options.test_size, options.seed)
    return test


def synthetic(options, out_dir, log):
    """``{set: {method: {...}}}`` and one certified-accuracy plot per set."""
    report = {}
    for s in options.sets:
        if s not in SYNTHETIC_SETS:
            raise ValueError(f"demo: `sets`: unknown synthetic set {s!r}; choose from {', '.join(SYNTHETIC_SETS)}")
    for s in options.sets:
        test = _test_set(s, options)
        trained, certs = {}, {}
        for method in SYNTHETIC_METHODS:
            t0 = time.perf_counter()
            res = _train(s, method, options, options.synthetic_epochs)
            clf = res.classifier
            certs[method] = certificate_report(clf, test.x, test.y, attack_steps=options.steps, seed=options.seed)
            trained[method] = (clf, time.perf_counter() - t0)
        # one radius grid per set, so the two methods' curves share their x axis
        rmax = max(radius_grid(c["_certificate"].radii, c["_certificate"].correct)[-1] for c in certs.values())
        grid = [rmax * i / 49 for i in range(50)]
        report[s] = {}
        for method, (clf, seconds) in trained.items():
            cert = certs[method].pop("_certificate")
            with torch.no_grad():
                clean = float((clf.predict(test.x) == test.y).float().mean())
            report[s][method] = {
                "clean_acc": clean,
                "radii": grid,
                "certified_acc": certified_accuracy(cert.radii, cert.correct, grid),
                "certified_acc_paper": certified_accuracy(cert.radii_paper, cert.correct, grid),
                "lipschitz": cert.lipschitz,
                "median_radius": certs[method]["median_radius"],
                "certified_and_attacked": certs[method]["certified_and_attacked"],
                "seconds": seconds,
            }
            log(f"  {s:6s} {method:7s} clean {100 * clean:6.2f}%  L <= {cert.lipschitz:8.3f}  "
                f"median radius {certs[method]['median_radius']:.4f}  ({seconds:.1f} s)")
        curves = {}
        for method, r in report[s].items():
            curves[f"{method} (sound)"] = (grid, r["certified_acc"])
            curves[f"{method} (paper shortcut)"] = (grid, r["certified_acc_paper"])
        plot_certified(curves, os.path.join(out_dir, f"synthetic_{s}_certified.png"),
                       title=f"{s}: Magnet from scratch vs ClusTR (K=1)")
    return report


def digits(options, out_dir, log):
    """``{method: {...}}`` for cross-entropy, ClusTR and ClusTR+QTRADES on digits."""
    report, curves, cert_curves = {}, {}, {}
    test = _test_set("digits", options)
    for method in DIGITS_METHODS:
        t0 = time.perf_counter()
        clf = _train("digits", method, options, options.digits_epochs).classifier
        ev = full_evaluation(clf, test.x, test.y, num_classes=test.num_classes, eps=options.eps, attack="pgd",
                             steps=options.steps, restarts=options.restarts, eps_values=options.eps_curve,
                             certified_radii=options.certified_radii, sanity_size=options.sanity_size,
                             seed=options.seed)
        cert = ev["certificate"]
        report[method] = {
            "clean_acc": ev["clean_acc"],
            "pgd_acc": ev["attack_acc"],
            "margin_acc": ev["margin_acc"],
            "worst_case_acc": ev["worst_case_acc"],
            "pgd_acc_official_loss": ev["official_loss_acc"],
            "eps": options.eps,
            "eps_curve": ev["eps_curve"],
            "certified_radii": cert["radii"],
            "certified_acc": cert["certified_acc"],
            "certified_at": cert["certified_at"],
            "certified_kind": cert["kind"],
            "lipschitz": cert["lipschitz"],
            "median_radius": cert["median_radius"],
            "certified_and_attacked": cert["certified_and_attacked"],
            "sanity": ev["sanity"],
            "seconds": time.perf_counter() - t0,
        }
        curves[method] = ev["eps_curve"]
        cert_curves[method] = (cert["radii"], cert["certified_acc"])
        log(f"  digits {method:14s} clean {100 * ev['clean_acc']:6.2f}%  PGD {100 * ev['attack_acc']:6.2f}%  "
            f"margin {100 * ev['margin_acc']:6.2f}%  "
            f"official-loss {100 * ev['official_loss_acc']:6.2f}%  ({report[method]['seconds']:.1f} s)")
    plot_eps_curves(curves, os.path.join(out_dir, "digits_eps_curve.png"),
                    chance=majority_rate(test.y, test.num_classes),
                    title=f"digits: accuracy under PGD-{options.steps} (CE, log-space logits)")
    plot_certified(cert_curves, os.path.join(out_dir, "digits_certified.png"), title="digits: certified accuracy")
    return report


def lipschitz_digits(options, out_dir, log, cnn=None):
    """The Lipschitz ClusTR model on digits (``train_lipschitz_clustr``, its defaults but
    ``options.lip_steps``): ``{"clean_acc", "certified_at", "radii", "certified_acc", ...}``, and
    ``digits_lipschitz_certified.png``, its certified curve beside the CNN ClusTR model's
    (``cnn``: that model's report entry, when the digits part ran)."""
    from .data import load_dataset
    from .train.certified_margin import train_lipschitz_clustr

    train, _ = load_dataset("digits", seed=options.seed)
    if options.train_size is not None:            # the subset the CNN models train on (fit's)
        train = train.subset(options.train_size, options.seed)
    test = _test_set("digits", options)
    res = train_lipschitz_clustr(train.x, train.y, num_classes=test.num_classes, steps=options.lip_steps,
                                 seed=options.seed)
    clf = res.classifier
    cert = certificate_report(clf, test.x, test.y, at_radii=options.certified_radii, attack_steps=options.steps,
                              seed=options.seed)
    cert.pop("_certificate")
    with torch.no_grad():
        clean = float((clf.predict(test.x) == test.y).float().mean())
    report = {
        "model": "lip-mlp",
        "steps": options.lip_steps,
        "clean_acc": clean,
        "certified_at": cert["certified_at"],
        "certified_radii": cert["radii"],
        "certified_acc": cert["certified_acc"],
        "lipschitz": cert["lipschitz"],
        "median_radius": cert["median_radius"],
        "certified_attacked": cert["certified_attacked"],
        "certified_and_attacked": cert["certified_and_attacked"],
        "train_seconds": res.seconds,
        "seconds": res.seconds + cert["seconds"],
    }
    at = ", ".join(f"{100 * a:.1f}% at {r:g}" for r, a in cert["certified_at"])
    log(f"  digits lip-mlp ClusTR  clean {100 * clean:6.2f}%  L <= {res.lipschitz:.3g}  certified {at}  "
        f"({report['seconds']:.1f} s)")
    top = report["certified_radii"][-1]
    curves = {"Lipschitz ClusTR (lip-mlp)": (report["certified_radii"], report["certified_acc"])}
    if cnn is not None:
        # past the end of its own grid the CNN certifies nothing: extend its curve at 0 to the same axis
        radii, acc = list(cnn["certified_radii"]), list(cnn["certified_acc"])
        if radii[-1] < top:
            radii.append(top)
            acc.append(0.0)
        curves["CNN ClusTR"] = (radii, acc)
    plot_certified(curves, os.path.join(out_dir, "digits_lipschitz_certified.png"),
                   title="digits: certified accuracy, Lipschitz vs CNN ClusTR")
    return report


def _pct(v):
    return f"{100 * v:.1f}"


def tables(report, options) -> str:
    """The markdown tables of ``report``."""
    lines = []
    if report.get("synthetic"):
        lines += ["### Synthetic 2-D sets (MLP 2-20-20, K = 1): certified accuracy (sound / paper shortcut)", "",
                  "| set | method | clean % | L bound | median radius | cert. % at r1 | cert. % at r2 | cert. % at r3 |",
                  "|---|---|---|---|---|---|---|---|"]
        for s, methods in report["synthetic"].items():
            grid = next(iter(methods.values()))["radii"]
            picks = [len(grid) // 8, len(grid) // 4, len(grid) // 2]
            for m, r in methods.items():
                cells = [f"{_pct(r['certified_acc'][i])} / {_pct(r['certified_acc_paper'][i])}" for i in picks]
                lines.append(f"| {s} | {m} | {_pct(r['clean_acc'])} | {r['lipschitz']:.3g} | "
                             f"{r['median_radius']:.3g} | " + " | ".join(cells) + " |")
            lines.append(f"| | (radii r1, r2, r3 = {', '.join(f'{grid[i]:.3g}' for i in picks)}) | | | | | | |")
        lines.append("")
    if report.get("digits"):
        d = report["digits"]
        eps = next(iter(d.values()))["eps"]
        lines += [f"### Digits (small CNN), L-inf eps = {eps:.3g}, "
                  f"PGD-{options.steps} x {options.restarts} restarts", "",
                  "| method | clean % | PGD % (log-space CE) | margin (top-3 targets) % | worst case % | "
                  "official-loss % (diagnostic) | cert. % at r = median radius | certified & attacked | "
                  "sanity | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in d.items():
            ok = "ok" if r["sanity"]["passed"] else "FAILED"
            grid = r["certified_radii"]
            i = min(range(len(grid)), key=lambda j: abs(grid[j] - r["median_radius"]))
            lines.append(f"| {m} | {_pct(r['clean_acc'])} | {_pct(r['pgd_acc'])} | {_pct(r['margin_acc'])} | "
                         f"{_pct(r['worst_case_acc'])} | {_pct(r['pgd_acc_official_loss'])} | "
                         f"{_pct(r['certified_acc'][i])} (r = {grid[i]:.3g}) | {r['certified_and_attacked']} | "
                         f"{ok} | {r['seconds']:.0f} |")
        lines.append("")
    if report.get("lipschitz"):
        lines += _certified_table(report, options)
    if report.get("real_data"):
        from .demo_real import real_data_table

        lines += real_data_table(report["real_data"])
    return "\n".join(lines)


def _certified_table(report, options):
    """Clean and certified accuracy (L2) of the CNN ClusTR model and the Lipschitz model."""
    radii = [r for r, _ in report["lipschitz"]["certified_at"]]
    rows = []
    if report.get("digits", {}).get("clustr"):
        rows.append(("CNN ClusTR (cnn)", report["digits"]["clustr"]))
    rows.append((f"Lipschitz ClusTR (lip-mlp, {report['lipschitz']['steps']} steps)", report["lipschitz"]))
    lines = ["### Digits: certified accuracy (L2, Theorem 1)", "",
             "| model | clean % | L bound | " + " | ".join(f"cert. % at r = {r:g}" for r in radii) +
             " | certified & attacked | seconds |",
             "|---|---|---|" + "---|" * len(radii) + "---|---|"]
    for name, r in rows:
        cells = " | ".join(_pct(a) for _, a in r["certified_at"])
        lines.append(f"| {name} | {_pct(r['clean_acc'])} | {r['lipschitz']:.3g} | {cells} | "
                     f"{r['certified_and_attacked']} | {r['seconds']:.0f} |")
    lines.append("")
    return lines


def _quiet(msg):
    pass


def run_demo(options: DemoOptions, out_dir: str, log=_quiet) -> dict:
    """Train and evaluate as ``options`` says; PNG plots go to ``out_dir``, progress lines to ``log``.

    Returns ``{"synthetic": {set: {method: ...}}, "digits": {method: ...}, "lipschitz": {...},
    "seconds", "threads"}``.
    """
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    report = {"synthetic": {}, "digits": {}, "lipschitz": {}}
    log("synthetic experiment (Magnet from scratch vs ClusTR, K=1):")
    report["synthetic"] = synthetic(options, out_dir, log)
    if options.digits:
        log(f"digits (eps {options.eps:.3g}, PGD-{options.steps}, {options.restarts} restarts):")
        report["digits"] = digits(options, out_dir, log)
        if options.lipschitz:
            log(f"digits, Lipschitz ClusTR (lip-mlp, certified margin, {options.lip_steps} steps):")
            report["lipschitz"] = lipschitz_digits(options, out_dir, log, cnn=report["digits"].get("clustr"))
    if options.real_data:
        from .demo_real import real_data_row

        log("real images (the certified recipe, shortened):")
        sizes = {k: v for k, v in (("train_size", options.train_size), ("test_size", options.test_size)) if v}
        report["real_data"] = real_data_row(epochs=options.real_epochs, seed=options.seed, log=log, **sizes)
    report["seconds"] = time.perf_counter() - t0
    report["threads"] = torch.get_num_threads()
    return report


def markdown(report, options: DemoOptions, plots) -> str:
    """``report.md``: the tables, the PNG files ``plots`` and how to read the numbers."""
    return ("# clustr-fast demo\n\n" + tables(report, options) + "\n"
            "Plots: " + ", ".join(plots) + ".\n\n"
            "PGD reads the log-space logits of `soft_cluster_logits`; the margin attack targets "
            "each of the 3 classes ranked highest (as AutoAttack's APGD-T), and the worst case "
            "counts the samples that survive it and PGD; the official-loss column "
            "(cross-entropy on raw probability sums) is a gradient-masking diagnostic, not a "
            "robustness number. Certified radii are L2 in input space (Theorem 1 with a "
            "product-of-spectral-norms Lipschitz bound); `certified & attacked` counts certified "
            "points an L2 PGD within their radius flipped (must be 0). The Lipschitz model's bound is "
            "the product of its layers' proven constants (AOL and SLL layers, 1 each); it is trained "
            "with the certified-margin term (docs/training.md).\n"
            f"\nTotal {report['seconds']:.0f} s on {report['threads']} threads.\n")
