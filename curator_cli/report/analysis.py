"""The numbers a report draws from a sample of embeddings: a 2-D PCA projection (an eigendecomposition
of the smaller of the covariance and Gram matrices: the same components as an SVD, several times
faster at a few thousand rows) and exact nearest neighbours by cosine similarity (one matrix product
over the sample)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Projection:
    """Points on the first two principal components, and the share of the variance each explains."""

    coords: np.ndarray  # N x 2
    explained: tuple[float, float]


@dataclass
class Neighbours:
    """For each query row: the rows of its ``k`` nearest neighbours, most similar first, and their
    cosine similarities."""

    indices: np.ndarray  # Q x k
    similarities: np.ndarray  # Q x k


def pca_2d(vectors: np.ndarray) -> Projection:
    """The rows of ``vectors`` on their first two principal components (fewer rows or a constant
    sample give zeros where there is no component)."""
    n = len(vectors)
    coords = np.zeros((n, 2), dtype=np.float32)
    if n < 2:
        return Projection(coords, (0.0, 0.0))
    centred = vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64)
    if centred.shape[1] <= n:  # D x D covariance: its top eigenvectors are the components
        variance, vectors_of = np.linalg.eigh(centred.T @ centred)
        top = np.argsort(variance)[::-1][:2]
        projected = centred @ vectors_of[:, top]
    else:  # N x N Gram matrix: its top eigenvectors scaled by the root of their eigenvalue are the coordinates
        variance, vectors_of = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(variance)[::-1][:2]
        projected = vectors_of[:, top] * np.sqrt(np.clip(variance[top], 0, None))
    variance = np.clip(variance, 0, None)
    total = variance.sum()
    coords[:, :projected.shape[1]] = projected
    explained = [float(variance[top[i]] / total) if total > 0 and i < len(top) else 0.0 for i in range(2)]
    return Projection(coords, (explained[0], explained[1]))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), for cosine similarity as a dot product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float32), where=norms > 0)


def nearest(vectors: np.ndarray, queries: list[int], k: int) -> Neighbours:
    """The ``k`` rows of ``vectors`` most similar (cosine) to each query row, the query itself left out."""
    unit = unit_rows(vectors.astype(np.float32, copy=False))
    k = max(0, min(k, len(vectors) - 1))
    if not queries or k == 0:
        return Neighbours(np.zeros((len(queries), 0), int), np.zeros((len(queries), 0), np.float32))
    similarity = unit[queries] @ unit.T  # Q x N
    similarity[np.arange(len(queries)), queries] = -np.inf  # not its own neighbour
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # k < N: the query itself is never in it
    order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
    indices = np.take_along_axis(top, order, axis=1)[:, :k]
    return Neighbours(indices, np.take_along_axis(similarity, indices, axis=1))
