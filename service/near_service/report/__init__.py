"""Self-contained HTML reports of pools and runs: pure builders (views in, JSON-able dicts out) and
one renderer (dict in, one HTML file out: no request leaves it).

>>> import numpy as np
>>> pool = PoolView("demo", texts=["a", "b", "c"], sources=["x", "x", "y"])
>>> rnd = RoundView(0, indices=np.array([[0, 2]]), scores=np.array([[0.9, 0.4]], dtype=np.float32))
>>> html = render_html(build_run_report("run-1", [rnd], pool))
>>> html.startswith("<!DOCTYPE html>")
True
"""

from near_service.report.pool import build_pool_report
from near_service.report.render import render_html
from near_service.report.run import build_run_report
from near_service.report.views import PoolView, RoundView

__all__ = ["PoolView", "RoundView", "build_pool_report", "build_run_report", "render_html"]
