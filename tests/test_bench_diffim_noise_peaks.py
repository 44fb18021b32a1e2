"""The differencing benchmark's noise-peak expectation is right for a field whose answer is known.

``benchmarks/bench_diffim.py`` sets each tool's false detections beside the count a Gaussian
random field with the same measured correlation throws above the threshold. This checks its
λ2 estimate (lag-1 autocorrelation) on white noise filtered by a Gaussian of σ = 2 px, where
λ2 = 1 / (2σ²) = 0.125, and that the expected count agrees with the footprints our detector
finds on such a field, within Poisson scatter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_diffim import noise_field_moments, noise_peaks_expected
from jointcal_ap.diffim.detection import _footprint_peaks


def _field(seed: int, n: int = 2048, sigma: float = 2.0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((n, n))
    z = ndimage.gaussian_filter(w, sigma, mode="wrap")
    return (z / z.std()).astype(np.float32)


def test_lambda2_of_gaussian_filtered_white_noise():
    z = _field(3)
    free = np.ones(z.shape, bool)
    free[:100, :100] = False                       # masked pixels are left out of the estimate
    area, lam2 = noise_field_moments(z, free, float(z[free].std()))
    assert area == z.size
    assert abs(lam2 - 0.125) < 0.004


def test_expected_noise_peaks_match_footprints_found():
    found = expected = 0.0
    for seed in range(4):
        z = _field(10 + seed)
        area, lam2 = noise_field_moments(z, np.ones(z.shape, bool), float(z.std()))
        found += sum(len(_footprint_peaks(z, 4.0, sign, 1)[0]) for sign in (1, -1))
        expected += noise_peaks_expected(4.0, area, lam2)
    # ~300 expected over 4 × 2048² at 4σ (pixel sampling included): Poisson σ ~6 %; without the
    # sampling term the expectation is ~18 % high and this fails
    assert 0.85 * expected < found < 1.15 * expected
    assert noise_peaks_expected(6.0, area, lam2) < noise_peaks_expected(5.0, area, lam2) / 10
