"""Gaussian statistics of features and the Fréchet distance between two Gaussians, in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The matrix square root is scipy's ``sqrtm``. When the product is singular (fewer samples than feature
dimensions, constant features) its root can come back non-finite; then ``eps`` is added to both
diagonals, as in the reference FID code. A complex root from round-off is accepted when the imaginary
part of its diagonal is below ``imag_atol`` and discarded; a larger one is an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg


@dataclass
class GaussianStats:
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    n: int


def feature_stats(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (``np.cov``, rows are samples) in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a [N >= 2, D] feature matrix, got shape {x.shape}")
    return GaussianStats(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), n=x.shape[0])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, imag_atol: float = 1e-3) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        worst = np.max(np.abs(np.diagonal(covmean).imag))
        if worst > imag_atol:
            raise ValueError(
                f"sqrtm produced a significant imaginary component ({worst:.3g}); "
                "the covariances are badly conditioned (too few samples?)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def stats_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, eps=eps)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular input: we check finiteness ourselves
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(m)
