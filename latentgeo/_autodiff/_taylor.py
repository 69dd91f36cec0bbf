"""Second-order (Taylor-mode) directional derivatives of an ``nn.Module`` through a ``torch.fx`` trace.

Taylor mode: :func:`latentgeo._autodiff.second_order` computes, for a row-wise map ``f`` (a decoder, an embedding),
points ``z`` ``(N, d)`` and velocities ``v`` ``(N, d)``, in one interpretation of the graph:

* ``f(z)``;
* the Jacobian columns ``∂f(z_n)·e_i`` (``i = 1..d``), shape ``(d, *out.shape)`` — the same as
  :func:`latentgeo._autodiff.jacobian_columns`;
* the second directional derivative ``h_n = ∂²f(z_n)[v_n, v_n]``, shape ``out.shape``.

That is what the geodesic equation of an embedded pullback metric needs:
``γ'' = −(JᵀJ)⁻¹ Jᵀ ∂²g[γ', γ']`` (see :mod:`latentgeo.geodesics.ode`).

How. Univariate Taylor propagation (Griewank & Walther, *Evaluating Derivatives*, 2nd ed.,
SIAM 2008, ch. 13): along the curve ``x(t) = z + t v`` every intermediate value ``x`` carries
its first and second derivatives ``ẋ = ∂x·v`` and ``ẍ = ∂²x[v, v]``, next to the ``d`` first-order
tangents of :mod:`._first_order`. All of them are stacked into one tensor
``U = [T_1, …, T_d, ẋ, ẍ]`` of shape ``(d + 2, *x.shape)``. Linear operations (``nn.Linear``,
``+ −``, shape operations, ``sum``/``mean``, ``cat``/``split``, indexing) act on every slot the
same way, so the first-order rules are applied to ``U`` unchanged. Nonlinear operations
get the first-order rule on ``U`` (which already yields ``∂y·ẍ`` in the last slot) plus the
second-order term in the last slot:

* elementwise ``y = σ(x)``: ``ÿ = σ'(x) ẍ + σ''(x) ẋ²``, with closed forms for tanh
  (``σ'' = −2yσ'``), sigmoid (``σ'(1−2y)``), softplus (``βs(1−s)``, ``s = sigmoid(βx)``),
  elu, exp (``y``), relu/leaky_relu/hardtanh (``0``), ``x ** c``, sqrt, rsqrt, log, sin, cos,
  square, reciprocal; any other unary elementwise op gets ``σ'``, ``σ''`` from one nested
  ``jvp`` with tangents of ones;
* ``a · b``: ``+ 2ȧḃ``; ``a / b``: ``− 2ẏḃ / b``; ``A @ B`` (both varying): ``+ 2Ȧ@Ḃ``;
* any other node: the ``d + 2`` slots by ``vmap(jvp(node))`` plus ``∂²node[ẋ, ẋ]`` from a
  ``jvp`` of a ``jvp`` — exact for any differentiable op, slower.

``sum``/``mean`` over a short last axis (≤ 8, e.g. the RBF head's ``(z − c).pow(2).sum(-1)``)
are unrolled into slice additions for the value and the tangents (torch's CPU reduction over an
innermost axis of length 2 is ~10× slower than two slice additions); the value then agrees with
``module(z)`` to rounding, not bit for bit.

Speed (CPU, one thread, float64, 300 points, best of 20, same machine, against nested
``torch.func.jvp`` for ``h`` plus ``vmap(jvp)`` for the columns): 2→64→64→50 tanh MLP
0.97 ms vs 4.5 ms; :class:`~latentgeo.variance.RBFPrecision` with 32 centres and 64 outputs
0.66 ms vs 5.8 ms. The MLP case is bound by its matmuls (``d + 3`` rows of work per point).
The whole geodesic acceleration of a ``GaussianDecoder(mean=that MLP, std=RBF 32→50)``
(``expected`` metric, via the decoder's ``embedding_jet`` + QR): 2.0 ms vs 10.7 ms at 300
points, 0.48 ms vs 5.9 ms at 30 points.

Each decoder class applies this to its own embedding ``g`` in
:meth:`~latentgeo.decoders.Decoder.embedding_jet` (deterministic, Gaussian ``expected``/``mean``,
Bernoulli and categorical decoders, made of ``nn.Module`` s or plain functions) and returns
``(g, J, ∂²g[v, v])`` for the geodesic ODE; this module knows no decoder classes.

Eligibility (tracing, caching, refusals) is the first-order mode's: the same cached
program is used; ``None`` is returned when that module would return ``None`` or when
interpreting the graph raises.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from latentgeo._autodiff import second_order
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    >>> z, v = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    >>> out, cols, h = second_order(net, z, v)
    >>> out.shape, cols.shape, h.shape
    (torch.Size([4, 5]), torch.Size([2, 4, 5]), torch.Size([4, 5]))
    >>> from torch.func import jvp
    >>> ref = jvp(lambda x: jvp(net, (x,), (v,))[1], (z,), (v,))[1]
    >>> bool(torch.allclose(h, ref))
    True
"""


