"""The motion model of :mod:`jointcal_ap.refcat.epoch`, written once against an array namespace.

ERFA's ``eraPmsafe`` (then, with an observer, the view from it) as elementwise functions of
arrays, with ``xp`` the namespace they call (``where``, ``sqrt``, ``arctan2``, ``sin``,
``cos``, …): NumPy, NumPy with dual numbers (the Jacobian), or JAX. See the module
docstring of :mod:`jointcal_ap.refcat.epoch` for the model, units and conventions. Private:
the public calls are in :mod:`jointcal_ap.refcat.epoch`.
"""

from __future__ import annotations

import erfa

# ERFA's constants (taken from pyerfa so that the two can never disagree).
_DAYS_PER_JYEAR = erfa.DJY  # days in a Julian year
_C_AU_PER_DAY = erfa.DC  # speed of light, AU/day
_ARCSEC_PER_RAD = erfa.DR2AS
_KMS_TO_AU_PER_DAY = erfa.DAYSEC * 1e3 / erfa.DAU  # 1 km/s in AU/day
_LIGHT_DAYS_PER_AU = erfa.AULT / erfa.DAYSEC  # light time across 1 AU, days
_MAS_PER_RAD = _ARCSEC_PER_RAD * 1e3
_RAD_PER_MAS = 1.0 / _MAS_PER_RAD
# Reciprocals: the kernel multiplies rather than divides (under forward-mode autodiff a
# division by a value is repeated in every tangent lane, a multiplication is cheap).
_DAYS_PER_AU_C = 1.0 / _C_AU_PER_DAY  # light time over 1 AU, days (1/c in day/AU)
_KMS_PER_AU_PER_DAY = 1.0 / _KMS_TO_AU_PER_DAY

# eraPmsafe: parallax floor (arcsec) and the factor on the yearly proper motion (rad).
_PMSAFE_PX_MIN_ARCSEC = 5e-7
_PMSAFE_PM_FACTOR = 326.0
# eraStarpv: largest speed (fraction of c); its parallax floor (1e-7") is below pmsafe's.
_STARPV_BETA_MAX = 0.5

# ---------------------------------------------------------------------------
# The kernel: elementwise over stars; every argument is an array of shape (n,)
# (or broadcastable to it). It is written once against an array namespace ``xp``:
# NumPy (:data:`_NP`, with forward-mode dual numbers for the Jacobian) or JAX
# (:mod:`jointcal_ap.refcat._epoch_jax`, jitted, with JAX's forward-mode autodiff).
# Either way the covariance is carried by the exact Jacobian of this one model.
# ---------------------------------------------------------------------------


def _sin_cos(x, given, xp):
    return xp.sin_cos(x) if given is None else xp.given_sin_cos(x, *given)


def _angles_sin_cos(ra_rad, dec_rad, pmra_mas_yr, pmdec_mas_yr, xp, given=None):
    """Sines and cosines of α, δ, α + μα·1yr and δ + μδ·1yr (the last two for eraPmsafe).

    Returns ((sin α, cos α), (sin δ, cos δ), (sin α₁, cos α₁), (sin δ₁, cos δ₁)),
    and μα = dα/dt, μδ in rad/yr. ``given``: the same four pairs computed
    beforehand (see ``_epoch_jax.given_sin_cos``), or None.
    """
    given = given or (None,) * 4
    sc_a = _sin_cos(ra_rad, given[0], xp)
    sc_d = _sin_cos(dec_rad, given[1], xp)
    pmr_rad_yr = pmra_mas_yr * (_RAD_PER_MAS / sc_d[1])  # dα/dt, as ERFA wants it
    pmd_rad_yr = pmdec_mas_yr * _RAD_PER_MAS
    sc_a1 = _sin_cos(ra_rad + pmr_rad_yr, given[2], xp)
    sc_d1 = _sin_cos(dec_rad + pmd_rad_yr, given[3], xp)
    return (sc_a, sc_d, sc_a1, sc_d1), pmr_rad_yr, pmd_rad_yr


def _norm(x, y, z, xp):
    """|(x, y, z)| with a finite derivative at 0."""
    s2 = x * x + y * y + z * z
    return xp.where(s2 > 0.0, xp.sqrt(xp.where(s2 > 0.0, s2, 1.0)), 0.0)


