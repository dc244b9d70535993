"""Scale benchmark (issue 16): cells/s, CPU s per cell and peak RSS per stage, 1e4 to 1e6 synthetic cells.

The counts are drawn from a negative-binomial model fitted per Seurat cell type to PBMC3k (13,714 genes,
~800 non-zeros per cell; per type and gene a mean per unit library size and a dispersion, per cell a type
and a library-size factor resampled from that type's cells), seeded, written by chunks of cells straight
into an ``.h5ad`` (CSR float32; generating 1e6 cells stays below 1 GiB) and cached under the temporary
directory, never in the repository. Each stage runs in its own subprocess, one thread, on cached files:

``preprocess``
    ``sad.pp.preprocess(adata, output='lognorm')`` on the counts read lazily (``read_elem_lazy``, blocks of
    10,000 cells, dask's synchronous scheduler); its CSR ``X``, ``.obs``, ``.var`` and ``.uns`` written
    block by block to the preprocessed file the next stages read.
``scanpy``
    scanpy's tutorial preprocessing in memory (``normalize_total``, ``log1p``, ``.raw``, 2,000 ``'seurat'``
    HVGs, ``scale(max_value=10)``), up to :data:`SCANPY_MAX_CELLS`: at 1e6 it cannot fit 8 GiB.
``train``
    ``sad.tl.train_classifier`` on the preprocessed file (backed), ``TrainingConfig(max_cells_per_epoch=...)``.
``attack``
    ``sad.tl.attack`` (PGD, one eps) on a 10,000-cell sample.
``detect``
    A detector trained (unmeasured) on a 5,000-cell PGD-attacked sample, then ``sad.tl.detect`` on all cells.

Peak RSS is the high-water mark (``VmHWM``) of the stage alone, reset (``/proc/self/clear_refs``) after its
set-up; ``loaded`` is the RSS then. CPU s counts all threads; cells/s is per wall-clock second (noisy on a
shared machine: CPU ms/cell is the steadier figure). The summary gives CPU per cell at the largest size
over that at 1e5, and whether every stage peaked at or below 8 GiB.

Usage (from the repository root)::

    python benchmarks/scale.py                            # 1e4, 1e5 and 1e6 cells, every stage
    python benchmarks/scale.py --cells 10000 --stages preprocess train
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch

import scadversarial as sad

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "tests" / "data" / "pbmc3k.h5ad"
SIZES = (10_000, 100_000, 1_000_000)
STAGES = ("preprocess", "scanpy", "train", "attack", "detect")
#: The issue's memory target per stage.
TARGET_GIB = 8.0
#: A stage past this RSS has missed the target anyway; it is stopped before it pushes the shared 24 GiB
#: machine (no swap) into the OOM killer, which could take other jobs.
RSS_ABORT_GIB = 12.0
#: Largest size of the ``scanpy`` stage: at 1e6 cells its in-memory counts alone are 6.4 GB, its float32
#: log-normalized copy (``.raw``) as much again and its dense scaled ``X`` 8 GB: it cannot fit 8 GiB.
SCANPY_MAX_CELLS = 100_000
#: Cells per dask block of the lazily read counts: a block of counts is ~64 MB of CSR at ~800 non-zeros per cell.
LAZY_ROWS = 10_000
#: Cells attacked (the issue's stage "attack on a 10k-cell sample").
ATTACK_CELLS = 10_000
#: PGD budget of the attack stage and of the detector's training attack (one eps: the cost is per eps).
ATTACK_EPS = 0.1
#: Cells the detector is trained on (attacked with PGD, then split): "a detector trained on a small sample".
DETECTOR_CELLS = 5_000
#: Cells drawn per training epoch: 50,000 is about the training split of 1e5 cells, so the 1e6 classifier
#: sees as many cells per epoch as the 1e5 one and training costs the same time and memory at any size.
MAX_CELLS_PER_EPOCH = 50_000
#: Epochs at most (``None``: ``TrainingConfig``'s default); the test of this script lowers it.
MAX_EPOCHS: int | None = None
#: Dispersion bounds of the fitted NB: below 1e-2 the NB is Poisson to within noise (and 1/phi stays a
#: moderate shape); above 10 the method-of-moments estimate comes from a handful of outlier cells.
PHI_MIN, PHI_MAX = 1e-2, 10.0
#: Cells generated per chunk: the dense means of a chunk (cells x 13,714 float32) stay ~55 MB.
GEN_CHUNK = 1000
#: Entries whose zero probability is at least this are drawn by inverse CDF from their uniform (small
#: counts, few steps); below it, by rejection (draw NB, redraw zeros: fewer than 2 draws on average).
P0_SPLIT = 0.5
#: Inverse-CDF steps before the few entries still unresolved (heavy tails) go to scipy's exact ppf.
CDF_STEPS = 32
#: Bump when the generator changes, so that stale cached files are not reused.
GEN_VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# synthetic counts


@dataclass(frozen=True)
class NBModel:
    """Negative-binomial counts per cell type: ``mu`` (types x genes, per unit library size), ``phi``."""

    mu: np.ndarray
    phi: np.ndarray
    freq: np.ndarray  # cell-type frequencies
    size_factors: tuple[np.ndarray, ...]  # per type, the library sizes of its cells / the type's mean
    genes: np.ndarray
    types: np.ndarray


def fit_nb(path: Path) -> NBModel:
    """Fit the per-type negative-binomial model to PBMC3k's counts (method of moments)."""
    a = sad.datasets.pbmc3k(path)
    C = a.X.tocsr().astype(np.float64)
    labels = a.obs["seurat_cell_type"].astype(str).to_numpy()
    types = np.unique(labels)
    mu = np.zeros((len(types), a.n_vars))
    phi = np.full((len(types), a.n_vars), PHI_MIN)
    sfs = []
    for i, t in enumerate(types):
        Ct = C[labels == t]
        lib = np.asarray(Ct.sum(1)).ravel()
        s = lib / lib.mean()
        N = Ct.multiply(1 / s[:, None]).tocsr()  # counts per unit library size
        m = np.asarray(N.mean(0)).ravel()
        var = np.asarray(N.multiply(N).mean(0)).ravel() - m**2
        var *= len(s) / max(len(s) - 1, 1)
        # Var(N) = mu * E[1/s] + mu^2 * phi for NB counts with mean s * mu
        with np.errstate(divide="ignore", invalid="ignore"):
            est = (var - m * np.mean(1 / s)) / m**2
        phi[i] = np.clip(np.nan_to_num(est, nan=PHI_MIN), PHI_MIN, PHI_MAX)
        mu[i] = m
        sfs.append(s)
    freq = np.array([(labels == t).mean() for t in types])
    return NBModel(mu=mu, phi=phi, freq=freq, size_factors=tuple(sfs), genes=a.var_names.to_numpy(), types=types)


