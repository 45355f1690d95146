"""A 2D map of a pool: PCA of its L2-normalised vectors (pure numpy), for the reports.

The two principal axes are fitted on up to ``FIT_ROWS`` evenly spaced rows (the covariance of a
sample moves the axes far less than a picture shows), then every row is projected. Each axis'
sign is fixed (its largest-magnitude loading is positive), so the same pool always draws the same
map.

>>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
>>> fit = pca_fit(v)
>>> pca_project(v, fit).shape
(4, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FIT_ROWS", "Pca", "pca_fit", "pca_project", "project_pool"]

FIT_ROWS = 20000


@dataclass(frozen=True)
class Pca:
    """The fitted map: ``mean`` (d,) and ``components`` (2, d), float32."""

    mean: np.ndarray
    components: np.ndarray


def pca_fit(vectors: np.ndarray, fit_rows: int = FIT_ROWS) -> Pca:
    """The first two principal axes of ``vectors`` (n x d), fitted on up to ``fit_rows`` rows."""
    n, d = vectors.shape
    rows = np.unique(np.linspace(0, n - 1, min(n, fit_rows)).astype(np.int64)) if n else np.zeros(0, np.int64)
    x = np.asarray(vectors[rows], dtype=np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(d)
    x -= mean
    cov = x.T @ x / max(len(x) - 1, 1)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues: the last two columns are the axes
    comp = vecs[:, ::-1][:, : min(2, d)].T
    if comp.shape[0] < 2:  # d == 1: a flat second axis
        comp = np.vstack([comp, np.zeros((2 - comp.shape[0], d))])
    signs = np.sign(comp[np.arange(2), np.abs(comp).argmax(axis=1)])
    comp *= np.where(signs == 0, 1.0, signs)[:, None]
    return Pca(mean.astype(np.float32), comp.astype(np.float32))


def pca_project(vectors: np.ndarray, fit: Pca, block: int = 65536) -> np.ndarray:
    """Each row's (x, y) on the map, float32 (n, 2); in blocks, so a mapped pool is read once."""
    out = np.empty((len(vectors), 2), dtype=np.float32)
    for r0 in range(0, len(vectors), block):
        out[r0 : r0 + block] = (np.asarray(vectors[r0 : r0 + block], dtype=np.float32) - fit.mean) @ fit.components.T
    return out


def project_pool(vectors: np.ndarray) -> tuple[Pca, np.ndarray]:
    """Fit the map on ``vectors`` and project every row."""
    fit = pca_fit(vectors)
    return fit, pca_project(vectors, fit)