def _pmsafe_parallax_arcsec(parallax_mas, u0, sin_cos_a1, sin_cos_d1, xp):
    """eraPmsafe's override: max(ϖ, 326·|μ| (rad/yr), 5e-7) in arcsec; also returns whether it applied.

    |μ| is eraSeps(α, δ, α + μα, δ + μδ), the angle moved in one year; ``u0``
    is the unit vector at (α, δ) and ``sin_cos_*1`` the sines and cosines of
    α + μα and δ + μδ.
    """
    ax, ay, az = u0
    (sin_a1, cos_a1), (sin_d1, cos_d1) = sin_cos_a1, sin_cos_d1
    bx, by, bz = cos_d1 * cos_a1, cos_d1 * sin_a1, sin_d1
    sin_sep = _norm(ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx, xp)
    cos_sep = ax * bx + ay * by + az * bz
    pm_rad = xp.arctan2(sin_sep, cos_sep)
    px_arcsec = parallax_mas * 1e-3
    px_floor_arcsec = _PMSAFE_PM_FACTOR * pm_rad
    px_used_arcsec = xp.where(px_arcsec < px_floor_arcsec, px_floor_arcsec, px_arcsec)
    px_used_arcsec = xp.where(
        px_used_arcsec < _PMSAFE_PX_MIN_ARCSEC, _PMSAFE_PX_MIN_ARCSEC, px_used_arcsec
    )
    return px_used_arcsec, px_used_arcsec != px_arcsec


def _star_to_pv(u0, sin_a, cos_a, sin_d, cos_d, pmra_mas_yr, pmdec_mas_yr, px_arcsec, rv_kms, xp):
    """Catalog place → inertial barycentric position (AU) and velocity (AU/day) (ERFA starpv).

    ERFA builds the observed velocity in Cartesian form and splits it again into
    radial and transverse parts; here the parts are written down directly in
    the local frame (û, ê_α, ê_δ): radial v_r, transverse r·(μα*·ê_α + μδ·ê_δ).
    The observed-to-inertial Doppler correction is ERFA's fixed point (ERFA
    iterates it), in closed form.
    """
    # The pmsafe floor (≥ 5e-7") is always above starpv's own (1e-7").
    r_au = _ARCSEC_PER_RAD / px_arcsec
    mu_a_rad_day = pmra_mas_yr * (_RAD_PER_MAS / _DAYS_PER_JYEAR)
    mu_d_rad_day = pmdec_mas_yr * (_RAD_PER_MAS / _DAYS_PER_JYEAR)
    east = (-sin_a, cos_a, 0.0)
    north = (-sin_d * cos_a, -sin_d * sin_a, cos_d)
    # Observed velocity: radial and transverse (AU/day).
    vsr_au_day = rv_kms * _KMS_TO_AU_PER_DAY
    t_au_day = tuple(
        r_au * (mu_a_rad_day * e + mu_d_rad_day * n) for e, n in zip(east, north, strict=True)
    )
    vst_au_day = r_au * _norm(mu_a_rad_day, mu_d_rad_day, 0.0, xp)
    # Excessive speed (over c/2): ERFA sets the velocity to zero.
    fast = (
        vsr_au_day * vsr_au_day + vst_au_day * vst_au_day > (_STARPV_BETA_MAX * _C_AU_PER_DAY) ** 2
    )
    vsr_au_day, vst_au_day = xp.where(fast, 0.0, vsr_au_day), xp.where(fast, 0.0, vst_au_day)
    t_au_day = tuple(xp.where(fast, 0.0, t) for t in t_au_day)
    beta_sr = vsr_au_day * _DAYS_PER_AU_C
    beta_st = vst_au_day * _DAYS_PER_AU_C
    # Observed-to-inertial Doppler correction. ERFA iterates the fixed point
    #   d = 1 + β_r,  β_t = d·β_st,  β_r = d·β_sr + δ,  δ = −w/(√(1−w) + 1),  w = β_r² + β_t²
    # (δ = 1/γ − 1), which has the closed form d = 2/(1 + β_st² + (1 − β_sr)²);
    # β_r = d − 1 is evaluated without cancellation.
    denominator = 1.0 + beta_st * beta_st + (1.0 - beta_sr) * (1.0 - beta_sr)
    d = 2.0 / denominator
    beta_r = (2.0 * beta_sr - beta_sr * beta_sr - beta_st * beta_st) * (0.5 * d)
    # Inertial velocity: radial β_r·c, transverse d × observed.
    vr_au_day = beta_r * _C_AU_PER_DAY
    v_au_day = tuple(vr_au_day * u + d * t for u, t in zip(u0, t_au_day, strict=True))
    return tuple(r_au * u for u in u0), v_au_day


