"""Does the default detector's score keep growing with the perturbation? Per threat family and budget (issue 14).

The default pipeline on PBMC3k (Seurat labels, the helpers of ``threats.py``): ``preprocess``,
``split``, ``train_classifier``, PGD at eps 0.1 (the seed threat), ``train_detector``, all with the
seed. Then, on the held-out test cells only, budget sweeps of several threat families, each cell
attacked with the same ``random_state`` at every budget:

- PGD in scaled space, all genes (eps in scaled units; the seed step, 0.02 x 10 steps, up to eps 0.2,
  beyond it ``2.5 * eps / 10`` as in the other spaces, or every budget above 0.2 gives the same layer);
- PGD in log space on the genes a cell expresses (``space='log', constraint='expressed'``, log units);
- PGD on the counts of expressed genes (``space='counts', constraint='counts'``, UMI per gene);
- ``sad.tl.InsideCountChecks`` (the count attacker who keeps the count checks silent, UMI per gene);
- one gene per cell set to +k in scaled space (the clip is 10: k = 20 is beyond it);
- the same gene raised by m UMI in count space (the cell stays on its count lattice).

The single gene is, per cell, the one whose increase raises the classifier's loss fastest (largest
positive input gradient on the clean cell), the same at every budget.

Per threat and budget: flip rate; median, 10th and 90th percentile of ``.obs['sad_score_<layer>']``
(``sad.tl.detect``); the share flagged; ``evasion``, the share flipped and not flagged; the share whose score comes from a plausibility rule
(``rule``), from a count check (``count``) or from the learned layer; the median number of
violations of the rule/count-scored cells and the median excess of the rule-scored ones (how far in
log units their entries lie outside the range counts can produce; the score is
``1 + log1p(violations) + log1p(excess)``); the share of
learned-scored cells at >= 0.999 (saturated); and ``nondec``, the share of cells whose score did not
decrease from the previous budget of the sweep (the clean cell before the first). The same for the
learned probability alone (``AdversarialDetector.explain_arrays(...).learned``, whatever the rules
say): its median, percentiles and maximum, the share at or above the threshold, the share >= 0.999,
``nondec``. The median and ``nondec`` of two unbounded input-consistency meta-features: the log PCA
residual (``R``) and the log distance to the nearest clean training cell (``K``). And the learned
layer's ceiling: the residual detector's largest probability on the unit sphere of its
(L2-normalized) triplet embedding, i.e. over every possible input.

Usage::

    python benchmarks/score_growth.py --threads 1             # seed 0
    python benchmarks/score_growth.py --seeds 0 1 2 3 4 --threads 1   # and the mean over seeds
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from threats import benchmark_parser, prepare, quiet, read_pbmc3k  # benchmarks/ is on sys.path when this script runs

import scadversarial as sad
from scadversarial.attacks.whitebox import DEFAULT_STEPS, SCALED_ALPHA, STEP_SCALE
from scadversarial.detection import CHECKS, RULES
from scadversarial.tl._input import classifier_input
from scadversarial.tl._space import other_counts, space_model, to_scaled

TRAIN_EPS = 0.1  # the seed threat the detector is trained on (PGD, scaled space)
SCALED_EPS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # scaled units, all genes
LOG_EPS = (0.05, 0.1, 0.25, 0.5, 1.0)  # log units, expressed genes
UMI_EPS = (1.0, 2.0, 3.0, 5.0)  # UMI per expressed gene
INSIDE_EPS = (1.0, 2.0, 3.0)  # UMI per expressed gene, count checks kept silent
GENE_K = (1.0, 2.0, 5.0, 10.0, 20.0)  # scaled value of the one gene; the classifier clips at 10
GENE_UMI = (1, 3, 10, 30, 100, 300)  # UMI added to the one gene
SATURATED = 0.999  # a learned probability this close to 1 no longer ranks cells
CEILING_STARTS = 1024  # random starts of the ascent on the embedding sphere (the learned layer's ceiling)
CEILING_STEPS = 300  # Adam steps of that ascent: on PBMC3k seed 0 its maximum is the same at 100, 300 and 1,000
CEILING_LR = 0.05  # Adam's step on the unit sphere's coordinates
N_RULES = len(RULES)  # the first columns of the check counts are the rules, then the count checks
assert CHECKS[:N_RULES] == RULES


@dataclass(frozen=True)
class Step:
    """One budget of a sweep: its threat family, budget and the layer (scaled) holding it."""

    threat: str
    eps: float
    layer: str | None  # None: the clean cells (X)


def _grad_gene(c, clf) -> np.ndarray:
    """Per cell, the gene whose increase raises the loss of its clean prediction fastest."""
    X = torch.as_tensor(classifier_input(c, clf), dtype=torch.float32).requires_grad_(requires_grad=True)
    pred = pd.Categorical(c.obs["sad_pred"].astype(str), categories=clf.classes).codes
    clf.eval()
    loss = torch.nn.functional.cross_entropy(clf(X), torch.as_tensor(np.asarray(pred, dtype=np.int64)))
    (g,) = torch.autograd.grad(loss, X)
    return g.numpy().argmax(1)


def _single_gene_layers(c, clf, steps: list[Step]) -> None:
    """Layers of the single-gene threats: the gene set to +k (scaled) or raised by m UMI (counts, then scaled)."""
    gene = _grad_gene(c, clf)
    rows = np.arange(c.n_obs)
    X = classifier_input(c, clf)
    for k in GENE_K:
        Z = X.copy()
        Z[rows, gene] = k
        name = f"bench_gene_scaled_{k:g}"
        c.layers[name] = Z
        steps.append(Step("one gene, scaled +k", k, name))
    counts = c.layers["counts"]
    counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float32)
    other = other_counts(c, clf.var_names)
    view = space_model(c, clf, "counts")
    for m in GENE_UMI:
        C = counts.copy()
        C[rows, gene] += m
        name = f"bench_gene_umi_{m}"
        c.layers[name] = to_scaled(view, C, other)  # the transform detect applies to a count-space layer
        steps.append(Step("one gene, +m UMI", float(m), name))


def _attack_sweeps(c, det, seed: int) -> list[Step]:
    """Attack the test cells at every budget of every family; the steps in sweep order."""
    steps: list[Step] = []
    # the seed step (0.02 scaled units, 10 steps) cannot reach a larger budget: there the step the other spaces use
    reach = SCALED_ALPHA * DEFAULT_STEPS["pgd"]
    for e in (e for e in SCALED_EPS if e > reach):
        key = f"bench_scaled_big{e:g}"
        sad.tl.attack(c, "pgd", eps=e, alpha=STEP_SCALE * e / DEFAULT_STEPS["pgd"], random_state=seed, key_added=key)
        steps.append(Step("PGD scaled, all genes", e, str(sad.get.attack_record(c, key)["layers"][0])))
    fams = (
        ("PGD scaled, all genes", "bench_scaled", tuple(e for e in SCALED_EPS if e <= reach), {}),
        ("PGD log, expressed", "bench_log", LOG_EPS, {"space": "log", "constraint": "expressed"}),
        (
            "PGD counts, expressed",
            "bench_counts",
            UMI_EPS,
            {"space": "counts", "constraint": "counts", "mask": "counts"},
        ),
    )
    for name, key, eps, kw in fams:
        sad.tl.attack(c, "pgd", eps=eps, random_state=seed, key_added=key, **kw)
        layers = sad.get.attack_record(c, key)["layers"]
        steps += [Step(name, e, str(lay)) for e, lay in zip(eps, layers, strict=True)]
    for e in INSIDE_EPS:
        threat = sad.tl.InsideCountChecks(det, eps=e, key_added=f"bench_inside_{e:g}", random_state=seed)
        (layer,) = threat(c)
        steps.append(Step("counts inside the checks", e, layer))
    _single_gene_layers(c, sad.get.model(c, "classifier"), steps)
    return steps


def learned_ceiling(det, seed: int) -> float:
    """The largest learned probability any input can get: the residual detector's maximum on the embedding sphere.

    The triplet embedding is L2-normalized, so the learned logit is a continuous function on the unit
    sphere and has a maximum below 1 whatever the perturbation; estimated by projected gradient ascent
    from random starts.
    """
    if det.triplet is None:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(CEILING_STARTS, det.config["triplet_dim"], generator=gen).requires_grad_(requires_grad=True)
    opt = torch.optim.Adam([z], lr=CEILING_LR)
    det.eval()
    for _ in range(CEILING_STEPS):
        loss = -det.detector(torch.nn.functional.normalize(z, dim=1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(torch.sigmoid(det.detector(torch.nn.functional.normalize(z, dim=1))).max())


def _q(v: np.ndarray, q: float) -> float:
    return float(np.quantile(v, q)) if len(v) else float("nan")


def measure(c, det, steps: list[Step]) -> pd.DataFrame:
    """Score every layer with ``sad.tl.detect`` and the learned layer alone; one row per step."""
    clf = sad.get.model(c, "classifier")
    clean_pred = c.obs["sad_pred"].astype(str).to_numpy()
    thr = float(det.threshold)
    names = list(det.feature_names)
    # the input-consistency features: unbounded distances of the cell to the clean reference (a growth candidate)
    ref_cols = {k: names.index(k) for k in ("log_pca_residual", "log_knn_distance") if k in names}
    rows, prev_score, prev_learned, prev_ref = [], {}, {}, {}
    threats = list(dict.fromkeys(s.threat for s in steps))
    for threat in threats:
        sweep = [Step(threat, 0.0, None), *sorted((s for s in steps if s.threat == threat), key=lambda s: s.eps)]
        for s in sweep:
            sfx = "" if s.layer is None else f"_{s.layer}"
            sad.tl.detect(c, s.layer)
            score = c.obs[f"sad_score{sfx}"].to_numpy(np.float64)
            flagged = c.obs[f"sad_adversarial{sfx}"].to_numpy(bool)
            rep = det.explain_arrays(classifier_input(c, det, s.layer), progress_bar=False)
            # detect and explain_arrays must agree, or the learned column describes another score
            assert np.allclose(score, rep.score, atol=1e-5), f"{threat} {s.eps}: detect and explain_arrays differ"
            viol = rep.rule_counts.sum(1)
            rule = rep.rule_counts[:, :N_RULES].sum(1) > 0
            count = (viol > 0) & ~rule
            learned_src = viol == 0
            lp = rep.learned.astype(np.float64)
            logits = clf.predict_arrays(classifier_input(c, clf, s.layer))[0]
            pred = np.asarray(clf.classes)[logits.argmax(1)]
            row = {
                "threat": threat,
                "eps": s.eps,
                "flip": float(np.mean(pred != clean_pred)),
                "med": float(np.median(score)),
                "p10": _q(score, 0.1),
                "p90": _q(score, 0.9),
                "max": float(score.max()),
                "flagged": float(flagged.mean()),
                "evasion": float(np.mean((pred != clean_pred) & ~flagged)),
                "rule": float(rule.mean()),
                "count": float(count.mean()),
                "learned": float(learned_src.mean()),
                "viol_med": float(np.median(viol[viol > 0])) if (viol > 0).any() else 0.0,
                "exc_med": float(np.median(rep.excess[rule])) if rule.any() else 0.0,
                "sat": float((score[learned_src] >= SATURATED).mean()) if learned_src.any() else float("nan"),
                "nondec": float(np.mean(score >= prev_score[threat])) if threat in prev_score else float("nan"),
                "L_med": float(np.median(lp)),
                "L_p10": _q(lp, 0.1),
                "L_p90": _q(lp, 0.9),
                "L_max": float(lp.max()),
                "L_flag": float((lp >= thr).mean()),
                "L_sat": float((lp >= SATURATED).mean()),
                "L_nondec": float(np.mean(lp >= prev_learned[threat])) if threat in prev_learned else float("nan"),
            }
            for k, j in ref_cols.items():
                v = rep.meta[:, j].astype(np.float64)
                tag = "R" if k == "log_pca_residual" else "K"
                row[f"{tag}_med"] = float(np.median(v))
                row[f"{tag}_nondec"] = (
                    float(np.mean(v >= prev_ref[threat, k])) if (threat, k) in prev_ref else float("nan")
                )
                prev_ref[threat, k] = v
            rows.append(row)
            prev_score[threat], prev_learned[threat] = score, lp
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SeedRun:
    """One seed's table and its detector's learned threshold, threshold method and ceiling."""

    table: pd.DataFrame
    threshold: float
    method: str
    ceiling: float
    n_test: int


def run_one(raw, seed: int) -> SeedRun:
    """The default pipeline, then the sweeps on the test cells."""
    a, key = prepare(raw, "seurat", seed)
    sad.tl.train_classifier(a, key, random_state=seed)
    sad.tl.attack(a, "pgd", eps=TRAIN_EPS, random_state=seed)
    sad.tl.train_detector(a, random_state=seed)
    det = sad.get.model(a, "detector")
    method = str(sad.get.record(a, "detector")["metrics"].get("threshold_method", "?"))
    c = a[a.obs["sad_split"].astype(str).to_numpy() == "test"].copy()
    tab = measure(c, det, _attack_sweeps(c, det, seed)).assign(seed=seed)
    return SeedRun(tab, float(det.threshold), method, learned_ceiling(det, seed), c.n_obs)


SCORE_COLS = [
    "flip",
    "med",
    "p10",
    "p90",
    "max",
    "flagged",
    "evasion",
    "rule",
    "count",
    "learned",
    "viol_med",
    "exc_med",
    "sat",
    "nondec",
]
LEARNED_COLS = ["L_med", "L_p10", "L_p90", "L_max", "L_flag", "L_sat", "L_nondec", "R_med", "R_nondec", "K_med"]
LEARNED_COLS += ["K_nondec"]
POOLED_COLS = [
    "flip",
    "med",
    "flagged",
    "evasion",
    "rule",
    "count",
    "learned",
    "sat",
    "nondec",
    "L_med",
    "L_flag",
    "L_sat",
]
POOLED_COLS += ["L_nondec", "R_nondec", "K_nondec"]


def main(argv=None) -> int:
    args = benchmark_parser(__doc__, [0]).parse_args(argv)
    quiet(args.threads)
    raw = read_pbmc3k(args.data)
    if raw is None:
        return 1
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    pd.set_option("display.max_columns", 30)
    print("score: sad_score (rule/count-scored cells: 1 + log1p(violations) + log1p(excess); else the learned")
    print("probability); evasion: flipped and not flagged; rule/count/learned: where the score comes from;")
    print("viol_med: median violations of rule/count-scored cells; exc_med: median excess of rule-scored cells;")
    print(f"sat: learned-scored cells with score >= {SATURATED}; nondec: cells whose score did not drop from the")
    print("previous budget (eps 0: clean; ties count as not dropping); L_*: the learned probability alone, whatever")
    print("the rules say; ceiling: the largest learned probability on the embedding sphere (any input);")
    print("R_*, K_*: the meta-features log_pca_residual and log_knn_distance (distance to the clean reference)")
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        r = run_one(raw, seed)
        runs.append(r)
        dt = time.perf_counter() - t0
        print(
            f"\n=== seed {seed}: {r.n_test} held-out test cells, learned threshold {r.threshold:.4f} ({r.method}), "
            f"ceiling {r.ceiling:.4f}, {dt:.0f} s ==="
        )
        tab = r.table.set_index(["threat", "eps"])
        print(tab[SCORE_COLS].to_string(float_format="{:.3f}".format))
        print()
        print(tab[LEARNED_COLS].to_string(float_format="{:.4f}".format))
    if len(runs) > 1:
        print(f"\n=== mean over seeds {args.seeds} ===")
        print("seed  threshold  method  ceiling")
        for seed, r in zip(args.seeds, runs, strict=True):
            print(f"{seed:4d}  {r.threshold:9.4f}  {r.method}  {r.ceiling:.4f}")
        pooled = pd.concat([r.table for r in runs]).groupby(["threat", "eps"], sort=False)[POOLED_COLS].mean()
        print(pooled.to_string(float_format="{:.3f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
