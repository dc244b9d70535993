"""What the page draws: the gene table, the cells' map and the Vega-Lite specs of its charts.

Plain data (DataFrames and Vega-Lite dicts), so every figure can be checked without Streamlit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._state import CellResult, Pipeline

#: Bar colours: other classes, the predicted class of a clean cell, of an attacked cell.
OTHER, CLEAN, ATTACKED = "#9db4cc", "#1f77b4", "#d62728"


def gene_table(
    pipe: Pipeline, clean: CellResult, attacked: CellResult | None = None, *, top: int | None = None
) -> pd.DataFrame:
    """The cell's gene vector: clean values, attacked values and their change, largest change first."""
    df = pd.DataFrame({"gene": pipe.genes, "clean": np.asarray(clean.x, dtype=float)})
    if attacked is not None:
        df["attacked"] = np.asarray(attacked.x, dtype=float)
        df["change"] = df["attacked"] - df["clean"]
        df = df.reindex(df["change"].abs().sort_values(ascending=False, kind="stable").index)
    else:
        df = df.reindex(df["clean"].abs().sort_values(ascending=False, kind="stable").index)
    df = df.reset_index(drop=True)
    return df.head(top) if top else df


def umap_frame(pipe: Pipeline, selected: int | None = None) -> pd.DataFrame:
    """Coordinates of every cell with its label, prediction and whether it is the selected cell."""
    if pipe._umap_base is None:
        pipe._umap_base = pd.DataFrame(
            {
                "x": pipe.umap[:, 0].astype(float),
                "y": pipe.umap[:, 1].astype(float),
                "cell": pipe.obs_names,
                "index": np.arange(pipe.n_cells),
                "label": pipe.labels if pipe.labels is not None else np.array(pipe.classes)[pipe.pred],
                "predicted": np.array(pipe.classes)[pipe.pred],
            }
        )
    df = pipe._umap_base.copy()
    df["selected"] = df["index"].to_numpy() == (-1 if selected is None else int(selected))
    return df


def proba_chart(cell: CellResult, classes: list[str], title: str) -> dict:
    """Vega-Lite spec of the class-probability bars, the predicted class highlighted."""
    df = cell.proba_frame(classes)
    df["predicted"] = df["class"] == cell.predicted
    return {
        "data": {"values": df.to_dict("records")},
        "mark": {"type": "bar"},
        "title": title,
        "height": {"step": 22},
        "encoding": {
            "y": {
                "field": "class",
                "type": "nominal",
                "sort": None,
                "title": None,
                "axis": {"labelOverlap": False, "labelLimit": 160},
            },
            "x": {"field": "probability", "type": "quantitative", "scale": {"domain": [0, 1]}},
            "color": {
                "field": "predicted",
                "type": "nominal",
                "legend": None,
                "scale": {"domain": [False, True], "range": [OTHER, ATTACKED if cell.attacked else CLEAN]},
            },
            "tooltip": [{"field": "class"}, {"field": "probability", "format": ".3f"}],
        },
    }


def _xy(pipe: Pipeline, axis: str) -> dict:
    return {
        "field": axis,
        "type": "quantitative",
        "title": f"{pipe.umap_key} {1 if axis == 'x' else 2}",
        "axis": {"labels": False, "ticks": False},
        "scale": {"zero": False, "padding": 12},
    }


def umap_spec(pipe: Pipeline) -> dict:
    """Vega-Lite spec of the cells' UMAP, coloured by label, the ``selected`` cell highlighted.

    The spec holds no data and does not depend on the cell: the page passes the cells as a
    DataFrame, so a cell change only sends new data to the chart already drawn.
    """
    color = "label" if pipe.labels is not None else "predicted"
    selected = {"filter": "datum.selected"}
    at = {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}
    diamond = {
        "type": "point",
        "shape": "diamond",
        "size": 320,
        "filled": True,
        "color": "black",
        "stroke": "white",
        "strokeWidth": 2,
    }
    return {
        "height": 440,
        "layer": [
            {
                "mark": {"type": "circle", "size": 14, "opacity": 0.55},
                "encoding": {
                    "x": _xy(pipe, "x"),
                    "y": _xy(pipe, "y"),
                    "color": {
                        "field": color,
                        "type": "nominal",
                        "title": "true label" if color == "label" else "predicted",
                    },
                    "tooltip": [{"field": "index"}, {"field": "cell"}, {"field": "label"}, {"field": "predicted"}],
                },
            },
            {"transform": [selected], "mark": diamond, "encoding": at},
            {
                "transform": [selected],
                "mark": {"type": "text", "dy": -16, "fontWeight": "bold", "fontSize": 13},
                "encoding": {**at, "text": {"field": "cell"}},
            },
        ],
    }
