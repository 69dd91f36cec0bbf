"""Unit tests of :mod:`latentgeo.geodesics.spectral` against closed forms and independent references.

Node sets, quadrature, differentiation and Legendre series are checked against
``numpy.polynomial.legendre`` / ``scipy.special`` and exact polynomials; the collocation map
against twice-integrated right-hand sides; the two solver stages against closed-form geodesics
(linear decoders: straight lines; the stereographic sphere: great circles; the Poincaré disk:
the hyperbolic distance).
"""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre as npleg
from numpy.polynomial import polynomial as nppoly
from scipy import special

import latentgeo as lg
from latentgeo.geodesics import spectral as S
from latentgeo.geodesics.ode import acceleration_fn

D64 = torch.float64


def stereo(z):
    """Inverse stereographic projection R² → S² ⊂ R³ (from the north pole)."""
    s = (z * z).sum(1, keepdim=True)
    return torch.cat([2 * z, s - 1], 1) / (1 + s)


def great_circle(x, y):
    return 2 * torch.asin((x - y).norm(dim=1).clamp(max=2) / 2)


SPHERE = lg.PullbackMetric(lg.DeterministicDecoder(stereo))  # the unit sphere, shared (warm caches)


def poincare_ball(d=2):
    eye = torch.eye(d, dtype=D64)
    return lg.MetricField(lambda z: (2 / (1 - (z * z).sum(-1)))[:, None, None] ** 2 * eye, latent_dim=d)


def hyperbolic_distance(z0, z1):
    n0, n1 = (z0 * z0).sum(1), (z1 * z1).sum(1)
    return torch.acosh(1 + 2 * ((z0 - z1) ** 2).sum(1) / ((1 - n0) * (1 - n1)))


def metric_norm(metric, z, v):
    return torch.einsum("ni,nij,nj->n", v, metric.tensor(z), v).sqrt()


def line_at(z0, z1, t):
    return z0[:, None] + t[None, :, None] * (z1 - z0)[:, None]


A32 = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], dtype=D64)  # non-orthogonal columns
A43 = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, -1.0], [3.0, -1.0, 0.0], [0.5, 0.5, 2.0]], dtype=D64)

# sphere pairs whose shortest arcs stay inside the chart (the last two are long: > 2.5 rad)
SPH_Z0 = torch.tensor([[0.3, -0.2], [-1.3, 0.25], [-0.55, -0.23], [-0.26, 0.18]], dtype=D64)
SPH_Z1 = torch.tensor([[-0.5, 0.6], [1.2, 0.45], [0.82, 0.61], [1.95, -0.29]], dtype=D64)


# ----------------------------------------------------------------------------- LGL nodes, weights, D
@pytest.mark.parametrize("N", [2, 3, 5, 8, 16, 24])
def test_lgl_nodes_are_endpoints_and_roots_of_legendre_derivative(N):
    t, w, D, Vinv = S._lgl_np(N)
    assert t.shape == (N + 1,) and w.shape == (N + 1,) and D.shape == (N + 1, N + 1)
    assert t[0] == 0.0 and t[-1] == 1.0
    assert np.all(np.diff(t) > 0)
    # Vinv maps node values to Legendre coefficients: the inverse of the Legendre–Vandermonde matrix
    np.testing.assert_allclose(Vinv @ npleg.legvander(2 * t - 1, N), np.eye(N + 1), rtol=0, atol=1e-12)
    # interior LGL nodes on [-1, 1] are the zeros of the Jacobi polynomial P^{(1,1)}_{N-1} ∝ P_N'
    ref, _ = special.roots_jacobi(N - 1, 1, 1)
    np.testing.assert_allclose(t[1:-1], (np.sort(ref) + 1) / 2, rtol=0, atol=1e-14)
    dPN = npleg.legder(np.eye(N + 1)[N])
    assert np.abs(npleg.legval(2 * t[1:-1] - 1, dPN)).max() < 1e-11 * N * N
    # the torch accessor returns the same nodes, and rejects too few nodes
    torch.testing.assert_close(S.lgl_nodes(N, D64), torch.as_tensor(t), rtol=0, atol=0)
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError):
            S.lgl_nodes(bad)


@pytest.mark.parametrize("N", [2, 3, 5, 8, 12])
def test_lgl_weights_integrate_exactly_to_degree_2N_minus_1_and_no_further(N):
    t, w, _, _ = S._lgl_np(N)
    assert abs(w.sum() - 1) < 1e-14
    assert np.all(w > 0)
    for k in range(2 * N):
        assert abs(w @ t**k - 1 / (k + 1)) < 1e-14, k
    # degree 2N is not integrated exactly: for P_N(2t-1)² the LGL rule gives 1/N, the integral is 1/(2N+1)
    PN2 = npleg.legval(2 * t - 1, np.eye(N + 1)[N]) ** 2
    assert abs(w @ PN2 - 1 / N) < 1e-13
    assert abs(w @ PN2 - 1 / (2 * N + 1)) > 0.1 / N
    # and, for small N, so is t^{2N} by a visible amount (sharpness of the exactness check above)
    if N <= 8:
        assert abs(w @ t ** (2 * N) - 1 / (2 * N + 1)) > 1e-11


