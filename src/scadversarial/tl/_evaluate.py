"""``sad.tl.evaluate``: one table with classifier accuracy, attack flip rates and detector quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._settings import logger
from .._validate import check_adata, check_obs_key, get_record, labelled_cells, set_record
from ..detection import detection_metrics
from ..get import attack_record, record
from ._attack_record import attacked_cells
from ._detect import _attack_layers, detect
from ._fragments import doc_example_classifier

COLUMNS = ("section", "metric", "group", "value", "n_cells")


def _stale_scores(adata: AnnData, layers: list[str | None], detector_key: str) -> dict[str, str]:
    """``{matrix: why}`` for the matrices whose scores are missing or were made by another detector.

    :func:`detect` records, per matrix, the id of the detector that scored it; the current detector is
    the one referenced in ``.uns['sad'][detector_key]['model']``. Scores of a detector trained since,
    or recorded without an id, would give the old detector's quality under the new one's name.
    """
    ref = get_record(adata, detector_key, producer="sad.tl.train_detector").get("model", {})
    current = str(ref.get("id", "")) if isinstance(ref, dict) else ""
    per = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_DETECT, {}).get("metrics", {})
    stale = {}
    for lay in layers:
        name = lay or "X"
        made_by = str(per.get(name, {}).get("detector_id", "")) if isinstance(per.get(name), dict) else ""
        if any(k not in adata.obs for k in (_keys.score_key(lay), _keys.flag_key(lay))):
            stale[name] = "has no detector scores"
        elif not made_by:
            stale[name] = "has scores of an unknown detector (no detector_id in .uns['sad']['detect'])"
        elif made_by != current:
            stale[name] = f"was scored by detector {made_by}, not the current {current}"
    return stale


@doc_params(doc_example_classifier=doc_example_classifier)
def evaluate(
    adata: AnnData,
    attack_key: str = "sad_pgd",
    *,
    labels_key: str | None = None,
    split_key: str = _keys.OBS_SPLIT,
    subset: str | None = "test",
    detector_key: str | None = _keys.STEP_DETECTOR,
    rescore: bool = False,
    fpr_max: float = 0.05,
    key_added: str = _keys.STEP_EVALUATE,
    copy: bool = False,
) -> AnnData | None:
    """Evaluate the classifier, the attack and the detector on held-out cells, in one long table.

    The table is written to ``.uns['sad'][key_added]`` and read back with
    :func:`scadversarial.get.evaluation_table`.

    Rows (``section``, ``metric``, ``group``):

    - ``classifier``, ``accuracy``: clean accuracy against ``labels_key`` on the evaluated cells
      with a label; group ``'overall'`` or a class.
    - ``classifier``, ``n_unlabelled``, group ``'overall'``: evaluated cells left out of the
      ``accuracy`` rows for a missing label (NaN in ``labels_key``; logged as a warning).
    - ``attack``, ``flip_rate``: fraction of cells whose prediction leaves the attacked class; group
      an adversarial layer, ``'any'`` (flipped at some epsilon), or ``'<layer>|<class>'`` /
      ``'any|<class>'`` per attacked class.
    - ``detector``, ``auroc`` / ``average_precision`` / ``tpr_at_5fpr`` / ``clean_accuracy`` /
      ``adversarial_accuracy`` / ``accuracy`` / ``threshold``: clean cells (label 0) against
      their perturbed versions (label 1) in one layer (group = the layer) or in all layers
      (group ``'pooled'``). Accuracies use the flags written by :func:`detect` at the detector's
      calibrated threshold.

    An attack of a sample of cells (:func:`attack` with ``cells=``) holds rows for those cells only
    (``.obs['<attack_key>_attacked']``; the other rows of its layers are empty, not attacks): the
    ``attack`` and ``detector`` rows cover the evaluated cells that were attacked, both their clean
    and their attacked versions, while the ``classifier`` rows cover every evaluated cell (the
    ``accuracy`` rows those with a label). The ``n_cells`` column gives the cells behind each row.

    Parameters
    ----------
    adata
        AnnData after :func:`train_classifier`, :func:`attack` and (for the detector rows) :func:`train_detector`.
    attack_key
        Attack record in ``.uns['sad']['attacks']``.
    labels_key
        True labels (default: the classifier's ``labels_key``). Cells without one (NaN) are left
        out of the accuracy rows only; at least one evaluated cell needs a label.
    split_key, subset
        Evaluate cells with ``.obs[split_key] == subset`` (default the held-out ``'test'`` split);
        ``subset=None``: all cells. Of a sampled attack, the attacked ones among them.
    detector_key
        Detector run record; ``None`` skips the detector rows.
    rescore
        Re-run :func:`detect` even when the scores are current. Scores are always computed again
        (logged) when missing or made by another detector than the one referenced at
        ``.uns['sad'][detector_key]`` (their ``detector_id`` in ``.uns['sad']['detect']['metrics']``),
        e.g. after :func:`train_detector` ran again.
    fpr_max
        False-positive rate of the ``tpr_at_<fpr>fpr`` row.
    key_added
        Name of the run record in ``.uns['sad']``.
    copy
        Work on a copy of ``adata`` and return it.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. Sets

    ``.uns['sad'][key_added]``
        ``params`` (``attack_key``, ``labels_key``, ``split_key``, ``subset``, ``detector_key``,
        ``fpr_max``) and ``table``: the columns ``section``, ``metric``, ``group``, ``value`` and
        ``n_cells`` as arrays (:func:`scadversarial.get.evaluation_table` gives the DataFrame);
        its row ``('classifier', 'n_unlabelled', 'overall')`` holds the number of evaluated cells
        left out of the accuracy rows for a missing label (``n_cells``: all evaluated cells).

    and, when scores are missing, stale or ``rescore=True``, what :func:`detect` writes for ``X`` and
    each adversarial layer (``.obs['sad_score*']``, ``.obs['sad_adversarial*']``,
    ``.obsm['sad_meta*']``, ``.obsm['X_sad_triplet*']``, ``.uns['sad']['detect']``).

    Examples
    --------
    {doc_example_classifier}
    >>> sad.tl.attack(adata, eps=(0.1, 0.5))
    >>> sad.tl.train_detector(adata, config=sad.detection.DetectorConfig(epochs=5))
    >>> sad.tl.evaluate(adata)
    >>> table = sad.get.evaluation_table(adata)
    >>> sorted(set(table["section"]))
    ['attack', 'classifier', 'detector']

    """
    check_adata(adata)
    clf_rec = get_record(adata, _keys.STEP_CLASSIFIER, producer="sad.tl.train_classifier")
    labels_key = labels_key or str(clf_rec["params"].get("labels_key", _keys.OBS_LABEL))
    labels = check_obs_key(adata, labels_key).astype(str).to_numpy()
    pred = check_obs_key(adata, _keys.OBS_PRED, producer="sad.tl.train_classifier").astype(str).to_numpy()
    layers = _attack_layers(adata, attack_key, None)
    att_rec = attack_record(adata, attack_key)
    att_params = att_rec.get("params", {})
    att_labels = str(att_params.get("labels_key", "predicted"))
    target = pred if att_labels == "predicted" else check_obs_key(adata, att_labels).astype(str).to_numpy()
    for lay in layers:
        check_obs_key(adata, _keys.pred_key(lay), producer="sad.tl.attack")
    if subset is None:
        mask = np.ones(adata.n_obs, bool)
    else:
        mask = check_obs_key(adata, split_key, producer="sad.pp.split").astype(str).to_numpy() == subset
        if not mask.any():
            msg = f"No cells with adata.obs[{split_key!r}] == {subset!r}. Pass another subset, or subset=None for all cells."
            raise ValueError(msg)
    att = attacked_cells(adata, layers[0])  # one record: its layers hold the same rows
    amask = mask if att is None else mask & att  # the cells whose attack layers hold an attack
    if not amask.any():
        msg = (
            f"Attack {attack_key!r} attacked no cell with adata.obs[{split_key!r}] == {subset!r} "
            f"(its cells: adata.obs[{att_rec['cells']['obs_key']!r}]). Attack cells of that subset, "
            "or pass another subset (subset=None for all cells)."
        )
        raise ValueError(msg)
    where = "" if subset is None else f" with adata.obs[{split_key!r}] == {subset!r}"
    labelled = labelled_cells(
        adata,
        labels_key,
        mask,
        caller="evaluate",
        measured="the classifier accuracy",
        keeps="the attack and detector rows",
        fix=f"Evaluated: the cells{where}. Pass labels_key= naming a column with true labels, annotate some of "
        "these cells, or pass another subset (subset=None for all cells).",
    )
    n_unlabelled = int((mask & ~labelled).sum())
    if copy:
        adata = adata.copy()

    rows: list[tuple] = []
    y, p = labels[mask & labelled], pred[mask & labelled]
    rows.append(("classifier", "accuracy", "overall", float((y == p).mean()), len(y)))
    for c in sorted(set(y)):
        sel = y == c
        rows.append(("classifier", "accuracy", c, float((p[sel] == c).mean()), int(sel.sum())))
    rows.append(("classifier", "n_unlabelled", "overall", float(n_unlabelled), int(mask.sum())))

    t = target[amask]
    flips = {lay: adata.obs[_keys.pred_key(lay)].astype(str).to_numpy()[amask] != t for lay in layers}
    flips["any"] = np.logical_or.reduce(list(flips.values()))
    for g, f in flips.items():
        rows.append(("attack", "flip_rate", g, float(f.mean()), len(f)))
    for g, f in flips.items():
        for c in sorted(set(t)):
            sel = t == c
            rows.append(("attack", "flip_rate", f"{g}|{c}", float(f[sel].mean()), int(sel.sum())))

    if detector_key is not None:
        stale = _stale_scores(adata, [None, *layers], detector_key)
        if rescore or stale:
            for name, why in stale.items():
                logger.info("evaluate: %s %s: scoring it again with the current %r detector.", name, why, detector_key)
            detect(adata, [None, *layers], detector_key=detector_key)
        role = adata.obs.get(_keys.OBS_DETECTOR_ROLE)
        if role is not None and (role.astype(str).to_numpy()[amask] != "unused").any():
            logger.warning(
                "Some evaluated cells were used to train or calibrate the detector: the detector rows are optimistic."
            )
        s0 = adata.obs[_keys.score_key(None)].to_numpy(np.float64)[amask]
        f0 = adata.obs[_keys.flag_key(None)].to_numpy(bool)[amask]
        thr = float(record(adata, _keys.STEP_DETECT)["metrics"]["X"]["threshold"])
        groups = {lay: [lay] for lay in layers}
        groups["pooled"] = layers
        tpr_name = f"tpr_at_{round(fpr_max * 100):d}fpr"
        for g, lays in groups.items():
            s1 = np.concatenate([adata.obs[_keys.score_key(v)].to_numpy(np.float64)[amask] for v in lays])
            f1 = np.concatenate([adata.obs[_keys.flag_key(v)].to_numpy(bool)[amask] for v in lays])
            yy = np.r_[np.zeros(len(s0)), np.ones(len(s1))]
            m = detection_metrics(yy, np.r_[s0, s1], thr, fpr_max=fpr_max)
            clean_acc, adv_acc = float((~f0).mean()), float(f1.mean())
            vals = {
                "auroc": m["auroc"],
                "average_precision": m["average_precision"],
                tpr_name: m[tpr_name],
                "clean_accuracy": clean_acc,
                "adversarial_accuracy": adv_acc,
                "accuracy": float(((~f0).sum() + f1.sum()) / (len(f0) + len(f1))),
                "threshold": thr,
            }
            for k, v in vals.items():
                rows.append(("detector", k, g, v, len(yy)))

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    params = {
        "attack_key": attack_key,
        "labels_key": labels_key,
        "split_key": split_key,
        "subset": subset or "all",
        "detector_key": detector_key or "none",
        "fpr_max": fpr_max,
    }
    set_record(adata, key_added, params=params, table=table)
    return adata if copy else None


__all__ = ["evaluate"]