from __future__ import annotations

import torch
from torch.func import jvp, vmap
from torch.utils import _pytree as pytree

from . import _first_order as fo
from ._interpreter import Mode
from ._trace import _Decline, _Unsupported, _arg, _call, _fit, _resolve


# ----------------------------------------------------------------------------- helpers
def _full(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _fit(t, x)


def _add_last(u: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """``u`` with ``corr`` added to its last slot (``ẍ``); no in-place writes (autograd-safe)."""
    last = (u[-1] + corr).unsqueeze(0)
    return torch.cat([u[:-1], last.expand((1,) + tuple(u.shape[1:]))], 0)


# ----------------------------------------------------------------------------- elementwise second derivatives
def _act_second(kind: str, x, y, params):
    """``σ''`` of a first-order activation kind (``None`` when identically zero)."""
    if kind == "tanh":
        return -2.0 * y * (1.0 - y * y)
    if kind == "sigmoid":
        return y * (1.0 - y) * (1.0 - 2.0 * y)
    if kind == "exp":
        return y
    if kind == "softplus":
        beta, thr = params["beta"], params["threshold"]
        bx = beta * x
        s = torch.sigmoid(bx)
        return torch.where(bx > thr, torch.zeros_like(s), beta * s * (1.0 - s))
    if kind == "elu":
        alpha = params["alpha"]
        # x > 0 <=> y > 0 (alpha > 0); y + alpha = alpha e^x on the negative side (works in place)
        return torch.where(y > 0, torch.zeros_like(y), y + alpha)
    if kind in ("relu", "leaky_relu", "hardtanh"):
        return None
    raise _Decline  # pragma: no cover - every activation kind is listed


# ----------------------------------------------------------------------------- second-order rules
# rule(step, root, a, at, kw, D) -> (value, U); U = [T_1..T_d, ẋ, ẍ] of shape (D, *value.shape)
def _s_activation(step, root, a, at, kw, D):
    u = fo._only_first(at)
    kind, spec, is_module = step.params
    if is_module:
        mod = _resolve(root, step.path)
        params = {name: getattr(mod, name) for name in spec}
    else:
        params = {name: _arg(a, kw, pos, name, default) for pos, (name, default) in enumerate(spec, start=1)}
    x = a[0]
    xd = u[-2]
    y, uy = fo._r_activation(step, root, a, at, kw, D)
    s2 = _act_second(kind, x, y, params)  # uses x only for softplus (never in place)
    if s2 is None:
        return y, uy
    return y, _add_last(uy, s2 * xd * xd)


def _s_unary(step, root, a, at, kw, D):
    u = fo._only_first(at)
    x = a[0]
    if not isinstance(x, torch.Tensor):
        raise _Decline
    u = _full(u, x)
    if step.op == "call_method":
        name = step.target
    elif step.op == "call_function":
        name = fo._UNARY_NAMES.get(step.target)
    else:
        name = None
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise _Decline
    ders = fo._unary_derivs(name, x, y, a) if name is not None and not kw else None
    if ders is None:
        def f(w):
            return _call(step, root, (w,) + tuple(a[1:]), kw)

        ones = torch.ones_like(x)
        (_, d1), (_, d2) = jvp(lambda w: jvp(f, (w,), (ones,)), (x,), (ones,))
    else:
        d1, d2 = ders
    uy = u * d1
    xd = u[-2]
    return y, _add_last(uy, d2 * xd * xd)


def _s_mul(step, root, a, at, kw, D):
    y, uy = fo._r_mul(step, root, a, at, kw, D)
    t1, t2 = at
    if t1 is None or t2 is None:
        return y, uy
    return y, _add_last(uy, 2.0 * t1[-2] * t2[-2])


def _s_div(step, root, a, at, kw, D):
    y, uy = fo._r_div(step, root, a, at, kw, D)
    t2 = at[1]
    if t2 is None:
        return y, uy
    return y, _add_last(uy, -2.0 * uy[-2] * t2[-2] / a[1])


def _s_matmul(step, root, a, at, kw, D):
    y, uy = fo._r_matmul(step, root, a, at, kw, D)
    t1, t2 = at
    if t1 is None or t2 is None:
        return y, uy
    return y, _add_last(uy, 2.0 * torch.matmul(t1[-2], t2[-2]))


def _s_reduce(step, root, a, at, kw, D):
    """``sum``/``mean`` (linear). A reduction over a short last axis (the RBF head's
    ``(z - c).pow(2).sum(-1)``) is unrolled into slice additions, value and tangents alike:
    torch's CPU kernel for a reduction over an innermost axis of length 2 is ~10× slower."""
    u = fo._only_first(at)
    x = a[0]
    dim = _arg(a, kw, 1, "dim", None)
    keepdim = _arg(a, kw, 2, "keepdim", False)
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    if (
        not isinstance(x, torch.Tensor) or set(kw) - {"dim", "keepdim"} or len(a) > 3
        or isinstance(dim, bool) or not isinstance(dim, int) or not isinstance(keepdim, bool)
        or x.dim() == 0 or dim % x.dim() != x.dim() - 1 or not 1 <= x.shape[-1] <= _UNROLL
        or not x.is_floating_point()
    ):
        return fo._r_reduce(step, root, a, at, kw, D)
    u = _full(u, x)
    y, t = x[..., 0], u[..., 0]
    for k in range(1, x.shape[-1]):
        y, t = y + x[..., k], t + u[..., k]
    if step.params == "mean":
        y, t = y / x.shape[-1], t / x.shape[-1]
    if keepdim:
        y, t = y.unsqueeze(-1), t.unsqueeze(-1)
    return y, t


_UNROLL = 8


def _linear(rule):
    def r(step, root, a, at, kw, D):
        return rule(step, root, a, at, kw, D)

    return r


#: rule name -> second-order rule; rules linear in the tangents act on every slot of U alike
RULES = {name: _linear(rule) for name, rule in fo.RULES.items()}
RULES.update(activation=_s_activation, unary=_s_unary, mul=_s_mul, div=_s_div, matmul=_s_matmul, reduce=_s_reduce)


def _s_generic(step, root, a, at, kw, D, kwt=None):
    """``vmap(jvp(node))`` over the ``D`` slots plus ``∂²node[ẋ, ẋ]`` (jvp of jvp) in the last one."""
    node = fo._node_as_function(step, root, a, at, kw, kwt)
    if node is None:
        return _call(step, root, a, kw), None
    f_sub, primals, tangents = node
    tans = tuple(_full(t, p) for t, p in zip(tangents, primals))
    y, u = vmap(lambda *ts: jvp(f_sub, primals, ts), out_dims=(None, 0))(*tans)
    xd = tuple(t[-2] for t in tans)
    _, sec = jvp(lambda *xs: jvp(f_sub, xs, xd)[1], primals, xd)
    u = pytree.tree_map(lambda ui, si: _add_last(ui, si) if isinstance(ui, torch.Tensor) else ui, u, sec)
    return y, u


def _finish(template, vals, tans, d):
    leaves = template if isinstance(template, (tuple, list)) else (template,)
    outs, cols, hs = [], [], []
    for x in leaves:
        val, u = vals[x.i], tans[x.i]
        if not isinstance(val, torch.Tensor):
            raise _Unsupported(f"the module returned a {type(val).__name__}, not a tensor")
        if u is None:
            u = val.new_zeros((d + 2,) + tuple(val.shape))
        elif not isinstance(u, torch.Tensor) or u.shape[1:] != val.shape or u.shape[0] != d + 2:
            raise _Unsupported("internal: tangent shape does not match its value")
        outs.append(val)
        cols.append(u[:d])
        hs.append(u[d + 1])
    if isinstance(template, (tuple, list)):
        kind = list if isinstance(template, list) else tuple
        return kind(outs), kind(cols), kind(hs)
    return outs[0], cols[0], hs[0]


# ----------------------------------------------------------------------------- geodesic helper
def _compose(outer, raw, cols, h, v):
    """Push ``(raw, cols (d, N, K), h (N, K))`` through a pure map ``outer`` (second order)."""
    xd = torch.einsum("nd,dnk->nk", v, cols)  # ∂raw·v
    out, ocols = vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)
    # ∂outer·h + ∂²outer[ẋ, ẋ] in one jvp of a jvp
    _, oh = jvp(lambda x, xdot: jvp(outer, (x,), (xdot,))[1], (raw, xd), (xd, h))
    return out, ocols, oh




def _seed(z, v):
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
    return torch.cat([eye, v.unsqueeze(0), torch.zeros_like(v).unsqueeze(0)], 0)


#: Taylor mode: ``d`` Jacobian columns plus ``ẋ`` and ``ẍ`` along ``z + t v``
TAYLOR = Mode("taylor", lambda d: d + 2, _seed, RULES, _s_generic, _finish)
