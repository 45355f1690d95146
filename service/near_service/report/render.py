"""One report dict -> one self-contained HTML file: a jinja2 template (autoescaped: every text from
the pool shows as text) with bokeh's figures and its JavaScript inlined (``bokeh.resources.INLINE``;
only the bundles the figures need). No request leaves the page: no CDN, no web fonts, no images.
"""

from __future__ import annotations

import datetime
from functools import cache
from typing import Any

import jinja2
import numpy as np
from bokeh.embed import file_html
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.models.annotations.legends import ColorBar
from bokeh.palettes import Category10_10, Category20_20, Viridis256
from bokeh.plotting import figure
from bokeh.resources import INLINE

__all__ = ["render_html"]

WIDTH = 960
POOL_GREY = "#b8b8b8"
SELECTED = "#d62728"


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("near_service.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _fig(name: str, title: str, height: int = 340, **kw: Any) -> Any:
    f = figure(name=name, title=title, width=WIDTH, height=height, toolbar_location="right", **kw)
    f.toolbar.logo = None
    return f


def _overlap(rep: dict[str, Any]) -> Any | None:
    ov = rep["overlap"]
    rounds = np.asarray(ov["rounds"], dtype=np.float64)
    if len(rounds) < 2:
        return None
    jac, cnt = np.asarray(ov["jaccard"], dtype=np.float64), np.asarray(ov["count"], dtype=np.int64)
    ii, jj = np.tril_indices(len(rounds), -1)
    src = ColumnDataSource(
        {
            "x": rounds[jj].astype(np.float32),
            "y": rounds[ii].astype(np.float32),
            "jaccard": jac[ii, jj].astype(np.float32),
            "count": cnt[ii, jj].astype(np.int32),
        }
    )
    side = min(WIDTH - 120, max(260, 18 * len(rounds) + 80))
    f = _fig("overlap", "Jaccard overlap of each round (y) with each earlier round (x)", height=side)
    f.width = side + 120
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=max(float(jac[ii, jj].max()), 1e-6))
    f.rect("x", "y", 1, 1, source=src, fill_color={"field": "jaccard", "transform": mapper}, line_color=None)
    f.add_layout(ColorBar(color_mapper=mapper, title="Jaccard"), "right")
    f.add_tools(HoverTool(tooltips=[("rounds", "@y vs @x"), ("in both", "@count"), ("Jaccard", "@jaccard{0.000}")]))
    f.xaxis.axis_label, f.yaxis.axis_label = "earlier round", "round"
    return f


