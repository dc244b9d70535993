"""The Streamlit page of the scadversarial demo (run by :func:`scadversarial.app.launch`).

Configuration: script arguments after ``--`` (``--adata FILE.h5ad --models DIR --cache-dir DIR
--max-epochs N``) or, when the script is not run by ``streamlit run`` itself (e.g. in
:class:`streamlit.testing.v1.AppTest`), the environment variables ``SCADVERSARIAL_APP_ADATA``,
``SCADVERSARIAL_APP_MODELS``, ``SCADVERSARIAL_APP_CACHE_DIR`` and ``SCADVERSARIAL_APP_EPOCHS``.

All numbers come from :mod:`scadversarial.app.logic`; this file only lays them out. The loaded
pipeline is cached with ``st.cache_resource`` and each attacked cell with ``st.cache_data``, so a
cell change only re-runs the one-cell work.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

import scadversarial as sad
from scadversarial._pipeline import MAX_EPOCHS
from scadversarial._settings import logger
from scadversarial.app import logic

PICK_INDEX, PICK_LABEL = "index", "label"
#: Full-width charts and tables: the default since Streamlit's ``width=`` layout API; before it
#: (e.g. 1.46) ``use_container_width=True`` (deprecated after).
STRETCH = {} if "width" in inspect.signature(st.vega_lite_chart).parameters else {"use_container_width": True}


@dataclass(frozen=True)
class Config:
    """What the page opens: a pipeline's ``.h5ad`` and models folder, or the cached demo."""

    adata: str | None
    models: str | None
    cache_dir: str | None
    max_epochs: int


@dataclass(frozen=True)
class Options:
    """The sidebar's settings."""

    index: int
    attack_on: bool
    method: str
    eps: float
    steps: int
    alpha: float
    threshold: float | None
    show_genes: bool

    def attack(self) -> dict:
        """The attack's keywords of :func:`~scadversarial.app.logic.evaluate_iter`."""
        return {"method": self.method, "eps": self.eps, "alpha": self.alpha, "steps": self.steps}


def _config() -> Config:
    """Paths and settings from the script arguments (under ``streamlit run``) or the environment."""
    env = Config(
        adata=os.environ.get("SCADVERSARIAL_APP_ADATA") or None,
        models=os.environ.get("SCADVERSARIAL_APP_MODELS") or None,
        cache_dir=os.environ.get("SCADVERSARIAL_APP_CACHE_DIR") or None,
        max_epochs=int(os.environ.get("SCADVERSARIAL_APP_EPOCHS") or MAX_EPOCHS),
    )
    if sys.argv and Path(sys.argv[0]).name == Path(__file__).name:
        # the arguments that scadversarial.app.command passes after "--"
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--adata", default=env.adata)
        parser.add_argument("--models", default=env.models)
        parser.add_argument("--cache-dir", dest="cache_dir", default=env.cache_dir)
        parser.add_argument("--max-epochs", dest="max_epochs", type=int, default=env.max_epochs)
        args, _ = parser.parse_known_args(sys.argv[1:])
        return Config(**vars(args))
    return env


@st.cache_resource(show_spinner="Loading the pipeline (the first start builds the demo on pbmc68k_reduced) ...")
def load(adata: str | None, models: str | None, cache_dir: str | None, max_epochs: int) -> logic.Pipeline:
    """The pipeline, loaded once per server (errors are not cached: a reload tries again)."""
    return logic.open_pipeline(adata, models, cache_dir=cache_dir, max_epochs=max_epochs)


@st.cache_data(max_entries=1024, show_spinner=False)
def attacked(_pipe: logic.Pipeline, token: str, index: int, method: str, eps: float, alpha: float, steps: int):
    """One attacked cell (cached per pipeline ``token``, cell and attack settings)."""
    return logic.attack_cell(_pipe, index, method=method, eps=eps, alpha=alpha, steps=steps)


@st.cache_data(max_entries=4096, show_spinner=False)
def clean(_pipe: logic.Pipeline, token: str, index: int):
    """One clean cell with its detector score (cached per pipeline ``token`` and cell)."""
    return logic.clean_cell(_pipe, index)


# ----------------------------------------------------------------------------------------------
def show_verdict(cell: logic.CellResult, threshold: float | None) -> None:
    """Detector score and verdict of one cell."""
    if cell.score is None:
        st.caption("Detector: not available for this pipeline.")
        return
    st.markdown(f"Detector score: **{cell.score:.6g}** (threshold {threshold:.6g})")
    verdict = cell.verdict(threshold)
    text = f"Detector verdict: {verdict}"
    if verdict == "adversarial":
        st.error(text, icon=":material/gpp_bad:")
    else:
        st.success(text, icon=":material/verified_user:")