@pytest.mark.parametrize("N", [2, 4, 9, 16])
def test_lgl_differentiation_matrix_is_exact_for_degree_N(N):
    t, _, D, _ = S._lgl_np(N)
    rng = np.random.default_rng(N)
    for deg in (0, 1, N // 2, N):
        c = rng.standard_normal(deg + 1)
        exact = nppoly.polyval(t, nppoly.polyder(c)) if deg else np.zeros_like(t)
        np.testing.assert_allclose(D @ nppoly.polyval(t, c), exact, rtol=0, atol=1e-12 * N * N)
    # closed-form corner entries of the LGL differentiation matrix (on [0, 1]: twice those on [-1, 1])
    assert abs(D[0, 0] + N * (N + 1) / 2) < 1e-10 * N * N
    assert abs(D[N, N] - N * (N + 1) / 2) < 1e-10 * N * N
    # degree N + 1 is not differentiated exactly: P_{N+1}(2t-1) minus its interpolant is
    # ∝ (1-x²) P_N'(x), whose derivative at the ends is of order N²
    e = np.eye(N + 2)[N + 1]
    x = 2 * t - 1
    assert np.abs(D @ npleg.legval(x, e) - 2 * npleg.legval(x, npleg.legder(e))).max() > 0.5


@pytest.mark.parametrize("N", [3, 8, 16])
def test_nodes_to_series_reproduces_polynomials_and_derivatives_anywhere(N):
    rng = np.random.default_rng(10 + N)
    n, d = 2, 3
    C = rng.standard_normal((n, N + 1, d)) / np.arange(1, N + 2)[None, :, None]  # monomial coefficients in t
    t_nodes = S.lgl_nodes(N, D64).numpy()
    vals = np.stack([[nppoly.polyval(t_nodes, C[i, :, k]) for k in range(d)] for i in range(n)]).transpose(0, 2, 1)
    series = S.nodes_to_series(torch.as_tensor(vals))
    assert series.shape == (n, N + 1, d)
    # Legendre coefficients (in x = 2t - 1) from an independent least-squares fit of the exact polynomial
    xs = np.linspace(-1, 1, 4 * N + 7)
    for i in range(n):
        for k in range(d):
            ref = npleg.legfit(xs, nppoly.polyval((xs + 1) / 2, C[i, :, k]), N)
            np.testing.assert_allclose(series[i, :, k].numpy(), ref, rtol=0, atol=1e-11)
    t = torch.as_tensor(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 25)]))
    val = S._eval_series(series, t)
    der = S._eval_series(series, t, derivative=True)
    exact = np.stack([[nppoly.polyval(t.numpy(), C[i, :, k]) for k in range(d)] for i in range(n)]).transpose(0, 2, 1)
    exact_d = np.stack([[nppoly.polyval(t.numpy(), nppoly.polyder(C[i, :, k])) for k in range(d)]
                        for i in range(n)]).transpose(0, 2, 1)
    np.testing.assert_allclose(val.numpy(), exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(der.numpy(), exact_d, rtol=0, atol=1e-10)


@pytest.mark.parametrize("K", [1, 2, 3, 10, 40])
def test_legendre_basis_matches_numpy_legval_and_legder(K):
    rng = np.random.default_rng(K)
    t = np.concatenate([[0.0, 0.5, 1.0], rng.uniform(0, 1, 30)])
    B = S.legendre_basis(torch.as_tensor(t), K).numpy()
    dB = S.legendre_basis(torch.as_tensor(t), K, derivative=True).numpy()
    assert B.shape == dB.shape == (t.size, K)
    x = 2 * t - 1
    for k in range(K):
        e = np.eye(K)[k]
        np.testing.assert_allclose(B[:, k], npleg.legval(x, e), rtol=0, atol=1e-13)
        # d/dt = 2 d/dx
        np.testing.assert_allclose(dB[:, k], 2 * npleg.legval(x, npleg.legder(e)), rtol=1e-12, atol=1e-12)
    # closed forms at the ends: P_k(±1) = (±1)^k, P_k'(1) = k(k+1)/2
    np.testing.assert_allclose(B[0], (-1.0) ** np.arange(K), rtol=0, atol=1e-13)
    np.testing.assert_allclose(B[2], np.ones(K), rtol=0, atol=1e-13)
    np.testing.assert_allclose(dB[2], np.arange(K) * (np.arange(K) + 1.0), rtol=1e-13, atol=0)
    # second derivative (d²/dt² = 4 d²/dx²), used to start collocation from a curve's own accelerations
    d2B = S.legendre_basis(torch.as_tensor(t), K, derivative=2).numpy()
    for k in range(K):
        ref = 4 * npleg.legval(x, npleg.legder(np.eye(K)[k], 2))
        np.testing.assert_allclose(d2B[:, k], ref, rtol=1e-11, atol=1e-11 * max(1.0, float(np.abs(ref).max())))
    with pytest.raises(ValueError, match="derivative"):
        S.legendre_basis(torch.as_tensor(t), K, derivative=3)


# ----------------------------------------------------------------------------- Gauss collocation map
@pytest.mark.parametrize("Q", [2, 3, 7, 16])
def test_gauss_nodes_and_weights(Q):
    tau, w, C = S._gauss_np(Q)
    x, wx = special.roots_legendre(Q)
    np.testing.assert_allclose(tau, (x + 1) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w, wx / 2, rtol=1e-12, atol=0)
    assert C.shape == (Q + 2, Q)
    for k in range(2 * Q):
        assert abs(w @ tau**k - 1 / (k + 1)) < 1e-14, k
    # not degree 2Q: P_Q(2τ-1)² vanishes at the nodes, its integral is 1/(2Q+1)
    assert np.abs(npleg.legval(2 * tau - 1, np.eye(Q + 1)[Q])).max() < 1e-13


def _series_eval(coef, t, derivative=False):
    return S._eval_series(torch.as_tensor(coef)[None, :, None], torch.as_tensor(t), derivative)[0, :, 0].numpy()


@pytest.mark.parametrize("Q", [1, 3, 6, 12])
def test_gauss_collocation_map_integrates_polynomials_twice_exactly(Q):
    tau, _, C = S._gauss_np(Q)
    rng = np.random.default_rng(Q)
    a = rng.standard_normal(Q)  # degree Q - 1: interpolated exactly at Q nodes
    u = nppoly.polyint(a, 2)  # u'' = a, u(0) = 0, u'(0) = 0
    u = nppoly.polysub(u, [0.0, nppoly.polyval(1.0, u)])  # subtract t·u(1): u(1) = 0
    coef = C @ nppoly.polyval(tau, a)
    t = np.linspace(0, 1, 41)
    np.testing.assert_allclose(_series_eval(coef, t), nppoly.polyval(t, u), rtol=0, atol=1e-13)
    np.testing.assert_allclose(_series_eval(coef, t, True), nppoly.polyval(t, nppoly.polyder(u)), rtol=0, atol=1e-12)
    # independent route: the Legendre series' second derivative (numpy) is the interpolant of a
    np.testing.assert_allclose(npleg.legval(2 * t - 1, npleg.legder(coef, 2, scl=2.0)), nppoly.polyval(t, a),
                               rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    "a, u",
    [
        (np.exp, lambda t: np.exp(t) - 1 - t * (math.e - 1)),
        (lambda t: np.cos(3 * t), lambda t: (1 - np.cos(3 * t)) / 9 + t * (np.cos(3) - 1) / 9),
    ],
    ids=["exp", "cos3t"],
)
def test_gauss_collocation_map_is_spectrally_accurate_for_analytic_data(a, u):
    t = np.linspace(0, 1, 57)
    errs = {}
    for Q in (4, 8, 16):
        tau, _, C = S._gauss_np(Q)
        errs[Q] = np.abs(_series_eval(C @ a(tau), t) - u(t)).max()
    assert errs[16] < 1e-14
    assert errs[4] > 1e-6  # not trivially exact: the error decays spectrally with Q
    assert errs[8] < 1e-3 * errs[4]


# ----------------------------------------------------------------------------- stage 1: energy minimisation
def test_energy_of_initial_polynomial_curve_is_exact_for_linear_decoder():
    """max_iter=0 returns the energy of the start curve: for a linear decoder and a degree-N
    polynomial curve the LGL formula is the exact integral ∫‖A γ'(t)‖² dt."""
    N = 7
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A43.T))
    rng = np.random.default_rng(0)
    C = rng.standard_normal((2, N + 1, 3))
    t = S.lgl_nodes(N, D64).numpy()
    nodes = np.stack([np.stack([nppoly.polyval(t, C[i, :, k]) for k in range(3)], 1) for i in range(2)])
    res = S.minimize_spectral_energy(metric, torch.as_tensor(nodes), max_iter=0)
    xg, wg = npleg.leggauss(40)
    tg = (xg + 1) / 2
    exact = []
    for i in range(2):
        vel = np.stack([nppoly.polyval(tg, nppoly.polyder(C[i, :, k])) for k in range(3)], 1)
        exact.append((wg / 2) @ ((vel @ A43.numpy().T) ** 2).sum(1))
    np.testing.assert_allclose(res.energy.numpy(), exact, rtol=1e-12)
    assert res.iterations.tolist() == [0, 0]
    assert not bool(res.converged.any()) and all("no convergence" in r for r in res.reasons)
    torch.testing.assert_close(res.nodes, torch.as_tensor(nodes), rtol=0, atol=0)