def _catalog_to_pv(params, rv_kms, dt_days, observer_au, xp, given_sin_cos=None):
    """Catalog place → inertial position and velocity (eraPmsafe's floor, then eraStarpv).

    Parameters
    ----------
    params : tuple of 5 arrays, shape (n,)
        α [rad], δ [rad], ϖ [mas] (finite; may be ≤ 0), μα* [mas/yr], μδ [mas/yr].
    rv_kms : array, shape (n,)
        Radial velocity, km/s (finite).
    dt_days : array, shape (n,)
        epoch_to − epoch, days (TDB).
    observer_au : tuple of 3 arrays or None
        Barycentric observer position (x, y, z), AU (for the Rømer delay).
    given_sin_cos : optional
        The sines and cosines from :func:`_angles_sin_cos`, computed beforehand.

    Returns
    -------
    state : tuple of 9 arrays, shape (n,)
        Position (x, y, z) [AU] and inertial velocity (vx, vy, vz) [AU/day] at
        the first epoch, the time to move [days] (with the Rømer delay), the
        input parallax [mas] and the parallax the motion used [arcsec].
    overridden : bool array
        Whether eraPmsafe's floor replaced the parallax.
    cos_dec : array
        cosδ at the input position.
    """
    angles, overridden = _pmsafe_stage(params, xp, given_sin_cos)
    state = _space_motion_stage(*params[2:], *angles, rv_kms, dt_days, observer_au, xp)
    return state, overridden, angles[3]


def _pmsafe_stage(params, xp, given_sin_cos=None):
    """First half of :func:`_catalog_to_pv`: ((sin α, cos α, sin δ, cos δ, ϖ used [arcsec]), overridden)."""
    ra_rad, dec_rad, parallax_mas, pmra_mas_yr, pmdec_mas_yr = params
    sin_cos, _, _ = _angles_sin_cos(ra_rad, dec_rad, pmra_mas_yr, pmdec_mas_yr, xp, given_sin_cos)
    (sin_a, cos_a), (sin_d, cos_d) = sin_cos[:2]
    u0 = (cos_d * cos_a, cos_d * sin_a, sin_d)
    px_used_arcsec, overridden = _pmsafe_parallax_arcsec(parallax_mas, u0, sin_cos[2], sin_cos[3], xp)
    return (sin_a, cos_a, sin_d, cos_d, px_used_arcsec), overridden


def _space_motion_stage(parallax_mas, pmra_mas_yr, pmdec_mas_yr, sin_a, cos_a, sin_d, cos_d,
                        px_used_arcsec, rv_kms, dt_days, observer_au, xp):
    """Second half of :func:`_catalog_to_pv`: its ``state`` from the first half's values."""
    u0 = (cos_d * cos_a, cos_d * sin_a, sin_d)
    p1_au, v_au_day = _star_to_pv(
        u0, sin_a, cos_a, sin_d, cos_d, pmra_mas_yr, pmdec_mas_yr, px_used_arcsec, rv_kms, xp
    )
    dt_days = _romer_delayed(dt_days, u0, observer_au)
    return (*p1_au, *v_au_day, dt_days, parallax_mas, px_used_arcsec)


def _romer_delayed(dt_days, u0, observer_au):
    """Time interval for the light that reaches the observer rather than the barycentre."""
    if observer_au is None:
        return dt_days
    # The light reaching the observer at epoch_to left the star when the light
    # reaching the barycentre at epoch_to + (û·o)/c did.
    return dt_days + _dot(u0, observer_au) * _LIGHT_DAYS_PER_AU