def _draw_chunk(model: NBModel, n: int, rng: np.random.Generator):
    """``n`` cells of NB counts as a CSR float32 matrix, and their types."""
    from scipy.stats import nbinom

    t = rng.choice(len(model.types), size=n, p=model.freq)
    s = np.empty(n, dtype=np.float32)
    for k, sf in enumerate(model.size_factors):
        s[t == k] = rng.choice(sf, size=int((t == k).sum()))
    m = model.mu[t].astype(np.float32) * s[:, None]
    phi = model.phi[t].astype(np.float32)
    r = 1 / phi
    # P(X = 0) = (1 + m phi)^(-1/phi); an entry is non-zero when its uniform exceeds it
    p0 = np.exp(-np.log1p(m * phi) * r)
    u = rng.random(m.shape, dtype=np.float32)
    rows, cols = np.nonzero(u > p0)
    m_e, r_e, p0_e, u_e = m[rows, cols], r[rows, cols], p0[rows, cols], u[rows, cols]
    del m, phi, r, p0, u
    q_e = m_e / (m_e + r_e)  # failure probability of numpy's parametrization, p = r / (r + m)
    counts = np.zeros(len(rows), dtype=np.float32)
    # low means: inverse CDF from the entry's own uniform, k = 1, 2, ...
    low = np.flatnonzero(p0_e >= P0_SPLIT)
    pmf = p0_e[low].astype(np.float64)
    cdf = pmf.copy()
    active = np.arange(len(low))
    for k in range(1, CDF_STEPS + 1):
        pmf[active] *= (k - 1 + r_e[low[active]]) / k * q_e[low[active]]
        cdf[active] += pmf[active]
        done = cdf[active] >= u_e[low[active]]
        counts[low[active[done]]] = k
        active = active[~done]
        if not len(active):
            break
    if len(active):
        idx = low[active]
        counts[idx] = np.maximum(nbinom.ppf(u_e[idx], r_e[idx], 1 - q_e[idx]), 1)
    # higher means: NB draws conditioned on > 0 by rejection
    high = np.flatnonzero(p0_e < P0_SPLIT)
    while len(high):
        draw = rng.negative_binomial(r_e[high], 1 - q_e[high])
        counts[high] = draw
        high = high[draw == 0]
    X = sp.csr_matrix((counts, (rows, cols)), shape=(n, model.mu.shape[1]), dtype=np.float32)
    return X, model.types[t]


