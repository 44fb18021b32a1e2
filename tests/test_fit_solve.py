"""The Gauss-Newton solver's stopping rules, preconditioner reuse and threaded passes."""

import numpy as np
import pytest

import jointcal_ap.fit.jointfit as jointfit_module
from jointcal_ap.fit import FitOptions, JointFit
from jointcal_ap.fit.solve import FitProblem, _mul, _mul_t, _pcg, _Split, gauss_newton
from jointcal_ap.refcat import open_refcat
from jointcal_ap.simulate import SurveyConfig, simulate_survey


def spd_system(n=60, condition=1e3, seed=3):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.geomspace(1.0, condition, n)) @ q.T
    return a, rng.normal(size=n)


def test_pcg_chi2_stop_leaves_less_than_the_tolerance():
    """CG stopped on the χ² scale: what the quadratic model could still gain (the exact
    optimum's gain bᵀA⁻¹b minus the iterate's 2bᵀx − xᵀAx) is below the tolerance, in fewer
    iterations than the residual test (on a system conditioned as a preconditioned fit's)."""
    a, b = spd_system()
    exact = np.linalg.solve(a, b)
    best_gain = b @ exact
    identity = lambda x: x  # noqa: E731
    _, full_iters = _pcg(lambda x: a @ x, b, identity, tol=1e-10)
    for tol in (1e-2, 1e-6):
        x, iters = _pcg(lambda x: a @ x, b, identity, tol=1e-10, chi2_tol=tol * best_gain)
        left = best_gain - (2 * b @ x - x @ a @ x)
        assert 0 <= left < tol * best_gain
        assert iters < full_iters