def test_energy_gradient_and_gauss_newton_matrix_of_both_paths():
    """Half-gradient against autograd of an independently written energy (embedded and
    MetricField paths); for a linear map the Gauss–Newton matrix is half the exact Hessian,
    and a constant MetricField with M = AᵀA gives the same energy, gradient and matrix."""
    N, n = 6, 2
    _, w, D, _ = (torch.as_tensor(a) for a in S._lgl_np(N))
    Amat = D.T @ (w[:, None] * D)
    g = torch.Generator().manual_seed(1)
    c = torch.randn(n, N + 1, 2, generator=g, dtype=D64) * 0.5

    def check_grad(metric, energy_fn):
        mfn = None if metric.is_embedded else metric.tensor_fn()
        E, G, H, _ = S._energy_terms(metric, mfn, D, w, Amat, c)
        x = c.clone().requires_grad_(True)
        E_ref = energy_fn(x)
        (gx,) = torch.autograd.grad(E_ref.sum(), x)
        torch.testing.assert_close(E, E_ref.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(G, 0.5 * gx[:, 1:-1].reshape(n, -1), rtol=1e-10, atol=1e-12)
        return E, G, H

    def pullback_energy(f):
        def energy(x):
            Y = f(x.reshape(-1, 2)).reshape(n, N + 1, -1)
            V = torch.einsum("jk,nkK->njK", D, Y)
            return (w[None, :, None] * V * V).sum((1, 2))
        return energy

    check_grad(SPHERE, pullback_energy(stereo))
    ball = poincare_ball()
    check_grad(ball, lambda x: (w * (2 / (1 - (x * x).sum(-1))) ** 2 * (torch.einsum("jk,nkd->njd", D, x) ** 2).sum(-1)).sum(1))

    lin = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A32.T))
    E1, G1, H1 = check_grad(lin, pullback_energy(lambda z: z @ A32.T))
    M = A32.T @ A32
    const = lg.MetricField(lambda z: M.expand(z.shape[0], 2, 2), latent_dim=2)
    E2, G2, H2 = check_grad(const, lambda x: torch.einsum("j,nja,ab,njb->n", w, torch.einsum("jk,nkd->njd", D, x), M,
                                                          torch.einsum("jk,nkd->njd", D, x)))
    torch.testing.assert_close(E1, E2, rtol=1e-12, atol=0)
    torch.testing.assert_close(G1, G2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H1, H2, rtol=1e-12, atol=1e-12)
    # exact: E is quadratic, ½ Hessian = kron(Aᵢᵢ, AᵀA) over interior nodes
    P = N - 1
    H_exact = torch.einsum("pq,ab->paqb", Amat[1:-1, 1:-1], M).reshape(P * 2, P * 2)
    torch.testing.assert_close(H1, H_exact.expand(n, -1, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["hessian", "mixed"])
def test_energy_curvature_term_gives_the_exact_hessian(monkeypatch, path):
    """With ``curvature``, the Gauss–Newton matrix plus the block-diagonal curvature term is half
    the exact Hessian of the pseudospectral energy (against torch.func.hessian of an independently
    written energy), for nonlinear MLP decoders in 2-D and 3-D and the stereographic sphere, from the
    Hessian-mode jet (one jet a node) and from the fallback of ``d`` mixed jets a node."""
    if path == "mixed":
        monkeypatch.setattr(S, "_hessian_jet", lambda metric, z: None)
    N = 9
    _, w, D, _ = (torch.as_tensor(a) for a in S._lgl_np(N))
    Amat = D.T @ (w[:, None] * D)
    torch.manual_seed(3)
    cases = []
    for d in (2, 3):
        net = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
        cases.append((lg.PullbackMetric(lg.DeterministicDecoder(net)), d))
    cases.append((SPHERE, 2))
    for metric, d in cases:
        g = torch.Generator().manual_seed(4)
        c = torch.randn(2, N + 1, d, generator=g, dtype=D64) * 0.7
        E, G, H, _, B, per = S._energy_terms(metric, None, D, w, Amat, c, curvature=True)
        assert per == (1 if path == "hessian" else d)
        Hx = S._with_curvature(H, B)
        for i in range(2):
            def energy(x, i=i):
                cc = torch.cat([c[i, :1], x.reshape(-1, d), c[i, -1:]], 0)
                V = D @ metric.embedding(cc)
                return (w[:, None] * V * V).sum()

            x = c[i, 1:-1].reshape(-1)
            torch.testing.assert_close(G[i], torch.func.grad(energy)(x) / 2, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(Hx[i], torch.func.hessian(energy)(x) / 2, rtol=1e-10, atol=1e-11)
        # the Gauss–Newton matrix alone is not the Hessian for these nonlinear maps
        assert float((Hx - H).detach().abs().max()) > 1e-3 * float(H.detach().abs().max())


@pytest.mark.parametrize("d", [2, 4])
def test_newton_energy_stage_needs_fewer_iterations_than_gauss_newton(monkeypatch, d):
    """Embedded metrics take Newton steps once few nodes are active: on the sphere (S^d through the
    inverse stereographic chart), from bulged starts, the same minimum (the great-circle energy) in
    far fewer iterations than Gauss–Newton steps. In 4-D the curvature term is evaluated every
    second iteration (``⌈d/2⌉``) and held in between."""
    if d == 2:
        z0, z1 = SPH_Z0[:3], SPH_Z1[:3]
    else:
        g = torch.Generator().manual_seed(3)
        z0, z1 = torch.randn(3, d, generator=g, dtype=D64), torch.randn(3, d, generator=g, dtype=D64)
    t = S.lgl_nodes(16, D64)
    start = line_at(z0, z1, t) + 0.3 * torch.sin(math.pi * t)[None, :, None]
    calls = []
    terms = S._energy_terms

    def counted(*a, curvature=False, **k):
        calls.append(bool(curvature))
        return terms(*a, curvature=curvature, **k)

    monkeypatch.setattr(S, "_energy_terms", counted)
    newton = S.minimize_spectral_energy(SPHERE, start, max_iter=200)
    n_curv, n_calls = sum(calls), len(calls)
    monkeypatch.setattr(S, "_NEWTON_ENERGY_JETS", 0)
    gn = S.minimize_spectral_energy(SPHERE, start, max_iter=200)
    assert bool(newton.converged.all()) and bool(gn.converged.all()), (newton.reasons, gn.reasons)
    arc = great_circle(stereo(z0), stereo(z1))
    torch.testing.assert_close(newton.energy.sqrt(), arc, rtol=1e-6, atol=0)
    torch.testing.assert_close(newton.energy, gn.energy, rtol=1e-8, atol=0)
    assert int(newton.iterations.sum()) * 2 <= int(gn.iterations.sum()), (newton.iterations, gn.iterations)
    # (calls: the initial terms, then one per iteration)
    if d == 2:
        assert n_curv == n_calls - 1
    else:
        assert 0 < n_curv <= (n_calls - 1) // 2 + 2, (n_curv, n_calls)


def test_linear_decoder_converges_to_evenly_parameterised_line():
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A43.T))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 3, generator=g, dtype=D64)
    z1 = torch.randn(3, 3, generator=g, dtype=D64)
    N = 10
    t = S.lgl_nodes(N, D64)
    line = line_at(z0, z1, t)
    wiggly = (line + 0.3 * torch.sin(math.pi * t)[None, :, None] * torch.randn(3, 1, 3, generator=g, dtype=D64)
              + 0.2 * torch.sin(3 * math.pi * t)[None, :, None])
    wiggly[:, 0], wiggly[:, -1] = z0, z1  # sin(π) is not exactly 0
    res = S.minimize_spectral_energy(metric, wiggly)
    assert bool(res.converged.all()), res.reasons
    assert res.reasons == ["", "", ""]
    assert bool((res.iterations >= 1).all()) and bool((res.iterations < 50).all())
    # endpoints untouched (bit for bit), interior nodes on the evenly parameterised line
    assert torch.equal(res.nodes[:, 0], z0) and torch.equal(res.nodes[:, -1], z1)
    torch.testing.assert_close(res.nodes, line, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.energy, ((z1 - z0) @ A43.T).pow(2).sum(1), rtol=1e-12, atol=0)