def write_h5ad_blocks(path: Path, blocks, annotations) -> None:
    """Write an ``.h5ad`` whose CSR ``X`` is appended block of cells by block, then ``annotations()``.

    Written to a temporary name and renamed, so that an interrupted run leaves no file the cache would reuse.
    """

    tmp = path.with_suffix(".tmp.h5ad")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        for i, X in enumerate(blocks):
            if i == 0:
                ad.io.write_elem(f, "X", X)
            else:
                ad.io.sparse_dataset(f["X"]).append(X)
        for key, value in {**annotations(), "obsm": {}, "varm": {}, "layers": {}, "obsp": {}, "varp": {}}.items():
            ad.io.write_elem(f, key, value)
    tmp.rename(path)


def synthetic_path(n_cells: int, seed: int, cache: Path) -> Path:
    return cache / f"synth_pbmc3k_nb_n{n_cells}_seed{seed}_v{GEN_VERSION}.h5ad"


def generate(n_cells: int, *, seed: int, data: Path, cache: Path) -> Path:
    """Write ``n_cells`` synthetic cells to the cache (once) and return the file's path."""
    out = synthetic_path(n_cells, seed, cache)
    if out.exists():
        return out

    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = fit_nb(data)
    rng = np.random.default_rng(seed)
    types = []

    def blocks():
        for start in range(0, n_cells, GEN_CHUNK):
            X, t = _draw_chunk(model, min(GEN_CHUNK, n_cells - start), rng)
            types.append(t)
            yield X

    def annotations() -> dict:
        cells = [f"cell{i}" for i in range(n_cells)]
        obs = pd.DataFrame({"cell_type": pd.Categorical(np.concatenate(types))}, index=cells)
        return {"obs": obs, "var": pd.DataFrame(index=model.genes), "uns": {}}

    write_h5ad_blocks(out, blocks(), annotations)
    print(f"# generated {n_cells} cells in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# the files of one size, cached beside the counts


@dataclass(frozen=True)
class Files:
    """The cached files of one size: counts, the preprocessed file and the trained classifier."""

    counts: Path

    @property
    def lognorm(self) -> Path:
        """The ``preprocess`` stage's output: CSR log-normalized ``X`` of the kept genes, ``.obs``, ``.var``, ``.uns``."""
        return self.counts.with_name(self.counts.stem + "_lognorm.h5ad")

    @property
    def models(self) -> Path:
        """The ``train`` stage's output: ``save_dir`` of the classifier and its record (``record.h5``)."""
        return self.counts.with_name(self.counts.stem + "_models")


def require(what: str, *, present: bool) -> None:
    """Fail loudly when an API this benchmark is written against is missing."""
    if not present:
        msg = f"{what} is missing: the scale benchmark is written against issue 16's API, which has not landed."
        raise RuntimeError(msg)


def _need(path: Path, stage: str) -> Path:
    """``path``, or an error naming the stage that writes it."""
    if not path.exists():
        msg = f"{path} does not exist: run the {stage!r} stage of this size first."
        raise FileNotFoundError(msg)
    return path


def _write_lognorm(adata, path: Path) -> None:
    """Write ``X`` block of cells by block (a dask X: one block computed at a time), then ``.obs/.var/.uns``."""
    X = adata.X
    lazy = hasattr(X, "to_delayed")
    require(f"a CSR or dask X after preprocess(output='lognorm') (got {type(X)})", present=lazy or sp.issparse(X))

    def blocks():
        for block in X.rechunk({1: -1}).to_delayed().ravel() if lazy else [X]:
            M = block.compute() if lazy else block
            require(f"CSR blocks of the lazy lognorm X (got {type(M)})", present=sp.issparse(M))
            yield M

    write_h5ad_blocks(path, blocks(), lambda: {"obs": adata.obs, "var": adata.var, "uns": dict(adata.uns)})


def _read_lognorm(files: Files):
    """The preprocessed file, backed: ``X`` is read from disk a chunk of cells at a time."""
    return ad.read_h5ad(_need(files.lognorm, "preprocess"), backed="r")


def _load_records(adata, files: Files) -> None:
    """Add the ``train`` stage's records (split, classifier with its saved model's path) to ``adata.uns['sad']``."""
    with h5py.File(_need(files.models / "record.h5", "train"), "r") as f:
        saved = ad.io.read_elem(f["sad"])
    adata.uns["sad"] = {**adata.uns.get("sad", {}), **saved}


def _split(adata) -> None:
    """``sad.pp.split`` on the cell types; for a backed AnnData through an in-memory copy of ``.obs`` alone."""
    if not adata.isbacked:
        sad.pp.split(adata, "cell_type")
        return
    # split reads and writes .obs and .uns only; one empty gene column, as it refuses an AnnData without genes
    obs = ad.AnnData(sp.csr_matrix((adata.n_obs, 1), dtype=np.float32), obs=adata.obs[["cell_type"]].copy())
    sad.pp.split(obs, "cell_type")
    for key in obs.obs.columns.difference(["cell_type"]):
        adata.obs[key] = obs.obs[key]
    adata.uns["sad"] = {**adata.uns.get("sad", {}), **obs.uns["sad"]}


def _sample(adata, n: int, seed: int):
    """``n`` cells drawn without replacement (all cells when there are fewer), in memory."""
    if adata.n_obs <= n:
        return adata.to_memory() if adata.isbacked else adata.copy()
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n, replace=False))
    sub = adata[rows]
    return sub.to_memory() if adata.isbacked else sub.copy()