def _light_time_motion(p1_au, v_au_day, dt_days, xp):
    """eraStarpm's straight-line motion from observed place to observed place (AU, AU/day, days).

    Light time at the first epoch, geometric position at the second, light time
    from there, and the observed place at the second epoch.
    """
    tl1_days = xp.sqrt(_dot(p1_au, p1_au)) * _DAYS_PER_AU_C
    p_au = tuple(p + (dt_days + tl1_days) * v for p, v in zip(p1_au, v_au_day, strict=True))
    r2 = _dot(p_au, p_au)
    rdv = _dot(p_au, v_au_day)
    c2mv2 = _C_AU_PER_DAY * _C_AU_PER_DAY - _dot(v_au_day, v_au_day)
    tl2_days = (-rdv + xp.sqrt(rdv * rdv + c2mv2 * r2)) * (1.0 / c2mv2)
    return tuple(
        p + (dt_days + (tl1_days - tl2_days)) * v for p, v in zip(p1_au, v_au_day, strict=True)
    )


def _observe(p2_au, v_au_day, parallax_mas, px_used_arcsec, overridden, observer_au, xp):
    """Position (AU) and inertial velocity (AU/day) → catalog place (eraPvstar), and the view from the observer.

    Returns
    -------
    out : tuple of 5 arrays, shape (n,)
        α [rad, not wrapped], δ [rad] (seen from the observer if any),
        ϖ [mas], μα* [mas/yr], μδ [mas/yr] (barycentric).
    aux : tuple of 2 arrays, shape (n,)
        Radial velocity [km/s]; cosδ of the output position.
    """
    x, y, z = p2_au
    vx_in, vy_in, vz_in = v_au_day
    # Inertial → observed velocity.
    r_au = xp.sqrt(x * x + y * y + z * z)
    inv_r = 1.0 / r_au
    ux, uy, uz = x * inv_r, y * inv_r, z * inv_r
    vr = _dot((ux, uy, uz), (vx_in, vy_in, vz_in))
    tx, ty, tz = vx_in - vr * ux, vy_in - vr * uy, vz_in - vr * uz
    beta_r = vr * _DAYS_PER_AU_C
    beta2 = beta_r * beta_r + (tx * tx + ty * ty + tz * tz) * (_DAYS_PER_AU_C * _DAYS_PER_AU_C)
    d = 1.0 + beta_r
    delta = -beta2 * (1.0 / (xp.sqrt(1.0 - beta2) + 1.0))
    inv_d = 1.0 / d
    vr_obs = _C_AU_PER_DAY * (beta_r - delta) * inv_d
    vx, vy, vz = vr_obs * ux + tx * inv_d, vr_obs * uy + ty * inv_d, vr_obs * uz + tz * inv_d
    # Cartesian → spherical (eraPv2s).
    rxy2 = x * x + y * y
    rxy = xp.sqrt(rxy2)
    xyp = x * vx + y * vy
    rad_day = (x * vy - y * vx) * (1.0 / rxy2)
    decd_rad_day = (vz * rxy2 - z * xyp) * (inv_r * inv_r * (1.0 / rxy))
    rv2_kms = (xyp + z * vz) * (inv_r * _KMS_PER_AU_PER_DAY)
    px2_arcsec = _ARCSEC_PER_RAD * inv_r
    cos_d2 = rxy * inv_r
    pmra2_mas_yr = rad_day * _DAYS_PER_JYEAR * cos_d2 * _MAS_PER_RAD
    pmdec2_mas_yr = decd_rad_day * _DAYS_PER_JYEAR * _MAS_PER_RAD
    # The parallax returned is the star's own, scaled by the change of distance;
    # an overridden parallax only served to move the star.
    parallax2_mas = xp.where(
        overridden, parallax_mas * (px2_arcsec * (1.0 / px_used_arcsec)), px2_arcsec * 1e3
    )

    if observer_au is None:
        ra_seen_rad, dec_seen_rad, cos_d_seen = xp.arctan2(y, x), xp.arctan2(z, rxy), cos_d2
    else:
        # Annual parallax: direction of r·û − o, i.e. û − ϖ·o with ϖ in rad (as eraPmpx).
        parallax2_rad = parallax2_mas * _RAD_PER_MAS
        sx, sy, sz = (u - parallax2_rad * o for u, o in zip((ux, uy, uz), observer_au, strict=True))
        sxy = xp.sqrt(sx * sx + sy * sy)
        ra_seen_rad, dec_seen_rad = xp.arctan2(sy, sx), xp.arctan2(sz, sxy)
        cos_d_seen = sxy * (1.0 / xp.sqrt(sx * sx + sy * sy + sz * sz))

    out = (ra_seen_rad, dec_seen_rad, parallax2_mas, pmra2_mas_yr, pmdec2_mas_yr)
    return out, (rv2_kms, cos_d_seen)


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _kernel(params, rv_kms, dt_days, observer_au, xp, given_sin_cos=None):
    """The whole model: eraPmsafe, then the view from the observer.

    :func:`_catalog_to_pv`, :func:`_light_time_motion` and :func:`_observe` in
    turn. Returns ``out`` (α [rad], δ [rad], ϖ [mas], μα* [mas/yr],
    μδ [mas/yr]) and ``aux`` (radial velocity [km/s], cosδ in, cosδ out).
    """
    state, overridden, cos_d = _catalog_to_pv(params, rv_kms, dt_days, observer_au, xp, given_sin_cos)
    # Stage boundaries: the state (and its derivatives) is computed once, not once per output
    # (XLA would otherwise fuse each output's derivative with its own copy of the stages).
    state = xp.stage(state)
    p2_au = xp.stage(_light_time_motion(state[0:3], state[3:6], state[6], xp))
    out, (rv2_kms, cos_d_seen) = _observe(
        p2_au, state[3:6], state[7], state[8], overridden, observer_au, xp
    )
    return out, (rv2_kms, cos_d, cos_d_seen)