def test_ridge_enters_energy_of_linear_decoder():
    ridge = 0.3
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A32.T), ridge=ridge)
    z0 = torch.tensor([[0.2, -1.0], [1.0, 1.0]], dtype=D64)
    z1 = torch.tensor([[1.5, 0.5], [-2.0, 0.3]], dtype=D64)
    t = S.lgl_nodes(8, D64)
    start = line_at(z0, z1, t) + 0.2 * torch.sin(math.pi * t)[None, :, None]
    res = S.minimize_spectral_energy(metric, start)
    assert bool(res.converged.all()), res.reasons
    M = A32.T @ A32 + ridge * torch.eye(2, dtype=D64)
    dz = z1 - z0
    torch.testing.assert_close(res.energy, torch.einsum("ni,ij,nj->n", dz, M, dz), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.nodes, line_at(z0, z1, t), rtol=0, atol=1e-9)


def test_poincare_disk_energy_gives_hyperbolic_distance_and_per_pair_stopping():
    ball = poincare_ball()
    # a moderate pair, an almost degenerate (easy) pair and a hard pair reaching towards the boundary
    z0 = torch.tensor([[0.3, -0.2], [0.1, 0.0], [-0.75, 0.3]], dtype=D64)
    z1 = torch.tensor([[-0.4, 0.5], [0.12, 0.01], [0.8, 0.35]], dtype=D64)
    N = 16
    start = line_at(z0, z1, S.lgl_nodes(N, D64))
    res = S.minimize_spectral_energy(ball, start)
    assert bool(res.converged.all()), res.reasons
    torch.testing.assert_close(res.energy.sqrt(), hyperbolic_distance(z0, z1), rtol=1e-8, atol=0)
    # pairs stop on their own criterion: the easy pair needs far fewer iterations than the hard one
    it = res.iterations.tolist()
    assert it[1] < it[0] < it[2], it
    # the same pairs solved one at a time: the same per-pair results (batching does not couple pairs)
    for i in range(3):
        one = S.minimize_spectral_energy(ball, start[i : i + 1])
        assert abs(int(one.iterations[0]) - it[i]) <= 1  # (rounding may decide the last step)
        torch.testing.assert_close(one.nodes[0], res.nodes[i], rtol=0, atol=1e-12)
    # too few iterations: reported, with a reason
    short = S.minimize_spectral_energy(ball, start[2:], max_iter=1)
    assert not bool(short.converged[0])
    assert "no convergence in 1 iterations" in short.reasons[0]
    assert short.iterations.tolist() == [1]
    # the one step it took still lowered the energy of the straight line
    E_line = S.minimize_spectral_energy(ball, start[2:], max_iter=0).energy
    assert float(short.energy[0]) < float(E_line[0])


def test_energy_minimisation_identical_endpoints_and_bad_input():
    metric = SPHERE
    z = torch.tensor([[0.4, -0.3]], dtype=D64)
    const = z[:, None].expand(1, 9, 2).clone()
    res = S.minimize_spectral_energy(metric, const)
    assert bool(res.converged[0]), res.reasons
    assert float(res.energy[0]) < 1e-25  # zero up to rounding of the decoder
    torch.testing.assert_close(res.nodes, const, rtol=0, atol=1e-14)
    with pytest.raises(ValueError):
        S.minimize_spectral_energy(metric, torch.zeros(1, 2, 2, dtype=D64))