# ---------------------------------------------------------------------------------------------------------
# stages: an unmeasured set-up returning the stage's input, and the measured run returning a note


def _setup_preprocess(files: Files):
    require("sad.pp.preprocess(output='lognorm')", present="output" in inspect.signature(sad.pp.preprocess).parameters)
    f = h5py.File(files.counts, "r")  # stays open for the stage: blocks are read when computed
    X = ad.experimental.read_elem_lazy(f["X"], chunks=(LAZY_ROWS, -1))
    return ad.AnnData(X, obs=ad.io.read_elem(f["obs"]), var=ad.io.read_elem(f["var"])), {}


def _run_preprocess(adata, files: Files) -> str:
    import dask

    with dask.config.set(scheduler="synchronous"):  # one thread, as the other stages
        sad.pp.preprocess(adata, output="lognorm")
        _write_lognorm(adata, files.lognorm)
    return f"{adata.n_vars} genes written to {files.lognorm.name}"


def _setup_scanpy(files: Files):
    return ad.read_h5ad(files.counts), {}


def _run_scanpy(adata, files: Files) -> str:
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.raw = adata
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat")
    adata._inplace_subset_var(adata.var["highly_variable"].to_numpy())
    sc.pp.scale(adata, max_value=10)
    return "in memory, dense scaled X"


def _setup_train(files: Files):
    fields = {f.name for f in dataclasses.fields(sad.tl.TrainingConfig)}
    require("sad.tl.TrainingConfig(max_cells_per_epoch=...)", present="max_cells_per_epoch" in fields)
    adata = _read_lognorm(files)
    _split(adata)
    return adata, {}


