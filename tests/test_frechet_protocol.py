"""The pinned Fréchet-distance protocol (``evaluation.frechet``): statistics in float64 whatever the features'
dtype, the ``eps`` retry when the product's root is not finite, and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import frechet
from evaluation.frechet import feature_stats, frechet_distance


def test_statistics_are_float64_even_for_float32_features():
    """Inception features come in float32; a float32 mean/covariance of 2048-d features with large means loses
    the digits FID is reported with."""
    rs = np.random.RandomState(0)
    x = (1000.0 + rs.randn(300, 6)).astype(np.float32)
    s = feature_stats(x)
    ref = x.astype(np.float64)
    assert s.mu.dtype == np.float64 and s.sigma.dtype == np.float64 and s.n == 300
    np.testing.assert_array_equal(s.mu, ref.mean(axis=0))
    np.testing.assert_array_equal(s.sigma, np.cov(ref, rowvar=False))  # unbiased (N - 1), as torch-fidelity


def test_a_non_finite_root_is_retried_with_eps_on_both_diagonals(monkeypatch):
    rs = np.random.RandomState(1)
    a, b = rs.randn(50, 4), rs.randn(50, 4) + 0.5
    sa, sb = feature_stats(a), feature_stats(b)
    real, calls = frechet._sqrtm, []

    def sqrtm(m):  # the first root (of the singular product) comes back non-finite
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real(m)

    monkeypatch.setattr(frechet, "_sqrtm", sqrtm)
    eps = 1e-2
    got = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma, eps=eps)
    off = np.eye(4) * eps
    np.testing.assert_allclose(calls[1], (sa.sigma + off) @ (sb.sigma + off))
    covmean = real((sa.sigma + off) @ (sb.sigma + off)).real
    want = np.sum((sa.mu - sb.mu) ** 2) + np.trace(sa.sigma) + np.trace(sb.sigma) - 2 * np.trace(covmean)
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-12)


def test_bad_shapes_and_too_few_samples_are_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