# ---------------------------------------------------------------------------
# Preparing the inputs and finishing the outputs (both backends).
# ---------------------------------------------------------------------------


def _prepare(
    ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch_yr, epoch_to_yr, xp
):
    finite = xp.isfinite
    moved = finite(pmra_mas_yr) & finite(pmdec_mas_yr) & finite(epoch_yr) & finite(epoch_to_yr)
    params = (
        xp.deg2rad(ra_deg),
        xp.deg2rad(dec_deg),
        xp.where(finite(parallax_mas), parallax_mas, 0.0),
        xp.where(moved, pmra_mas_yr, 0.0),
        xp.where(moved, pmdec_mas_yr, 0.0),
    )
    rv = xp.where(finite(rv_kms), rv_kms, 0.0)
    dt_days = xp.where(moved, (epoch_to_yr - epoch_yr) * _DAYS_PER_JYEAR, 0.0)
    return moved, params, rv, dt_days


def _finish(moved, out, aux, ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, xp):
    ra_out_deg = xp.mod(xp.rad2deg(out[0]), 360.0)
    ra_out_deg = xp.where(ra_out_deg >= 360.0, 0.0, ra_out_deg)
    return (
        xp.where(moved, ra_out_deg, ra_deg),
        xp.where(moved, xp.rad2deg(out[1]), dec_deg),
        xp.where(moved & xp.isfinite(parallax_mas), out[2], parallax_mas),
        xp.where(moved, out[3], pmra_mas_yr),
        xp.where(moved, out[4], pmdec_mas_yr),
        xp.where(moved & xp.isfinite(rv_kms), aux[0], rv_kms),
    )


def _scaled_jacobian(jac, cos_dec_in, cos_dec_out, xp):
    """∂(α, δ, ...)/∂(α, δ, ...) in rad → ∂(α*, δ, ...)/∂(α*, δ, ...) in mas (5×5 nested lists of rows).

    δα* = cosδ·δα, with cosδ at the input position for the inputs and at the
    output position for the outputs.
    """
    ones = xp.ones_like(cos_dec_in)
    scale_in = (cos_dec_in * _MAS_PER_RAD, _MAS_PER_RAD * ones, ones, ones, ones)
    scale_out = (cos_dec_out * _MAS_PER_RAD, _MAS_PER_RAD * ones, ones, ones, ones)
    inv_scale_in = [1.0 / s for s in scale_in]
    return [[jac[i][k] * (scale_out[i] * inv_scale_in[k]) for k in range(5)] for i in range(5)]




def _observer_tuple(observer_au):
    """(3,) or (n, 3) AU → tuple of three arrays that broadcast against (n,)."""
    return tuple(observer_au[..., i] for i in range(3))