# ----------------------------------------------------------------------------------------------
def sidebar(pipe: logic.Pipeline) -> Options:
    """The sidebar widgets; returns the chosen settings."""
    sb = st.sidebar
    sb.header("Cell")
    mode = sb.radio("Pick the cell by", [PICK_INDEX, PICK_LABEL], horizontal=True, key="pick_mode")
    if mode == PICK_INDEX:
        index = int(
            sb.number_input("Cell index", min_value=0, max_value=pipe.n_cells - 1, value=0, step=1, key="cell_index")
        )
    else:
        labels = pipe.labels if pipe.labels is not None else np.array(pipe.classes)[pipe.pred]
        options = [c for c in dict.fromkeys(pipe.classes) if (labels == c).any()]
        options += sorted(set(labels) - set(options))
        label = sb.selectbox("Label" if pipe.labels is not None else "Predicted label", options, key="cell_label")
        keep = labels == label
        if pipe.split is not None and sb.checkbox("Held-out (test) cells only", value=False, key="only_test"):
            keep &= pipe.split == "test"
        cells = np.flatnonzero(keep).tolist() or np.flatnonzero(labels == label).tolist()
        names = pipe.obs_names
        index = int(sb.selectbox("Cell", cells, format_func=lambda i: f"{i}: {names[i]}", key=f"cell_of_{label}"))
    sb.caption(f"{pipe.n_cells} cells; cell {index} is `{pipe.obs_names[index]}`.")

    sb.header("Attack")
    d = pipe.attack_defaults
    from scadversarial.attacks.whitebox import METHODS

    attack_on = sb.toggle("Attack this cell", value=False, key="attack_on")
    method = sb.selectbox(
        "Attack method", METHODS, index=METHODS.index(d.method) if d.method in METHODS else 0, key="method"
    )
    eps = sb.slider(
        "Epsilon", min_value=0.01, max_value=2.0, value=float(min(max(d.eps, 0.01), 2.0)), step=0.01, key="eps"
    )
    with sb.expander("PGD settings"):
        steps = int(st.number_input("Steps", min_value=1, max_value=200, value=int(d.steps), key="steps"))
        alpha = float(
            st.number_input(
                "Step size (alpha; 0 = 2.5 x epsilon / steps)",
                min_value=0.0,
                max_value=2.0,
                value=0.0,
                step=0.005,
                format="%.3f",
                key="alpha",
            )
        )
        st.caption("FGSM takes one step of size epsilon. Steps default to the pipeline's recorded attack.")

    sb.header("Detection")
    if pipe.threshold is None:
        sb.caption("No detector in this pipeline.")
        threshold = None
    else:
        sb.markdown(f"Stored threshold: **{pipe.threshold:.6g}**")
        threshold = sb.slider(
            "Detection threshold", 0.0, 1.0, value=float(pipe.threshold), step=0.0001, format="%.5f", key="threshold"
        )
        threshold = float(threshold)
    sb.header("Display")
    show_genes = sb.toggle("Show gene vector", value=False, key="show_genes")
    return Options(
        index=index,
        attack_on=attack_on,
        method=method,
        eps=float(eps),
        steps=steps,
        alpha=alpha,
        threshold=threshold,
        show_genes=show_genes,
    )