def _run_train(adata, files: Files) -> str:
    config = sad.tl.TrainingConfig(max_cells_per_epoch=MAX_CELLS_PER_EPOCH, save_dir=str(files.models))
    if MAX_EPOCHS is not None:
        config = dataclasses.replace(config, max_epochs=MAX_EPOCHS)
    sad.tl.train_classifier(adata, "cell_type", config=config)
    rec = {k: v for k, v in adata.uns["sad"].items() if k != "preprocess"}
    with h5py.File(files.models / "record.h5", "w") as f:
        ad.io.write_elem(f, "sad", rec)
    epochs = sad.get.record(adata, "classifier").get("metrics", {}).get("epochs_run", "?")
    return f"{epochs} epochs of at most {MAX_CELLS_PER_EPOCH} cells"


def _setup_attack(files: Files):
    adata = _read_lognorm(files)
    _load_records(adata, files)
    sample = _sample(adata, ATTACK_CELLS, seed=0)
    sad.get.model(sample)  # loaded from its saved path here, not inside the measured stage
    return sample, {}


def _run_attack(adata, files: Files) -> str:
    sad.tl.attack(adata, "pgd", eps=ATTACK_EPS)
    return f"PGD eps {ATTACK_EPS}, layers {sorted(adata.layers)}"


def _setup_detect(files: Files):
    adata = _read_lognorm(files)
    _load_records(adata, files)
    _split(adata)  # the sample's training cells are those of the classifier's split
    sample = _sample(adata, DETECTOR_CELLS, seed=1)
    sad.tl.attack(sample, "pgd", eps=ATTACK_EPS)
    sad.tl.train_detector(sample, "sad_pgd")
    adata.uns["sad"]["detector"] = sample.uns["sad"]["detector"]
    return adata, {"model": sad.get.model(sample, "detector")}


def _run_detect(adata, files: Files, *, model) -> str:
    sad.tl.detect(adata, model=model)
    flagged = float(np.mean(adata.obs["sad_adversarial"]))
    return f"all cells, backed; {flagged:.1%} of these clean cells flagged"


STAGE_FNS: dict[str, tuple[Callable, Callable]] = {
    "preprocess": (_setup_preprocess, _run_preprocess),
    "scanpy": (_setup_scanpy, _run_scanpy),
    "train": (_setup_train, _run_train),
    "attack": (_setup_attack, _run_attack),
    "detect": (_setup_detect, _run_detect),
}


# ---------------------------------------------------------------------------------------------------------
# measuring


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    msg = f"{field} not in /proc/self/status: the benchmark measures RSS on Linux only."
    raise RuntimeError(msg)