def _shares(rep: dict[str, Any]) -> Any | None:
    s = rep["sources"]
    names: list[str] = s["names"]
    if not names:
        return None
    bars = ["pool"] + [f"r{r['round']}" for r in s.get("rounds", [])]
    table = np.asarray([s["pool_share"]] + [r["share"] for r in s.get("rounds", [])], dtype=np.float64)
    data: dict[str, Any] = {"bar": bars}
    keys = [f"s{i}" for i in range(len(names))]
    for i, k in enumerate(keys):
        data[k] = table[:, i]
    f = _fig("sources", "Share of each source: the pool, then each round's selection", x_range=bars)
    palette = (Category20_20 * (len(names) // 20 + 1))[: len(names)]
    f.vbar_stack(keys, x="bar", width=0.8, color=palette, source=ColumnDataSource(data), legend_label=names)
    f.y_range.start, f.y_range.end = 0, 1
    f.xaxis.major_label_orientation = 0.9 if len(bars) > 12 else 0
    f.legend.click_policy = "hide"
    f.add_layout(f.legend[0], "right")
    f.width = WIDTH + 200
    return f


def _hist(name: str, title: str, edges: list[float], series: list[tuple[str, list[int], str]], xlabel: str) -> Any:
    e = np.asarray(edges, dtype=np.float64)
    f = _fig(name, title, height=300)
    for label, counts, color in series:
        c = np.asarray(counts, dtype=np.float64)
        share = c / c.sum() if c.sum() else c
        src = ColumnDataSource({"left": e[:-1], "right": e[1:], "share": share, "count": c})
        f.quad(
            left="left",
            right="right",
            bottom=0,
            top="share",
            source=src,
            fill_color=color,
            fill_alpha=0.45,
            line_color=color,
            legend_label=label,
        )
    f.add_tools(
        HoverTool(tooltips=[("bin", "@left{0.000} to @right{0.000}"), ("share", "@share{0.0%}"), ("rows", "@count")])
    )
    f.xaxis.axis_label, f.yaxis.axis_label = xlabel, "share of rows"
    f.legend.click_policy = "hide"
    return f


def _similarity(rep: dict[str, Any]) -> Any | None:
    sim = rep["similarity"]
    if not sim["rounds"]:
        return None
    sel = np.sum([r["selected"] for r in sim["rounds"]], axis=0).tolist()
    pool = np.sum([r["pool"] for r in sim["rounds"]], axis=0).tolist()
    return _hist(
        "similarity",
        "Similarity to the queries: selected rows against the pool (all rounds)",
        sim["edges"],
        [("pool", pool, "#7f7f7f"), ("selected", sel, SELECTED)],
        "cosine similarity to the round's queries",
    )


def _cols(data: dict[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    """The map's columns for bokeh: coordinates and rows as numpy arrays (sent as compact binary)."""
    out: dict[str, Any] = {}
    for k in keep:
        if k in ("x", "y"):
            out[k] = np.asarray(data[k], dtype=np.float32)
        elif k == "row":
            out[k] = np.asarray(data[k], dtype=np.int32)
        else:
            out[k] = data[k]
    return out


def _map(rep: dict[str, Any]) -> Any | None:
    m = rep.get("map")
    if not m:
        return None
    f = _fig("map", "Map of the pool (PCA)", height=620, match_aspect=True)
    f.width = WIDTH + 200
    hover_cols = [("row", "@row"), ("source", "@source"), ("text", "@text")]
    cols = ("row", "x", "y", "text", "source")
    pool_src = ColumnDataSource(_cols(m["pool"], cols))
    pool = f.scatter("x", "y", source=pool_src, size=4, color=POOL_GREY, alpha=0.6, legend_label="pool")
    renderers = [pool]
    for i, layer in enumerate(m["layers"]):
        data = _cols(layer, cols)
        r = f.scatter(
            "x",
            "y",
            source=ColumnDataSource(data),
            size=6,
            color=Category10_10[i % 10],
            alpha=0.85,
            legend_label=layer["label"],
        )
        renderers.append(r)
    f.add_tools(HoverTool(renderers=renderers, tooltips=hover_cols))
    q = m.get("queries")
    if q and q["x"]:
        data = _cols(q, ("x", "y", "text", "round"))
        qr = f.scatter(
            "x",
            "y",
            source=ColumnDataSource(data),
            marker="x",
            size=11,
            line_width=2,
            color="black",
            legend_label="queries",
        )
        f.add_tools(HoverTool(renderers=[qr], tooltips=[("query", "@text"), ("", "@round")]))
    f.legend.click_policy = "hide"
    f.add_layout(f.legend[0], "right")
    return f


def _pool_figures(rep: dict[str, Any]) -> list[Any]:
    out = []
    if rep.get("lengths"):
        ln = rep["lengths"]
        out.append(_hist("lengths", "Text length", ln["edges"], [("rows", ln["counts"], "#1f77b4")], "characters"))
    near = rep["duplicates"].get("nearest")
    if near:
        out.append(
            _hist(
                "nearest",
                "Similarity of each row to its nearest other row",
                near["edges"],
                [("rows", near["counts"], "#9467bd")],
                "cosine similarity",
            )
        )
    return out


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_html(report: dict[str, Any]) -> str:
    """The report (from :func:`~near_service.report.run.build_run_report` or
    :func:`~near_service.report.pool.build_pool_report`) as one self-contained HTML page."""
    kind = report["kind"]
    if kind == "run":
        figs = [_overlap(report), _shares(report), _similarity(report), _map(report)]
    elif kind == "pool":
        figs = [_shares(report), *_pool_figures(report), _map(report)]
    else:
        raise ValueError(f"unknown report kind {kind!r}")
    figures = [f for f in figs if f is not None]
    names = {f.name for f in figures}
    template = _env().get_template(f"{kind}.html.j2")
    variables = {"r": report, "has": names, "when": _when}
    if not figures:  # bokeh needs one model: an empty page still gets its template
        return template.render(**variables, bokeh_js="", bokeh_css="", plot_script="", roots={})
    return file_html(figures, INLINE, report["title"], template=template, template_variables=variables)