def page(pipe: logic.Pipeline) -> None:
    """Everything below the title, for a loaded pipeline."""
    t0 = time.perf_counter()
    token = f"{pipe.source}|{id(pipe)}"  # one loaded pipeline: cached cells never leak between pipelines
    opts = sidebar(pipe)
    i, thr = opts.index, opts.threshold
    for w in pipe.warnings:
        st.warning(w)

    c = clean(pipe, token, i)
    a = None
    left, right = st.columns(2, gap="large")
    with left, st.container(key="clean_panel", border=True):
        st.subheader("Clean cell")
        st.markdown(f"Cell **{i}** (`{c.name}`)")
        if c.split is not None:
            role = f"; detector role: {c.role}" if c.role is not None else ""
            st.caption(f"Split: {c.split}{role}")
        st.markdown(f"True label: **{c.true_label if c.true_label is not None else 'unknown'}**")
        st.markdown(f"Predicted label: **{c.predicted}** (probability {c.confidence:.2f})")
        st.vega_lite_chart(logic.proba_chart(c, pipe.classes, "class probabilities, clean"), **STRETCH)
        show_verdict(c, thr)
        if c.role in ("reference", "meta_train", "calibration"):
            st.caption(
                f"This cell helped train the detector ({c.role}): its score is not a held-out score. "
                "Pick a test-split cell for an honest verdict."
            )
    with right, st.container(key="attack_panel", border=True):
        st.subheader("Attacked cell")
        if not opts.attack_on:
            st.info("Turn on **Attack this cell** in the sidebar to attack this cell.")
        else:
            a = attacked(pipe, token, i, opts.method, opts.eps, opts.alpha, opts.steps)
            st.markdown(f"Attack: **{a.method}**, epsilon **{a.eps:g}**, against the predicted class")
            st.markdown(f"Predicted label: **{a.predicted}** (probability {a.confidence:.2f})")
            if a.success:
                st.warning(f"Attack succeeded: the prediction flipped from {a.clean_predicted} to {a.predicted}.")
            else:
                st.info(f"Attack failed: the prediction stays {a.predicted}.")
            st.vega_lite_chart(logic.proba_chart(a, pipe.classes, "class probabilities, attacked"), **STRETCH)
            show_verdict(a, thr)

    if opts.show_genes:
        st.subheader("Gene vector")
        table = logic.gene_table(pipe, c, a)
        if a is not None:
            delta = np.abs(a.x - c.x)
            st.caption(
                f"{len(pipe.genes)} genes (scaled values), largest change first; L-inf change {delta.max():.3f}, "
                f"L2 change {np.linalg.norm(a.x - c.x):.3f}, {(delta > 1e-6).sum()} genes changed."
            )
        else:
            st.caption(f"{len(pipe.genes)} genes (scaled values), largest absolute value first.")
        st.dataframe(table, height=300, hide_index=True, **STRETCH)

    st.subheader("Cells")
    st.vega_lite_chart(logic.umap_frame(pipe, i), logic.umap_spec(pipe), key="umap", **STRETCH)
    st.caption(f"{pipe.umap_key}; the selected cell is the black diamond.")

    evaluation(pipe, opts)
    attack = (
        f"{a.method}, epsilon {a.eps:g}, {'succeeded' if a.success else 'failed'}" if a is not None else "attack off"
    )
    with st.container(key="status_line"):
        st.caption(f"Cell {i} ({c.name}) shown; {attack}; computed in {1000 * (time.perf_counter() - t0):.0f} ms.")


def evaluation(pipe: logic.Pipeline, opts: Options) -> None:
    """The global section: evaluation table on a button press, computed in batches."""
    st.subheader("Global evaluation")
    where = "test" if pipe.split is not None and (pipe.split == "test").any() else "all"
    st.caption(
        f"Attacks every {where}-split cell with the sidebar's attack ({opts.method}, epsilon {opts.eps:g}) "
        "and scores clean and attacked cells at the sidebar's threshold."
    )
    if st.button("Run evaluation", key="run_eval"):
        bar = st.progress(0.0, text="Evaluating ...")
        result = None
        for frac, res in logic.evaluate_iter(pipe, **opts.attack(), threshold=opts.threshold, split=where):
            bar.progress(frac, text=f"Evaluating: {frac:.0%}")
            result = res or result
        bar.empty()
        st.session_state["evaluation"] = result
    result = st.session_state.get("evaluation")
    if result is not None:
        thr = "no detector" if result.threshold is None else f"threshold {result.threshold:.6g}"
        st.markdown(f"**{result.n_cells} {result.split} cells**, {result.method} epsilon {result.eps:g}, {thr}")
        st.dataframe(
            result.table(), hide_index=True, column_config={"value": st.column_config.NumberColumn(format="%.3f")}
        )
    stored = logic.stored_evaluation(pipe)
    if stored is not None:
        with st.expander("Evaluation recorded by the pipeline run"):
            st.dataframe(stored, hide_index=True)


def main() -> None:
    """Build the page; every error ends up as a message in it, never as a traceback."""
    st.set_page_config(page_title="scadversarial demo", layout="wide")
    st.title("scadversarial: clean vs. adversarial cells")
    try:
        cfg = _config()
        pipe = load(cfg.adata, cfg.models, cfg.cache_dir, int(cfg.max_epochs))
    except logic.AppError as e:
        st.error(f"Could not open the pipeline. {e}")
        st.stop()
    except Exception as e:  # noqa: BLE001 - the page shows it instead of a traceback
        logger.exception("app: loading failed")
        st.error(f"Could not open the pipeline ({type(e).__name__}: {e}).")
        st.stop()
    clf = sad.get.record(pipe.adata, "classifier").get("metrics", {}).get("accuracy", {})
    acc = f", classifier test accuracy {clf['test']:.3f}" if "test" in clf else ""
    st.caption(f"{pipe.source}: {pipe.n_cells} cells x {len(pipe.genes)} genes, {len(pipe.classes)} classes{acc}.")
    try:
        page(pipe)
    except logic.AppError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - the page shows it instead of a traceback
        logger.exception("app: page failed")
        st.error(f"Something went wrong ({type(e).__name__}: {e}).")


main()