def _watch_rss(limit_gib: float) -> None:
    """Stop this process (a stage's subprocess) when its RSS passes ``limit_gib``."""

    def watch() -> None:
        while True:
            if _vm_kib("VmRSS") > limit_gib * 2**20:
                print(f"RSS above {limit_gib} GiB: stage stopped", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def run_stage(stage: str, files: Files) -> dict:
    """Run one stage on the files of one size in this process; return its measurements."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    sad.settings.progress = False
    setup, run = STAGE_FNS[stage]
    c0, w0 = time.process_time(), time.perf_counter()
    adata, options, error, note = None, {}, "", ""
    try:
        adata, options = setup(files)
    except Exception as e:  # noqa: BLE001  (report a failing stage, keep the table)
        error = f"set-up: {type(e).__name__}: {str(e)[:300]}"
    setup_s = time.process_time() - c0
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    loaded = _vm_kib("VmRSS")
    c0, w0 = time.process_time(), time.perf_counter()
    if not error:
        try:
            note = run(adata, files, **options)
        except Exception as e:  # noqa: BLE001  (report a failing stage, keep the table)
            error = f"{type(e).__name__}: {str(e)[:300]}"
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "stage": stage,
        "n_obs": 0 if adata is None else adata.n_obs,
        "cpu_s": cpu,
        "wall_s": wall,
        "setup_cpu_s": setup_s,
        "rss_loaded_kib": loaded,
        "rss_peak_kib": _vm_kib("VmHWM"),
        "note": note,
        "error": error,
    }


def _in_subprocess(stage: str, files: Files, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--_stage", stage, "--_file", str(files.counts)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["no output"]
        return {"stage": stage, "error": f"exit {proc.returncode}: {' | '.join(tail)[:400]}"}
    return json.loads(lines[-1])


HEADER = (
    f"{'cells':>9} {'stage':<10} {'CPU s':>8} {'wall s':>8} {'cells/s':>9} {'CPU ms/cell':>11} "
    f"{'loaded GiB':>10} {'peak GiB':>9} {'<= 8 GiB':>8}  note"
)


def _row(n: int, r: dict) -> str:
    if "cpu_s" not in r or r.get("error"):
        return f"{n:>9} {r['stage']:<10} FAILED {r['error']}"
    cells, peak = r["n_obs"], r["rss_peak_kib"] / 2**20
    return (
        f"{n:>9} {r['stage']:<10} {r['cpu_s']:>8.1f} {r['wall_s']:>8.1f} {cells / r['wall_s']:>9.0f} "
        f"{1e3 * r['cpu_s'] / cells:>11.3f} {(r['rss_loaded_kib'] / 2**20):>10.2f} {peak:>9.2f} "
        f"{'yes' if peak <= TARGET_GIB else 'NO':>8}  {cells} cells; {r['note']}"
    )


def summary(results: dict[int, dict[str, dict]]) -> list[str]:
    """Per stage, CPU per cell at the largest size over 1e5; whether every stage peaked at or below 8 GiB."""
    ok = [r for rows in results.values() for r in rows.values() if "cpu_s" in r and not r.get("error")]
    failed = [(n, s) for n, rows in results.items() for s, r in rows.items() if r.get("error")]
    lines = []
    big = max(results, default=0)
    if big > 100_000 and 100_000 in results:
        for stage, r in results[big].items():
            ref = results[100_000].get(stage, {})
            if "cpu_s" in r and "cpu_s" in ref and not r.get("error") and not ref.get("error"):
                ratio = (r["cpu_s"] / r["n_obs"]) / (ref["cpu_s"] / ref["n_obs"])
                lines.append(f"{stage:<10} CPU per cell at {big} / at 100000 cells: {ratio:.2f}x")
    peak = max((r["rss_peak_kib"] / 2**20 for r in ok), default=float("nan"))
    lines.append(
        f"peak RSS <= {TARGET_GIB:g} GiB in every stage that ran: {'yes' if peak <= TARGET_GIB else 'NO'} "
        f"(highest {peak:.2f} GiB)" + (f"; failed: {failed}" if failed else "")
    )
    return lines


def _describe_machine(when: str = "") -> str:
    git = ["git", "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, check=False, cwd=REPO, capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"# {when}{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, commit {head}, load average {load}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="PBMC3k counts the NB model is fitted to")
    p.add_argument("--cells", type=int, nargs="+", default=list(SIZES), help="sizes (default 1e4, 1e5, 1e6)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all, in order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scadversarial_scale")
    p.add_argument("--_stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--_file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._stage:
        _watch_rss(RSS_ABORT_GIB)
        print(json.dumps(run_stage(args._stage, Files(args._file))), flush=True)
        return 0

    print(_describe_machine())
    print(f"scale: NB counts fitted to {args.data.name}, seed {args.seed}, {args.threads} thread(s)", flush=True)
    results: dict[int, dict[str, dict]] = {}
    for n in args.cells:
        files = Files(generate(n, seed=args.seed, data=args.data, cache=args.cache))
        print(HEADER, flush=True)
        rows = results.setdefault(n, {})
        for stage in args.stages:
            if stage == "scanpy" and n > SCANPY_MAX_CELLS:
                print(f"{n:>9} {stage:<10} skipped: in memory it cannot fit {TARGET_GIB:g} GiB at this size")
                continue
            rows[stage] = _in_subprocess(stage, files, args.threads)
            print(_row(n, rows[stage]), flush=True)
        ref = rows.get("scanpy", {})
        r = rows.get("preprocess", {})
        if "cpu_s" in ref and "cpu_s" in r and not ref["error"] and not r["error"]:
            print(
                f"{n:>9} preprocess / scanpy: peak RSS {r['rss_peak_kib'] / ref['rss_peak_kib']:.2f}x, "
                f"CPU {r['cpu_s'] / ref['cpu_s']:.2f}x"
            )
        print(flush=True)
    for line in summary(results):
        print(line)
    print(_describe_machine("end: "), flush=True)
    return int(any(r.get("error") for rows in results.values() for r in rows.values()))


if __name__ == "__main__":
    raise SystemExit(main())