# ----------------------------------------------------------------------------- stage 2: collocation
def _check_great_circle(metric, res, z0, z1, tol):
    x0, x1 = stereo(z0), stereo(z1)
    exact = great_circle(x0, x1)
    n = z0.shape[0]
    assert bool(res.converged.all()), res.reasons
    assert res.reasons == [""] * n
    torch.testing.assert_close(res.length, exact, rtol=1e-8, atol=0)
    assert bool((res.rel_residual <= tol).all()) and bool((res.speed_drift <= tol).all())
    # the log map: metric norm of γ'(0) is the length
    torch.testing.assert_close(metric_norm(metric, z0, res.velocity0), res.length, rtol=1e-7, atol=0)
    t = torch.linspace(0, 1, 21, dtype=D64)
    curve = S._eval_series(res.series, t)
    torch.testing.assert_close(curve[:, 0], z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(curve[:, -1], z1, rtol=0, atol=1e-12)
    # γ'(0) of the series is velocity0
    torch.testing.assert_close(S._eval_series(res.series, t[:1], derivative=True)[:, 0], res.velocity0, rtol=0, atol=1e-12)
    pts = stereo(curve.reshape(-1, 2)).reshape(n, 21, 3)
    normal = torch.linalg.cross(x0, x1)
    normal = normal / normal.norm(dim=1, keepdim=True)
    assert float((pts * normal[:, None]).sum(-1).abs().max()) < 1e-7
    # constant metric speed ‖γ'(t)‖_M = L, measured independently between the collocation nodes
    vel = S._eval_series(res.series, t, derivative=True)
    speed = metric_norm(metric, curve.reshape(-1, 2), vel.reshape(-1, 2)).reshape(n, 21)
    torch.testing.assert_close(speed, res.length[:, None].expand(n, 21), rtol=1e-7, atol=0)
    # constant speed along the shorter arc: the angle from x0 grows linearly in t
    ang = torch.acos((pts * x0[:, None]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(ang, t[None] * exact[:, None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("start", ["line", "stage1"])
def test_collocation_on_sphere_gives_great_circles(start):
    metric = SPHERE
    z0, z1 = SPH_Z0, SPH_Z1
    assert float(great_circle(stereo(z0), stereo(z1)).max()) > 2.5
    if start == "line":
        series = S._pad(S._line_series(z0, z1, 2), 18)
    else:
        er = S.minimize_spectral_energy(metric, line_at(z0, z1, S.lgl_nodes(12, D64)))
        assert bool(er.converged.all()), er.reasons
        series = S.nodes_to_series(er.nodes)
    tol = 1e-9
    res = S.collocate(metric, z0, z1, series, tol=tol)
    _check_great_circle(metric, res, z0, z1, tol)
    assert res.series.shape == (4, 64 + 2, 2)
    assert bool((res.nodes >= 16).all()) and bool((res.iterations >= 1).all())


def test_collocation_of_linear_decoder_is_the_line_in_one_step():
    """a ≡ 0: one fixed-point step from any start gives the straight line exactly."""
    metric = lg.PullbackMetric(lg.DeterministicDecoder(lambda z: z @ A43.T))
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(3, 3, generator=g, dtype=D64)
    z1 = torch.randn(3, 3, generator=g, dtype=D64)
    wiggly = S._line_series(z0, z1, 10) + 0.1 * torch.randn(3, 10, 3, generator=g, dtype=D64) * torch.tensor(
        [0, 0] + [1.0] * 8, dtype=D64)[None, :, None]
    res = S.collocate(metric, z0, z1, wiggly)
    assert bool(res.converged.all()), res.reasons
    assert bool((res.iterations <= 2).all()), res.iterations
    torch.testing.assert_close(res.series, S._line_series(z0, z1, res.series.shape[1]), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.length, ((z1 - z0) @ A43.T).norm(dim=1), rtol=1e-13, atol=0)
    torch.testing.assert_close(res.velocity0, z1 - z0, rtol=0, atol=1e-12)
    assert float(res.residual.max()) < 1e-12


def test_collocation_on_poincare_disk_gives_hyperbolic_distance():
    """MetricField path (Christoffel symbols by autograd, norms from M)."""
    ball = poincare_ball()
    z0 = torch.tensor([[0.3, -0.2], [-0.5, -0.1], [0.0, 0.6]], dtype=D64)
    z1 = torch.tensor([[-0.4, 0.5], [0.6, 0.2], [0.1, -0.55]], dtype=D64)
    tol = 1e-9
    res = S.collocate(ball, z0, z1, S._line_series(z0, z1, 18), tol=tol)
    assert bool(res.converged.all()), res.reasons
    exact = hyperbolic_distance(z0, z1)
    torch.testing.assert_close(res.length, exact, rtol=1e-8, atol=0)
    assert bool((res.rel_residual <= tol).all()) and bool((res.speed_drift <= tol).all())
    torch.testing.assert_close(metric_norm(ball, z0, res.velocity0), exact, rtol=1e-7, atol=0)
    # points of the curve: hyperbolic distance from z0 grows linearly, d(z0, γ(t)) = t·L
    t = torch.linspace(0, 1, 11, dtype=D64)
    pts = S._eval_series(res.series, t)
    dist = hyperbolic_distance(z0[:, None].expand(3, 11, 2).reshape(-1, 2), pts.reshape(-1, 2)).reshape(3, 11)
    torch.testing.assert_close(dist, t[None] * exact[:, None], rtol=0, atol=1e-7)
    # hyperbolic geodesics are not straight (except diameters): pair 0 bends away from the chord
    assert float((pts[0, 5] - 0.5 * (z0[0] + z1[0])).norm()) > 1e-3


def test_under_resolved_collocation_is_reported_and_refinement_fixes_it():
    metric = SPHERE
    z0, z1 = SPH_Z0[1:2], SPH_Z1[1:2]  # 2.39 rad
    start = S._pad(S._line_series(z0, z1, 2), 6)
    coarse = S.collocate(metric, z0, z1, start, nodes=4, max_nodes=4)
    assert not bool(coarse.converged[0])
    assert "collocation" in coarse.reasons[0]
    assert int(coarse.nodes[0]) == 4
    # both certificates see it: the truncation estimate (part of rel_residual) and the speed drift
    assert float(coarse.rel_residual[0]) > 1e-3
    assert float(coarse.speed_drift[0]) > 1e-3
    fine = S.collocate(metric, z0, z1, start, nodes=4, max_nodes=32)
    assert bool(fine.converged[0]), fine.reasons
    assert fine.reasons == [""]
    assert int(fine.nodes[0]) > 4
    torch.testing.assert_close(fine.length, great_circle(stereo(z0), stereo(z1)), rtol=1e-8, atol=0)


def test_identical_endpoints_via_connecting_geodesic():
    metric = SPHERE
    z = torch.tensor([[0.4, -0.3], [1.0, 2.0]], dtype=D64)
    res = lg.connecting_geodesic(metric, z, z)
    assert bool(res.converged.all()), res.message
    assert res.length.tolist() == [0.0, 0.0]
    torch.testing.assert_close(res.initial_velocity, torch.zeros_like(z), rtol=0, atol=0)
    torch.testing.assert_close(res.curve(torch.tensor([0.0, 0.3, 1.0], dtype=D64)), z[:, None].expand(2, 3, 2),
                               rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- Anderson acceleration
LONG_Z0 = torch.tensor([[-0.15, 0.67], [1.18, 1.71], [-1.3, 0.25]], dtype=D64)
LONG_Z1 = torch.tensor([[0.84, -1.16], [-0.07, -0.44], [1.2, 0.45]], dtype=D64)


def test_long_arcs_converge_with_default_settings():
    metric = SPHERE
    exact = great_circle(stereo(LONG_Z0), stereo(LONG_Z1))
    assert float(exact.min()) > 2.3 and float(exact.max()) > 2.7
    res = S.collocate(metric, LONG_Z0, LONG_Z1, S._line_series(LONG_Z0, LONG_Z1, 18))
    assert bool(res.converged.all()), res.reasons
    torch.testing.assert_close(res.length, exact, rtol=1e-8, atol=0)
    assert bool((res.iterations <= 2 * 30).all())
    # and through the whole pipeline, certified by collocation (no shooting fallback)
    cg = lg.connecting_geodesic(metric, LONG_Z0, LONG_Z1, solver=lg.geodesics.Collocation())
    assert bool(cg.converged.all()), cg.message
    torch.testing.assert_close(cg.length, exact, rtol=1e-8, atol=0)


def test_anderson_memory_accelerates_fixed_point_iteration():
    """Long arcs from the straight line at Q = 16: the default Anderson memory converges within
    45 iterations (about 20–40); memory 1 (a one-secant update) has not converged after 50
    (nor after 100: it stalls at a relative residual of ~1e-7–1e-6 or diverges)."""
    metric = SPHERE
    acc, mfn = acceleration_fn(metric), metric.tensor_fn()
    Q = 16
    start = S._line_series(LONG_Z0, LONG_Z1, Q + 2)
    with torch.no_grad():
        full = S._picard(metric, acc, mfn, LONG_Z0, LONG_Z1, start, Q, 1e-6, 50)
        one = S._picard(metric, acc, mfn, LONG_Z0, LONG_Z1, start, Q, 1e-6, 50, memory=1)
    assert bool(full["conv"].all()), full["reasons"]
    assert bool((full["iters"] <= 45).all()), full["iters"]
    assert not bool(one["conv"].any()), one["iters"]
    assert all(r for r in one["reasons"])


# ----------------------------------------------------------------------------- Newton collocation
HARD_Z0 = torch.tensor([[-1.8, -0.88], [1.47, 1.46]], dtype=D64)
HARD_Z1 = torch.tensor([[0.71, 1.59], [-1.34, -0.59]], dtype=D64)


def test_newton_collocation_converges_quadratically_where_the_fixed_point_iteration_does_not():
    """Pairs on which the (Anderson) fixed-point iteration diverges from the stage-1 curve: damped
    (chord) Newton with finite-difference ∂a/∂γ, ∂a/∂γ' converges at the cost of a handful of
    Newton steps, and
    ``collocate`` switches to it by itself."""
    metric = SPHERE
    acc, mfn = acceleration_fn(metric), metric.tensor_fn()
    t = S.lgl_nodes(12)
    er = S.minimize_spectral_energy(metric, HARD_Z0[:, None] + t[None, :, None] * (HARD_Z1 - HARD_Z0)[:, None])
    start = S.nodes_to_series(er.nodes)
    exact = great_circle(stereo(HARD_Z0), stereo(HARD_Z1))
    with torch.no_grad():
        fp = S._picard(metric, acc, mfn, HARD_Z0, HARD_Z1, start, 64, 1e-6, 10)
        nw = S._picard(metric, acc, mfn, HARD_Z0, HARD_Z1, start, 64, 1e-6, 12, newton=True)
    assert not bool(fp["conv"].any())
    assert bool(nw["conv"].all()), nw["reasons"]
    # (chord steps between Jacobians: more, cheaper iterations; the cost is that of ≤ 8 Newton steps)
    assert bool((nw["iters"] <= 12).all()), nw["iters"]
    assert bool((nw["evals"] <= 8 * (2 * 2 + 1) * 64).all()), nw["evals"]
    torch.testing.assert_close(nw["length"], exact, rtol=1e-9, atol=0)
    res = S.collocate(metric, HARD_Z0, HARD_Z1, start, tol=1e-6)
    assert bool(res.converged.all()), res.reasons
    torch.testing.assert_close(res.length, exact, rtol=1e-9, atol=0)


def test_newton_that_stalls_above_one_half_is_stopped_early(monkeypatch):
    """A start far outside Newton's basin (a long arc with its low Legendre coefficients scrambled):
    still above a relative residual of 1/2 after ``_NEWTON_STALL`` iterations, the pair is stopped
    there with a reason that says so, at a fraction of the evaluations; without the rule it runs
    on into a stalled line search and does not converge either."""
    acc, mfn = acceleration_fn(SPHERE), SPHERE.tensor_fn()
    Q = 32
    start = S._line_series(LONG_Z0, LONG_Z1, Q + 2).clone()
    g = torch.Generator().manual_seed(1)
    start[:, 2:8] += torch.randn(start[:, 2:8].shape, generator=g, dtype=D64)
    z0, z1, start = LONG_Z0[2:], LONG_Z1[2:], start[2:]
    assert S._NEWTON_STALL == 6
    with torch.no_grad():
        early = S._picard(SPHERE, acc, mfn, z0, z1, start, Q, 1e-6, 60, newton=True)
        monkeypatch.setattr(S, "_NEWTON_STALL", 10**9)
        late = S._picard(SPHERE, acc, mfn, z0, z1, start, Q, 1e-6, 60, newton=True)
    assert not bool(early["conv"][0]) and not bool(late["conv"][0])
    assert int(early["iters"][0]) == 6
    assert early["reasons"][0].startswith("collocation Newton stalled (residual") and "after 6 iterations" in early["reasons"][0]
    assert "Newton stalled" not in late["reasons"][0] and int(late["iters"][0]) > 6
    # a Newton solve that runs out of iterations says so (not "fixed-point")
    with torch.no_grad():
        few = S._picard(SPHERE, acc, mfn, z0, z1, start, Q, 1e-6, 2, newton=True)
    assert few["reasons"][0] == f"collocation: no convergence in 2 Newton iterations at {Q} nodes " \
        f"(relative residual {float(few['rel'][0]):.2e})"
    assert int(early["evals"][0]) < 0.7 * int(late["evals"][0])


def test_fixed_point_iterations_before_newton_are_an_option():
    """On pairs where the fixed-point iteration diverges, ``fixed_point_iter`` sets what it costs
    before Newton takes over: ``k`` iterations at 64 nodes cost exactly ``64·k`` evaluations more
    than none (Newton straight away), and Newton, starting from the curve it was given rather than
    the diverging iterate, reaches the same great circles. Negative counts are refused."""
    t = S.lgl_nodes(12)
    er = S.minimize_spectral_energy(SPHERE, HARD_Z0[:, None] + t[None, :, None] * (HARD_Z1 - HARD_Z0)[:, None])
    start = S.nodes_to_series(er.nodes)
    exact = great_circle(stereo(HARD_Z0), stereo(HARD_Z1))
    runs = {k: S.collocate(SPHERE, HARD_Z0, HARD_Z1, start, tol=1e-6, nodes=64, max_nodes=64, fixed_point_iter=k)
            for k in (0, 2, 3)}
    for k, r in runs.items():
        assert bool(r.converged.all()), (k, r.reasons)
        torch.testing.assert_close(r.length, exact, rtol=1e-9, atol=0)
        assert r.evaluations.tolist() == (runs[0].evaluations + 64 * k).tolist(), (k, r.evaluations)
    with pytest.raises(ValueError, match="fixed_point_iter"):
        lg.geodesics.Collocation(fixed_point_iter=-1)
    with pytest.raises(ValueError, match=r"fixed_point_iter \(21\) must be <= max_iter \(20\)"):
        lg.geodesics.Collocation(fixed_point_iter=21)
    with pytest.raises(TypeError, match="fixed_point_iter"):
        lg.geodesics.Collocation(fixed_point_iter=1.5)


def test_a_failed_newton_solve_is_refined_only_when_asked():
    """A start outside Newton's basin stalls at 32 nodes: by default the pair is retried at twice
    the nodes; ``refine_failed=False`` (the first global pass of ``connecting_geodesic``, which
    hands such pairs to the piecewise stage) stops it at 32 nodes with the stall as its reason."""
    Q = 32
    start = S._line_series(LONG_Z0, LONG_Z1, Q + 2).clone()
    g = torch.Generator().manual_seed(1)
    start[:, 2:8] += torch.randn(start[:, 2:8].shape, generator=g, dtype=D64)
    z0, z1, start = LONG_Z0[2:], LONG_Z1[2:], start[2:]
    kw = dict(tol=1e-6, nodes=Q, max_nodes=2 * Q, newton=True)
    retried = S.collocate(SPHERE, z0, z1, start, **kw)
    stopped = S.collocate(SPHERE, z0, z1, start, refine_failed=False, **kw)
    assert int(retried.nodes[0]) == 2 * Q
    assert int(stopped.nodes[0]) == Q and not bool(stopped.converged[0])
    assert "Newton stalled" in stopped.reasons[0], stopped.reasons[0]
    assert int(stopped.evaluations[0]) < int(retried.evaluations[0])


def test_newton_started_from_stored_jacobians_takes_chord_steps_to_the_same_geodesic():
    """``collocate(start_jacobian=…)`` with the node blocks kept from a solve of the same pairs:
    Newton starts with chord steps instead of a fresh Jacobian (d + 1 evaluations per node: a
    mixed jet and d forward differences), at a fraction of the evaluations, and reaches the same curves; after a
    small move of the endpoints it still converges, to the great circles."""
    t = S.lgl_nodes(12)
    er = S.minimize_spectral_energy(SPHERE, HARD_Z0[:, None] + t[None, :, None] * (HARD_Z1 - HARD_Z0)[:, None])
    r = S.collocate(SPHERE, HARD_Z0[:1], HARD_Z1[:1], S.nodes_to_series(er.nodes)[:1], tol=1e-6, newton=True,
                    nodes=32, keep_jacobian=True)
    assert bool(r.converged.all()) and r.jacobian.shape == (1, 64, 2, 2, 2)
    Q = int(r.nodes[0])
    assert bool(torch.isfinite(r.jacobian[0, :Q]).all()) and not bool(torch.isfinite(r.jacobian[0, Q:]).any())
    for shift in (0.0, 0.05):
        a, b = HARD_Z0[:1] + shift, HARD_Z1[:1] - shift
        ser = r.series.clone()
        ser[:, 0] += 0.5 * ((a - HARD_Z0[:1]) + (b - HARD_Z1[:1]))
        ser[:, 1] += 0.5 * ((b - HARD_Z1[:1]) - (a - HARD_Z0[:1]))
        fresh = S.collocate(SPHERE, a, b, ser, tol=1e-6, newton=True, nodes=32, start_nodes=r.nodes)
        chord = S.collocate(SPHERE, a, b, ser, tol=1e-6, newton=True, nodes=32, start_nodes=r.nodes,
                            start_jacobian=r.jacobian)
        assert bool(fresh.converged.all()) and bool(chord.converged.all())
        assert int(chord.evaluations[0]) <= 0.7 * int(fresh.evaluations[0]), (chord.evaluations, fresh.evaluations)
        torch.testing.assert_close(chord.length, great_circle(stereo(a), stereo(b)), rtol=1e-9, atol=0)
    # a pair whose blocks are not finite computes its own
    bad = torch.full_like(r.jacobian, float("nan"))
    again = S.collocate(SPHERE, HARD_Z0[:1], HARD_Z1[:1], r.series, tol=1e-6, newton=True, nodes=32,
                        start_nodes=r.nodes, start_jacobian=bad)
    plain = S.collocate(SPHERE, HARD_Z0[:1], HARD_Z1[:1], r.series, tol=1e-6, newton=True, nodes=32, start_nodes=r.nodes)
    assert bool(again.converged.all()) and torch.equal(again.evaluations, plain.evaluations)


def test_warm_start_from_a_result_with_jacobians_needs_fewer_evaluations():
    """``Collocation(keep_jacobians=True)`` keeps the certified pairs' Newton blocks in the result
    (trimmed to the finest resolution used, kept through indexing); a warm start from it for moved
    endpoints certifies the same great circles with fewer evaluations than from the same curves
    without them."""
    # (a short energy stage, so that collocation needs Newton steps and has blocks to keep: from a
    # converged energy curve the fixed-point iteration alone certifies these arcs)
    sol = lg.geodesics.Collocation(keep_jacobians=True, energy_max_iter=3)
    with_j = lg.connecting_geodesic(SPHERE, LONG_Z0, LONG_Z1, solver=sol)
    without = lg.connecting_geodesic(SPHERE, LONG_Z0, LONG_Z1, solver=lg.geodesics.Collocation(energy_max_iter=3))
    assert "_jacobian" not in without.__dict__
    assert not bool(torch.isnan(with_j._jacobian).any())
    J = with_j._jacobian
    assert J.shape == (3, int(with_j.nodes.max()), 2, 2, 2) and with_j[1:]._jacobian.shape[0] == 2
    a, b = LONG_Z0 + 0.02, LONG_Z1 - 0.03
    exact = great_circle(stereo(a), stereo(b))
    w0 = lg.connecting_geodesic(SPHERE, a, b, init=without)
    w1 = lg.connecting_geodesic(SPHERE, a, b, init=with_j)
    assert bool(w0.converged.all()) and bool(w1.converged.all())
    assert w0.method == w1.method == ["collocation"] * 3
    torch.testing.assert_close(w1.length, exact, rtol=1e-9, atol=0)
    assert int(w1.stats["evaluations"].sum()) <= 0.75 * int(w0.stats["evaluations"].sum())


def test_escaping_trajectory_is_stopped_by_the_bound():
    """A geodesic shot towards the north pole leaves every bounded chart region: with ``bound`` the
    integrator stops it and says so instead of shrinking its steps until ``max_steps``."""
    from latentgeo.geodesics.ivp import _geodesic_rhs, dopri5

    acc = acceleration_fn(SPHERE)
    y0 = torch.tensor([[1.0, 0.0, 3.0, 0.0]], dtype=D64)  # heads outwards: reaches the pole at finite τ
    _, _, ok, ns, _, reasons, _ = dopri5(_geodesic_rhs(acc, 2), y0, rtol=1e-8, atol=1e-10, bound=50.0, bound_cols=2,
                                         max_steps=5000)
    assert not bool(ok[0]) and "left the region" in reasons[0] and int(ns[0]) < 500


def test_gmres_solves_batched_systems_to_its_tolerance():
    g = torch.Generator().manual_seed(0)
    A = torch.eye(40, dtype=D64) + 0.3 * torch.randn(3, 40, 40, generator=g, dtype=D64) / math.sqrt(40)
    b = torch.randn(3, 40, generator=g, dtype=D64)
    x = S._gmres(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, max_iter=40, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=0, atol=1e-9)


def test_newton_by_gmres_follows_the_dense_lu_iterates(monkeypatch):
    """The matrix-free GMRES path (used when Q·d is large) takes the same Newton steps as the dense LU."""
    acc, mfn = acceleration_fn(SPHERE), SPHERE.tensor_fn()
    t = S.lgl_nodes(12)
    er = S.minimize_spectral_energy(SPHERE, HARD_Z0[:, None] + t[None, :, None] * (HARD_Z1 - HARD_Z0)[:, None])
    start = S.nodes_to_series(er.nodes)
    with torch.no_grad():
        lu = S._picard(SPHERE, acc, mfn, HARD_Z0, HARD_Z1, start, 64, 1e-6, 12, newton=True)
        monkeypatch.setattr(S, "_KRYLOV_SIZE", 10)
        kr = S._picard(SPHERE, acc, mfn, HARD_Z0, HARD_Z1, start, 64, 1e-6, 12, newton=True)
    assert bool(kr["conv"].all()), kr["reasons"]
    assert torch.equal(kr["iters"], lu["iters"]) and torch.equal(kr["evals"], lu["evals"])
    torch.testing.assert_close(kr["length"], lu["length"], rtol=1e-12, atol=0)


def test_resolution_grid_and_prediction_from_geometric_decay():
    assert S._resolution_grid(32, 512) == [32, 44, 64, 92, 128, 180, 256, 364, 512]
    assert S._resolution_grid(32, 40) == [32, 40]
    # coefficients ‖c_k‖ = 0.8^k: from a relative error 1e-3 at Q = 30, reaching tol/4 = 2.5e-7 takes
    # log(2.5e-4)/log(0.8) ≈ 37.2 more coefficients; with the 10 % margin: ceil(1.1·67.2) = 74
    K = 32
    c = (0.8 ** torch.arange(K, dtype=D64))[None, :, None].repeat(1, 1, 2) / math.sqrt(2)
    exact = math.ceil(1.1 * (30 + math.log(2.5e-4) / math.log(0.8)))
    assert int(S._predict_nodes(c, torch.tensor([1e-3], dtype=D64), 1e-6, 30)[0]) == exact
    c[0, 1::2] *= 0.5  # even/odd alternation: the running maxima follow the envelope (step-wise)
    assert abs(int(S._predict_nodes(c, torch.tensor([1e-3], dtype=D64), 1e-6, 30)[0]) - exact) <= 3
    flat = torch.ones(1, K, 2, dtype=D64)  # no decay: about twice the nodes
    assert int(S._predict_nodes(flat, torch.tensor([1e-3], dtype=D64), 1e-6, 30)[0]) == 66


def test_shortest_start_wins_and_the_line_on_ties():
    from latentgeo.geodesics.connecting import _shortest_start

    n, starts = 3, 3
    L = torch.tensor([[2.0, 1.0, float("nan")], [2.0, 0.5, 4.0], [1.5, 0.7, 3.0]], dtype=D64)  # (starts, n)
    E = torch.ones(starts * n, dtype=D64)  # (the energies play no part)
    er = S.SpectralEnergyResult(nodes=torch.arange(starts * n, dtype=D64)[:, None, None].expand(-1, 4, 2),
                                energy=E, converged=torch.ones(starts * n, dtype=torch.bool),
                                iterations=torch.ones(starts * n, dtype=torch.long), reasons=[""] * (starts * n))
    best, pick = _shortest_start(er, n, starts, L.reshape(-1))
    # pair 0: the second bulge (1.5); pair 1: the first bulge (0.5); pair 2: the line's length is
    # NaN -> the shortest finite one (3.0, second bulge)
    assert best.nodes[:, 0, 0].tolist() == [6.0, 4.0, 8.0] and pick.tolist() == [6, 4, 8]
    assert best.iterations.tolist() == [3, 3, 3]
    tie, _ = _shortest_start(er, n, starts, torch.tensor([[1.0, 1, 1], [1.0, 1, 1], [1.0, 1, 1]], dtype=D64).reshape(-1))
    assert tie.nodes[:, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_eval_series_ignores_zero_padding_but_not_nan():
    """Series padded with zero coefficients (to the finest resolution) evaluate as the unpadded
    ones, from a basis only as long as the last nonzero coefficient; NaN coefficients are kept."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 7, 2, generator=g, dtype=D64)
    pad = torch.cat([c, torch.zeros(3, 500, 2, dtype=D64)], 1)
    t = torch.linspace(0, 1, 33, dtype=D64)
    torch.testing.assert_close(S._eval_series(pad, t, 1), S._eval_series(c, t, 1), rtol=1e-13, atol=1e-13)
    assert S._trim(pad).shape[1] == 7
    bad = pad.clone()
    bad[1, 300, 0] = float("nan")
    assert S._trim(bad).shape[1] == 301
    assert bool(torch.isnan(S._eval_series(bad, t)[1]).any())