def test_pcg_without_chi2_tolerance_is_unchanged():
    a, b = spd_system()
    x, _ = _pcg(lambda x: a @ x, b, lambda x: x / np.diag(a), tol=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    config = SurveyConfig(n_visits=5, n_stars=1500, seed=11)
    return simulate_survey(config, tmp_path_factory.mktemp("solve") / "sim")


def _capture(survey, model):
    state = {}
    real = jointfit_module.gauss_newton

    def spy(fns, params, theta, white, active, **kwargs):
        state.setdefault("start", (fns, params.copy(), theta.copy(), white, active))
        return real(fns, params, theta, white, active, **kwargs)

    jointfit_module.gauss_newton = spy
    try:
        result = JointFit(survey.read("parquet"), open_refcat(survey.refcat_dir),
                          FitOptions(model=model, star_params=5)).run()
    finally:
        jointfit_module.gauss_newton = real
    state["result"] = result
    return state


@pytest.fixture(scope="module")
def captured(survey):
    """A constrained fit's FitProblem and the starting point of its first Gauss-Newton call."""
    return _capture(survey, "constrained")


@pytest.fixture(scope="module")
def captured_simple(survey):
    """The same for a simple (polynomial per CCD) fit: one slot, with no G factor."""
    return _capture(survey, "simple")


def test_threads_do_not_change_a_step(captured):
    fns, params, theta, white, active = captured["start"]
    assert len(fns.chunks) > 1
    steps = []
    for workers in (1, 2):
        fns.workers = workers
        steps.append(fns.step(params, theta, white, active))
    np.testing.assert_array_equal(steps[0][0], steps[1][0])
    np.testing.assert_array_equal(steps[0][1], steps[1][1])
    assert steps[0][2] == steps[1][2]


def test_reused_preconditioner_gives_the_same_step(captured):
    """The preconditioner is built at the first step and kept: a step with a fresh one (built at
    this very point) agrees to CG's tolerance."""
    fns, params, theta, white, active = captured["start"]
    kept = fns._precond
    assert kept is not None
    try:
        dx_kept, dtheta_kept, _, predicted_kept = fns.step(params, theta, white, active)
        fns._precond = None
        dx_fresh, dtheta_fresh, _, predicted_fresh = fns.step(params, theta, white, active)
    finally:
        fns._precond = kept
    assert predicted_kept == pytest.approx(predicted_fresh, rel=1e-9)
    np.testing.assert_allclose(dx_kept, dx_fresh, rtol=0, atol=1e-5 * np.abs(dx_fresh).max())
    np.testing.assert_allclose(dtheta_kept, dtheta_fresh, rtol=0, atol=1e-5 * np.abs(dtheta_fresh).max())


def test_gauss_newton_stops_once_the_step_gains_nothing(captured):
    """From the association's start: one step does nearly everything; the next predicts a gain
    below the tolerance (or matches its linear model), and the iteration stops there, at the
    same χ² as an iteration run with CG solved to its residual tolerance."""
    fns, params, theta, white, active = captured["start"]
    p, t, stats = gauss_newton(fns, params, theta, white, active)
    assert stats.reason.startswith("converged")
    assert len(stats.cg_iterations) <= 3
    assert stats.chi2_history[1] < 1e-2 * stats.chi2_history[0]
    # CG's χ² stop: the steps after the first need far fewer iterations than the first
    assert all(k < stats.cg_iterations[0] for k in stats.cg_iterations[1:])
    chi2 = fns.chi2(p, t, white, active)
    # the same point, solved further: no measurable gain left
    _, _, _, predicted = fns.step(p, t, white, active)
    assert predicted < 1e-8 * chi2


def test_kept_pixel_basis_gives_the_same_step(captured):
    """The pixel polynomials' bases kept from the first linearisation (read-only) give the same
    step, bit for bit, as bases computed afresh."""
    fns, params, theta, white, active = captured["start"]
    kept = fns._pixel_basis
    assert kept and all(not b.flags.writeable for b in kept)
    try:
        with_kept = fns.step(params, theta, white, active)
        fns._pixel_basis = False  # as for a fit too large to keep them
        fresh = fns.step(params, theta, white, active)
    finally:
        fns._pixel_basis = kept
    for a, b in zip(with_kept[:3], fresh[:3], strict=True):
        np.testing.assert_array_equal(a, b)


def test_clip_rtol_leaves_only_the_confirming_step(captured):
    """With ``clip_rtol`` the solve stops after the full step that matched its linear model to
    that tolerance (not converged); continuing without it lands where one tight solve lands."""
    fns, params, theta, white, active = captured["start"]
    tight_p, tight_t, tight = gauss_newton(fns, params, theta, white, active)
    p, t, loose = gauss_newton(fns, params, theta, white, active, clip_rtol=1e-6)
    assert not loose.converged and loose.reason.startswith("close enough to clip")
    assert len(loose.cg_iterations) < len(tight.cg_iterations)
    p, t, again = gauss_newton(fns, p, t, white, active)
    assert again.converged and again.reason.startswith("converged")
    chi2 = fns.chi2(p, t, white, active)
    assert chi2 == pytest.approx(fns.chi2(tight_p, tight_t, white, active), rel=1e-9)


def test_fit_with_clip_rtol_is_the_fit_without(survey, monkeypatch):
    """The fit's clipping rounds stop on CLIP_RTOL, the last one on the full tolerance: the
    same measurements clipped and the same solution as with every round fully converged."""
    data, refcat = survey.read("parquet"), open_refcat(survey.refcat_dir)
    options = FitOptions(model="constrained", star_params=5, clip_sigma=3.0)  # 3σ: some rounds clip
    fast = JointFit(data, refcat, options).run()
    monkeypatch.setattr(jointfit_module, "CLIP_RTOL", None)
    slow = JointFit(data, refcat, options).run()
    assert fast.n_clipped > 0 and fast.clip_rounds == slow.clip_rounds
    np.testing.assert_array_equal(fast.active, slow.active)
    assert fast.stats.converged and fast.stats.reason.startswith("converged")
    assert fast.chi2 == pytest.approx(slow.chi2, rel=1e-9)
    np.testing.assert_allclose(fast.params, slow.params, rtol=0, atol=1e-6 * np.abs(slow.params).max())


def test_fit_problem_threads_default_to_the_cores(captured):
    assert captured["start"][0].workers >= 1
    assert isinstance(captured["start"][0], FitProblem)
    assert captured["result"].chi2_per_dof == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("model", ["simple", "constrained"])
def test_chunked_star_sums_give_the_one_chunk_fit(survey, monkeypatch, model):
    """Each chunk of measurements sums over its own stars and model blocks and adds them into
    place; a fit cut into several chunks (stars and, for the constrained model, detector blocks
    shared between chunks) gives the fit made in one chunk, up to the order of the sums."""
    import jointcal_ap.fit.solve as solve_module

    data, refcat = survey.read("parquet"), open_refcat(survey.refcat_dir)
    options = FitOptions(model=model, star_params=5)
    seen = []
    real_init = solve_module.FitProblem.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(solve_module.FitProblem, "__init__", init)
    chunked = JointFit(data, refcat, options).run()
    monkeypatch.setattr(solve_module, "MIN_CHUNKS", 1)
    whole = JointFit(data, refcat, options).run()
    many, one = seen
    assert len(many.chunks) > 1 and len(one.chunks) == 1
    # stars are shared between chunks, so the chunked sums really are added into place
    assert len(np.intersect1d(many.chunk_stars[0], many.chunk_stars[1])) > 0
    assert sum(len(s) for s in many.chunk_stars) > len(one.chunk_stars[0])
    np.testing.assert_array_equal(chunked.active, whole.active)
    assert chunked.chi2 == pytest.approx(whole.chi2, rel=1e-9)
    np.testing.assert_allclose(chunked.params, whole.params, rtol=0, atol=1e-7 * np.abs(whole.params).max())
    np.testing.assert_allclose(chunked.theta, whole.theta, rtol=0, atol=1e-6)


def test_threads_do_not_change_the_passes(captured):
    """Residuals are computed a chunk of CCDs per thread (whitening and covariances CCD by CCD):
    the same numbers, bit for bit, on one thread or two."""
    fns, params, theta, white, active = captured["start"]
    out = []
    try:
        for workers in (1, 2):
            fns.workers = workers
            fns._raw_kept = None
            out.append((fns.whitener(params), fns.residuals(params, theta, white, active),
                        fns.raw_residuals(params, theta), fns.meas_cov(params)))
    finally:
        fns.workers = 2
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_residuals_reuse_the_last_pass_at_the_same_point_only(captured, monkeypatch):
    """χ², residuals and raw residuals at one point share one pass over the measurements (the
    residuals after a solve are those of its last χ²); another point, even one changed in place
    in a caller's array, gets a pass of its own."""
    fns, params, theta, white, active = captured["start"]
    passes = []
    real = type(fns)._linearise_chunk

    def counting(self, *args):
        passes.append(args[1])
        return real(self, *args)

    monkeypatch.setattr(type(fns), "_linearise_chunk", counting)
    fns._raw_kept = None
    chi2 = fns.chi2(params, theta, white, active)
    first = len(passes)
    assert first == len(fns.chunks)
    r = fns.residuals(params, theta, white, active)
    raw = fns.raw_residuals(params, theta)
    assert len(passes) == first
    assert np.sum(r * r) + np.sum(fns.prior_chi2(theta)) == chi2
    moved = theta.copy()
    fns.chi2(params, moved, white, active)
    assert len(passes) == first  # equal values: still the same point
    moved[:, 0] += 50.0  # 50 mas east for every star, in the array the cache has seen
    r_moved = fns.residuals(params, moved, white, active)
    assert len(passes) == 2 * first
    assert not np.allclose(r_moved, r)
    fns._raw_kept = None
    np.testing.assert_array_equal(fns.raw_residuals(params, theta), raw)


def test_star_sums_are_added_in_chunk_order(captured):
    """The chunks' star sums are added into place by one sparse product: the same totals, bit
    for bit, as adding each chunk's sums into an (N, k) array one chunk after another."""
    fns = captured["start"][0]
    assert len(fns.chunks) > 1
    assert len(np.intersect1d(fns.chunk_stars[0], fns.chunk_stars[1])) > 0
    rng = np.random.default_rng(5)
    sums = [rng.normal(size=(len(stars), 5)) * 10.0 ** rng.integers(-8, 8, size=(len(stars), 1))
            for stars in fns.chunk_stars]
    expected = np.zeros((fns.n_stars, 5))
    for stars, part in zip(fns.chunk_stars, sums, strict=True):
        expected[stars] += part
    with fns._threads() as run:
        got = fns._sum_to_stars(lambda i: sums[i], 5, run)
    np.testing.assert_array_equal(got, expected)
    # in another order the sums differ in their last bits: the test can tell
    reverse = np.zeros((fns.n_stars, 5))
    for stars, part in reversed(list(zip(fns.chunk_stars, sums, strict=True))):
        reverse[stars] += part
    assert not np.array_equal(reverse, expected)


def test_pixel_scale_must_be_one_per_ccd(survey, monkeypatch):
    """The solver keeps one pixel scale per CCD: a problem whose scale varies inside a CCD is
    refused rather than fitted with the wrong covariances."""
    real = jointfit_module.JointFit._problem

    def varying(self, *args):
        problem, aux = real(self, *args)
        problem.pix_scale = problem.pix_scale.copy()
        problem.pix_scale[0] *= 1.5
        return problem, aux

    monkeypatch.setattr(jointfit_module.JointFit, "_problem", varying)
    with pytest.raises(ValueError, match="pix_scale must be the same"):
        JointFit(survey.read("parquet"), open_refcat(survey.refcat_dir), FitOptions(star_params=5)).run()


@pytest.mark.parametrize("fixture, masked", [("captured", [True, False]), ("captured_simple", [False])])
def test_a_step_masks_clipped_measurements_itself(request, fixture, masked):
    """The step never copies the whitening masked: clipped rows are zeroed where they are used
    (r, Q, the cores W·G; J_m x for a slot whose core is the whitening itself; the
    preconditioner). So clipping by the weights gives exactly the step of a whitening whose
    clipped rows were zeroed by hand with every weight 1, and a step that differs from the
    unclipped one. Constrained model: a G slot, then one without; simple model: one slot without."""
    fns, params, theta, white, active = request.getfixturevalue(fixture)["start"]
    clipped = np.zeros(fns.n_meas, dtype=bool)
    clipped[::7] = True
    weights = np.where(clipped, 0.0, 1.0)
    with fns._threads() as run:
        cores = fns._first_pass(params, fns._stars_in(theta), white, weights, run)[3]
    assert cores.masked == masked
    for core, is_masked in zip(cores, masked, strict=True):
        assert (core is white) == (not is_masked)  # the slot without G shares the caller's whitening
    kept_precond = fns._precond
    steps = []
    try:
        for w, a in ((white, weights), (white * weights[:, None, None], np.ones(fns.n_meas)), (white, active)):
            fns._precond = None  # each step builds its own, from its own masking
            steps.append(fns.step(params, theta, w, a))
    finally:
        fns._precond = kept_precond
    by_weights, by_hand, unclipped = steps
    for a, b in zip(by_weights[:2], by_hand[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert by_weights[2:] == by_hand[2:]  # the same CG iterations and predicted decrease
    assert not np.allclose(by_weights[0], unclipped[0], rtol=1e-6, atol=0)


def test_a_step_refuses_fractional_weights(captured):
    """Masking where the whitening is used is a weighting only for 0 and 1."""
    fns, params, theta, white, _ = captured["start"]
    with pytest.raises(ValueError, match=r"0 \(clipped\) or 1"):
        fns.step(params, theta, white, np.full(fns.n_meas, 0.5))


def test_large_fits_give_the_heap_back_at_every_product(captured, monkeypatch):
    """Above TRIM_EACH_PRODUCT measurements the free heap is given back at each product of
    conjugate gradients, not only before the step; the step is the same either way."""
    import jointcal_ap.fit.solve as solve_module

    fns, params, theta, white, active = captured["start"]
    calls = []
    real = solve_module.release_free_heap
    monkeypatch.setattr(solve_module, "release_free_heap", lambda: (calls.append(1), real())[1])
    small = fns.step(params, theta, white, active)
    before_step_only = len(calls)
    monkeypatch.setattr(solve_module, "TRIM_EACH_PRODUCT", 0)
    calls.clear()
    large = fns.step(params, theta, white, active)
    assert before_step_only == 1
    assert len(calls) >= 1 + large[2]  # one before the step, one per CG iteration at least
    for a, b in zip(small[:2], large[:2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_step_reuses_one_star_sums_buffer_and_releases_it(captured, monkeypatch):
    """Every star sum of a step fills the same buffer (a fresh one per sum had its pages faulted
    in anew), and the step does not hold it afterwards."""
    fns, params, theta, white, active = captured["start"]
    seen = []
    real = type(fns)._sum_to_stars

    def spy(self, chunk_sums, k, run):
        out = real(self, chunk_sums, k, run)
        seen.append(self._sums_buffer)
        return out

    monkeypatch.setattr(type(fns), "_sum_to_stars", spy)
    fns.step(params, theta, white, active)
    assert len(seen) > 3 and seen[0] is not None
    assert all(buf is seen[0] for buf in seen)
    assert fns._sums_buffer is None


def test_split_matrices_give_the_same_products_to_the_last_bit():
    """The CG products read Q and the cores as contiguous entries (_Split): the same numbers as
    from the (n, 2, 2) arrays, row slices included, and the transpose really is the transpose."""
    rng = np.random.default_rng(5)
    m, x = rng.normal(size=(1000, 2, 2)), rng.normal(size=(1000, 2))
    split = _Split.of(m)
    assert len(split) == 1000 and split.entries.flags.c_contiguous
    np.testing.assert_array_equal(_mul(split, x), _mul(m, x))
    np.testing.assert_array_equal(_mul_t(split, x), _mul_t(m, x))
    np.testing.assert_array_equal(_mul(split[100:300], x[100:300]), _mul(m[100:300], x[100:300]))
    np.testing.assert_allclose(_mul_t(split, x), np.einsum("nji,nj->ni", m, x), rtol=1e-14, atol=0)
    assert not np.allclose(_mul_t(split, x), _mul(split, x))


def test_a_step_reads_q_and_its_own_cores_split(captured, monkeypatch):
    """Conjugate gradients get Q and the masked cores as _Split (the whitening, the caller's, as
    it is), and the step is the one of the (n, 2, 2) arrays: the same as a step whose products
    are forced back onto them."""
    import jointcal_ap.fit.solve as solve_module

    fns, params, theta, white, active = captured["start"]
    real = solve_module._Split.of
    split = []

    def of(m):
        split.append(m.shape)
        return real(m)
    monkeypatch.setattr(solve_module._Split, "of", staticmethod(of))
    split_step = fns.step(params, theta, white, active)
    assert split == [(fns.n_meas, 2, 2)] * 2  # Q and the detector slot's cores; not the whitening
    monkeypatch.setattr(solve_module._Split, "of", staticmethod(lambda m: m))
    plain_step = fns.step(params, theta, white, active)
    for a, b in zip(split_step[:2], plain_step[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert split_step[2:] == plain_step[2:]
