"""Second-order (Taylor-mode) directional derivatives of an ``nn.Module`` through a ``torch.fx`` trace.

:func:`traced_second_order` computes, for a row-wise map ``f`` (a decoder, an embedding),
points ``z`` ``(N, d)`` and velocities ``v`` ``(N, d)``, in one interpretation of the graph:

* ``f(z)``;
* the Jacobian columns ``∂f(z_n)·e_i`` (``i = 1..d``), shape ``(d, *out.shape)`` — the same as
  :func:`latentgeo._fxjac.traced_jvp_columns`;
* the second directional derivative ``h_n = ∂²f(z_n)[v_n, v_n]``, shape ``out.shape``.

That is what the geodesic equation of an embedded pullback metric needs:
``γ'' = −(JᵀJ)⁻¹ Jᵀ ∂²g[γ', γ']`` (see :mod:`latentgeo.geodesics.ode`).

How. Univariate Taylor propagation (Griewank & Walther, *Evaluating Derivatives*, 2nd ed.,
SIAM 2008, ch. 13): along the curve ``x(t) = z + t v`` every intermediate value ``x`` carries
its first and second derivatives ``ẋ = ∂x·v`` and ``ẍ = ∂²x[v, v]``, next to the ``d`` first-order
tangents of :mod:`latentgeo._fxjac`. All of them are stacked into one tensor
``U = [T_1, …, T_d, ẋ, ẍ]`` of shape ``(d + 2, *x.shape)``. Linear operations (``nn.Linear``,
``+ −``, shape operations, ``sum``/``mean``, ``cat``/``split``, indexing) act on every slot the
same way, so ``_fxjac``'s first-order rules are applied to ``U`` unchanged. Nonlinear operations
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
(``expected`` metric, via :func:`embedding_second_order` + QR): 2.0 ms vs 10.7 ms at 300
points, 0.48 ms vs 5.9 ms at 30 points.

:func:`embedding_second_order` applies this to the embedding ``g`` of an embedded
:class:`~latentgeo.metric.PullbackMetric` (deterministic, Gaussian ``expected``/``mean`` and
Bernoulli decoders made of ``nn.Module``s) and returns ``(g, J, ∂²g[v, v])`` for the geodesic ODE.

Eligibility (tracing, caching, refusals) is exactly :mod:`latentgeo._fxjac`'s: the same cached
program is used; ``None`` is returned when that module would return ``None`` or when
interpreting the graph raises.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from latentgeo._fxtaylor import traced_second_order
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    >>> z, v = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    >>> out, cols, h = traced_second_order(net, z, v)
    >>> out.shape, cols.shape, h.shape
    (torch.Size([4, 5]), torch.Size([2, 4, 5]), torch.Size([4, 5]))
    >>> from torch.func import jvp
    >>> ref = jvp(lambda x: jvp(net, (x,), (v,))[1], (z,), (v,))[1]
    >>> bool(torch.allclose(h, ref))
    True
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vmap
from torch.utils import _pytree as pytree

from . import _fxjac as fj

__all__ = ["traced_second_order", "embedding_second_order"]


# ----------------------------------------------------------------------------- helpers
def _full(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return fj._fit(t, x)


def _add_last(u: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """``u`` with ``corr`` added to its last slot (``ẍ``); no in-place writes (autograd-safe)."""
    last = (u[-1] + corr).unsqueeze(0)
    return torch.cat([u[:-1], last.expand((1,) + tuple(u.shape[1:]))], 0)


# ----------------------------------------------------------------------------- elementwise second derivatives
def _act_second(kind: str, x, y, params):
    """``σ''`` of an ``_fxjac`` activation kind (``None`` when identically zero)."""
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
    raise fj._Decline  # pragma: no cover - every _fxjac kind is listed


_UNARY_NAMES = {
    torch.log: "log", torch.sqrt: "sqrt", torch.rsqrt: "rsqrt", torch.sin: "sin", torch.cos: "cos",
    torch.square: "square", torch.reciprocal: "reciprocal", operator.pow: "pow", torch.pow: "pow",
}


def _unary_derivs(name, x, y, a):
    """Closed-form ``(σ', σ'')`` or ``None``."""
    if name == "pow":
        if len(a) != 2 or isinstance(a[1], bool) or not isinstance(a[1], (int, float)):
            return None
        p = a[1]
        if p == 0:
            z = torch.zeros_like(y)
            return z, z
        if p == 1:
            return torch.ones_like(y), torch.zeros_like(y)
        if p == 2:
            return 2.0 * x, torch.full_like(y, 2.0)
        return p * x.pow(p - 1), (p * (p - 1)) * x.pow(p - 2)
    if len(a) != 1:
        return None
    if name == "log":
        r = 1.0 / x
        return r, -r * r
    if name == "sqrt":
        r = 1.0 / y
        return 0.5 * r, -0.25 * r * r * r
    if name == "rsqrt":
        y2 = y * y
        return -0.5 * y2 * y, 0.75 * y2 * y2 * y
    if name == "sin":
        return torch.cos(x), -y
    if name == "cos":
        return -torch.sin(x), -y
    if name == "square":
        return 2.0 * x, torch.full_like(y, 2.0)
    if name == "reciprocal":
        y2 = y * y
        return -y2, 2.0 * y2 * y
    return None


# ----------------------------------------------------------------------------- second-order rules
# rule(step, root, a, at, kw, D) -> (value, U); U = [T_1..T_d, ẋ, ẍ] of shape (D, *value.shape)
def _s_activation(step, root, a, at, kw, D):
    u = fj._only_first(at, False)
    kind, spec, is_module = step.params
    if is_module:
        mod = fj._resolve(root, step.path)
        params = {name: getattr(mod, name) for name in spec}
    else:
        params = {name: fj._arg(a, kw, pos, name, default) for pos, (name, default) in enumerate(spec, start=1)}
    x = a[0]
    xd = u[-2]
    y, uy = fj._r_activation(step, root, a, at, kw, D, False)
    s2 = _act_second(kind, x, y, params)  # uses x only for softplus (never in place)
    if s2 is None:
        return y, uy
    return y, _add_last(uy, s2 * xd * xd)


def _s_unary(step, root, a, at, kw, D):
    u = fj._only_first(at, False)
    x = a[0]
    if not isinstance(x, torch.Tensor):
        raise fj._Decline
    u = _full(u, x)
    if step.op == "call_method":
        name = step.target
    elif step.op == "call_function":
        name = _UNARY_NAMES.get(step.target)
    else:
        name = None
    y = fj._call(step, root, a, kw)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise fj._Decline
    ders = _unary_derivs(name, x, y, a) if name is not None and not kw else None
    if ders is None:
        def f(w):
            return fj._call(step, root, (w,) + tuple(a[1:]), kw)

        ones = torch.ones_like(x)
        (_, d1), (_, d2) = jvp(lambda w: jvp(f, (w,), (ones,)), (x,), (ones,))
    else:
        d1, d2 = ders
    uy = u * d1
    xd = u[-2]
    return y, _add_last(uy, d2 * xd * xd)


def _s_mul(step, root, a, at, kw, D):
    y, uy = fj._r_mul(step, root, a, at, kw, D, False)
    t1, t2 = at
    if t1 is None or t2 is None:
        return y, uy
    return y, _add_last(uy, 2.0 * t1[-2] * t2[-2])


def _s_div(step, root, a, at, kw, D):
    y, uy = fj._r_div(step, root, a, at, kw, D, False)
    t2 = at[1]
    if t2 is None:
        return y, uy
    return y, _add_last(uy, -2.0 * uy[-2] * t2[-2] / a[1])


def _s_matmul(step, root, a, at, kw, D):
    y, uy = fj._r_matmul(step, root, a, at, kw, D, False)
    t1, t2 = at
    if t1 is None or t2 is None:
        return y, uy
    return y, _add_last(uy, 2.0 * torch.matmul(t1[-2], t2[-2]))


def _s_reduce(step, root, a, at, kw, D):
    """``sum``/``mean`` (linear). A reduction over a short last axis (the RBF head's
    ``(z - c).pow(2).sum(-1)``) is unrolled into slice additions, value and tangents alike:
    torch's CPU kernel for a reduction over an innermost axis of length 2 is ~10× slower."""
    u = fj._only_first(at, False)
    x = a[0]
    dim = fj._arg(a, kw, 1, "dim", None)
    keepdim = fj._arg(a, kw, 2, "keepdim", False)
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    if (
        not isinstance(x, torch.Tensor) or set(kw) - {"dim", "keepdim"} or len(a) > 3
        or isinstance(dim, bool) or not isinstance(dim, int) or not isinstance(keepdim, bool)
        or x.dim() == 0 or dim % x.dim() != x.dim() - 1 or not 1 <= x.shape[-1] <= _UNROLL
        or not x.is_floating_point()
    ):
        return fj._r_reduce(step, root, a, at, kw, D, False)
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
        return rule(step, root, a, at, kw, D, False)

    return r


_SECOND = {
    fj._r_activation: _s_activation,
    fj._r_unary: _s_unary,
    fj._r_mul: _s_mul,
    fj._r_div: _s_div,
    fj._r_matmul: _s_matmul,
    fj._r_reduce: _s_reduce,
}
# rules that are linear in the tangents (same rule for every slot of U)
for _rule in (fj._r_constant, fj._r_identity, fj._r_linear_module, fj._r_linear_function, fj._r_add,
              fj._r_neg, fj._r_reshape, fj._r_permute, fj._r_getitem, fj._r_cat, fj._r_split):
    _SECOND[_rule] = _linear(_rule)
# _r_getattr only ever returns non-tensors (else it declines): no tangent, linear
_SECOND[fj._r_getattr] = _linear(fj._r_getattr)


def _s_generic(step, root, a, at, kw, D, kwt=None):
    """``vmap(jvp(node))`` over the ``D`` slots plus ``∂²node[ẋ, ẋ]`` (jvp of jvp) in the last one."""
    leaves, spec = pytree.tree_flatten((list(a), kw))
    tleaves, _ = pytree.tree_flatten(([fj._tangent_tree(v, t) for v, t in zip(a, at)], kwt or {
        k: pytree.tree_map(lambda _: fj._NO, v) for k, v in kw.items()}))
    if len(tleaves) != len(leaves):
        raise fj._Unsupported(f"cannot align tangents with the arguments of {step.target!r}")
    idx = [i for i, t in enumerate(tleaves) if isinstance(t, torch.Tensor)]
    if not idx:
        return fj._call(step, root, a, kw), None

    def f_sub(*xs):
        args = list(leaves)
        for i, x in zip(idx, xs):
            args[i] = x
        aa, kk = pytree.tree_unflatten(args, spec)
        return fj._call(step, root, aa, kk)

    primals = tuple(leaves[i] for i in idx)
    tans = tuple(_full(tleaves[i], leaves[i]) for i in idx)
    y, u = vmap(lambda *ts: jvp(f_sub, primals, ts), out_dims=(None, 0))(*tans)
    xd = tuple(t[-2] for t in tans)
    _, sec = jvp(lambda *xs: jvp(f_sub, xs, xd)[1], primals, xd)
    u = pytree.tree_map(lambda ui, si: _add_last(ui, si) if isinstance(ui, torch.Tensor) else ui, u, sec)
    return y, u


# ----------------------------------------------------------------------------- interpreter
def _run(prog, root: nn.Module, z: torch.Tensor, v: torch.Tensor):
    n, d = z.shape
    D = d + 2
    size = len(prog.steps)
    vals: list[Any] = [None] * size
    tans: list[Any] = [None] * size
    for i, s in enumerate(prog.steps):
        op = s.op
        if op == "input":
            vals[i] = z
            eye = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
            tans[i] = torch.cat([eye, v.unsqueeze(0), torch.zeros_like(v).unsqueeze(0)], 0)
            continue
        if op == "attr":
            vals[i] = fj._resolve(root, s.path)
            continue
        if op == "const":
            vals[i] = s.value
            continue
        if op == "output":
            return _finish(s.args[0], vals, tans, d)
        if s.flat:  # no nested argument containers (most nodes): skip the generic gathering
            a = [vals[x.i] if type(x) is fj._Ref else x for x in s.args]
            at = [tans[x.i] if type(x) is fj._Ref else None for x in s.args]
            has_t = any(t is not None for t in at)
            if s.kwargs:
                kw = {k: vals[x.i] if type(x) is fj._Ref else x for k, x in s.kwargs.items()}
                kwt = {k: tans[x.i] if type(x) is fj._Ref else None for k, x in s.kwargs.items()}
                kw_has_t = fj._has_tangent(kwt)
            else:
                kw, kwt, kw_has_t = s.kwargs, None, False
        else:
            a, at = fj._gather(list(s.args), vals, tans)
            kw, kwt = fj._gather(dict(s.kwargs), vals, tans)
            has_t = fj._has_tangent(at)
            kw_has_t = fj._has_tangent(kwt)
        if not (has_t or kw_has_t):
            vals[i] = fj._call(s, root, a, kw)
            continue
        if kw_has_t:
            kwt_tree = {k: fj._tangent_tree(kw[k], kwt[k]) for k in kw}
            vals[i], tans[i] = _s_generic(s, root, a, at, kw, D, kwt_tree)
            continue
        rule = _SECOND.get(s.rule)
        try:
            if rule is None:
                raise fj._Decline
            vals[i], tans[i] = rule(s, root, a, at, kw, D)
        except fj._Decline:
            vals[i], tans[i] = _s_generic(s, root, a, at, kw, D)
    raise fj._Unsupported("the traced graph has no output")  # pragma: no cover


def _finish(template, vals, tans, d):
    leaves = template if isinstance(template, (tuple, list)) else (template,)
    outs, cols, hs = [], [], []
    for x in leaves:
        val, u = vals[x.i], tans[x.i]
        if not isinstance(val, torch.Tensor):
            raise fj._Unsupported(f"the module returned a {type(val).__name__}, not a tensor")
        if u is None:
            u = val.new_zeros((d + 2,) + tuple(val.shape))
        elif not isinstance(u, torch.Tensor) or u.shape[1:] != val.shape or u.shape[0] != d + 2:
            raise fj._Unsupported("internal: tangent shape does not match its value")
        outs.append(val)
        cols.append(u[:d])
        hs.append(u[d + 1])
    if isinstance(template, (tuple, list)):
        kind = list if isinstance(template, list) else tuple
        return kind(outs), kind(cols), kind(hs)
    return outs[0], cols[0], hs[0]


# ----------------------------------------------------------------------------- API
# second-order failures per module, kept apart from _fxjac's first-order ones:
# module -> {(id(program), dtype, device, d): (program, reason)}
_FAILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def traced_second_order(module: nn.Module, z: torch.Tensor, v: torch.Tensor):
    """Output, Jacobian columns and second directional derivative of ``module`` via its fx trace.

    Args:
        module: an ``nn.Module`` applied row-wise to a batch ``(N, d)`` of points.
        z: ``(N, d)`` floating-point points.
        v: ``(N, d)`` directions (cast to ``z``'s dtype).

    Returns:
        ``(out, cols, h)`` or ``None``. ``out = module(z)``: a tensor or a flat tuple/list of
        tensors, as the module returns. ``cols`` has the same structure with leaves
        ``(d, *leaf.shape)``: ``cols[i, n] = ∂f(z_n)·e_i`` (as :func:`~latentgeo._fxjac.traced_jvp_columns`).
        ``h`` has leaves ``leaf.shape``: ``h[n] = ∂²f(z_n)[v_n, v_n]``. ``None`` when the module is
        not eligible (same rules and cache as :mod:`latentgeo._fxjac`: does not trace, random or
        training-mode dropout/batch-norm, in-place ops, forward hooks, called under an active
        ``torch.func`` transform, ...) or when interpreting the graph fails; use nested
        ``torch.func.jvp`` then.

    Raises:
        ValueError: ``module`` is not an ``nn.Module``; ``z`` is not a floating ``(N, d)``
            tensor; ``v`` is not a tensor of ``z``'s shape.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"traced_second_order needs an nn.Module, got {type(module).__name__}")
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError(
            "z must be a floating-point tensor of shape (N, d), got "
            + (f"{tuple(z.shape)} of dtype {z.dtype}" if isinstance(z, torch.Tensor) else type(z).__name__)
        )
    if not isinstance(v, torch.Tensor) or v.shape != z.shape:
        raise ValueError(
            f"v must be a tensor of z's shape {tuple(z.shape)}, got "
            + (str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__)
        )
    if fj._transforms_active():
        return None
    entry = fj._entry(module)
    if isinstance(entry, str):
        return None
    failed = _FAILED.get(module)
    if failed is None:
        failed = {}
        _FAILED[module] = failed
    key = (id(entry), z.dtype, z.device, z.shape[1])
    if key in failed and failed[key][0] is entry:
        return None
    try:
        return _run(entry, module, z, v.to(device=z.device, dtype=z.dtype))
    except Exception as exc:  # an op torch.func cannot transform, an unsupported structure, ...
        failed[key] = (entry, f"interpreting the traced graph failed: {type(exc).__name__}: {exc}")
        return None


# ----------------------------------------------------------------------------- geodesic helper
def _compose(outer, raw, cols, h, v):
    """Push ``(raw, cols (d, N, K), h (N, K))`` through a pure map ``outer`` (second order)."""
    xd = torch.einsum("nd,dnk->nk", v, cols)  # ∂raw·v
    out, ocols = vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)
    # ∂outer·h + ∂²outer[ẋ, ẋ] in one jvp of a jvp
    _, oh = jvp(lambda x, xdot: jvp(outer, (x,), (xdot,))[1], (raw, xd), (xd, h))
    return out, ocols, oh


def embedding_second_order(metric, z: torch.Tensor, v: torch.Tensor):
    """``(g(z), J, ∂²g(z)[v, v])`` of an embedded :class:`~latentgeo.metric.PullbackMetric`, or ``None``.

    For the geodesic ODE ``γ'' = −(JᵀJ)⁻¹ Jᵀ ∂²g[γ', γ']``. ``g = metric.embedding``:
    ``(N, d) -> (N, K)``; returns ``g (N, K)``, ``J (N, K, d)`` and ``h (N, K)``, the same numbers
    as nested ``torch.func.jvp`` through ``metric.embedding`` (to rounding). Handles
    :class:`~latentgeo.decoders.DeterministicDecoder`, :class:`~latentgeo.decoders.GaussianDecoder`
    (kinds ``"expected"``/``"mean"``, ``model=`` or ``mean=``/``std=``) and
    :class:`~latentgeo.decoders.BernoulliDecoder` whose callables are ``nn.Module``s that
    :func:`traced_second_order` accepts. ``None`` (use nested ``jvp``) otherwise: another metric
    or decoder, a non-embedded kind, ``metric.fast_path`` off, plain functions, an ineligible
    module, or an active ``torch.func`` transform. No input checks (like ``metric.embedding``).
    """
    from .decoders import BernoulliDecoder, DeterministicDecoder, GaussianDecoder, _bernoulli_sqrt_embedding
    from .metric import PullbackMetric

    if not isinstance(metric, PullbackMetric) or not metric.is_embedded or not getattr(metric, "fast_path", True):
        return None
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or not isinstance(v, torch.Tensor) or v.shape != z.shape:
        return None
    dec, kind = metric.decoder, metric.kind
    n, d = z.shape

    def call(f):
        if not isinstance(f, nn.Module):
            return None
        return traced_second_order(f, z, v)

    def flat(r):
        out, cols, h = r
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
            return None
        return out.reshape(n, -1), cols.reshape(d, n, -1), h.reshape(n, -1)

    parts = []
    if type(dec) is DeterministicDecoder:
        r = call(dec.f)
        parts = [r and flat(r)]
    elif type(dec) is GaussianDecoder:
        if dec.model is not None:
            r = call(dec.model)
            if r is None or not (isinstance(r[0], (tuple, list)) and len(r[0]) == 2):
                return None
            parts = [flat((r[0][k], r[1][k], r[2][k])) for k in range(2)]
        else:
            r = call(dec.mean)
            parts = [r and flat(r)]
            if kind != "mean":
                r = call(dec.std)
                parts.append(r and flat(r))
        if kind == "mean":
            parts = parts[:1]
        if len(parts) == 2 and all(p is not None for p in parts) and parts[0][0].shape != parts[1][0].shape:
            return None  # let the generic path raise its error message
    elif type(dec) is BernoulliDecoder:
        f = dec.logits if dec.logits is not None else dec.probs
        r = call(f)
        r = r and flat(r)
        if r is None:
            return None
        if dec.logits is not None:
            outer = _bernoulli_sqrt_embedding if kind == "fisher" else torch.sigmoid
        else:
            outer = (lambda p: 2.0 * torch.asin(torch.sqrt(p))) if kind == "fisher" else None
        parts = [r if outer is None else _compose(outer, *r, v)]
    else:
        return None
    if not parts or any(p is None for p in parts):
        return None
    g = torch.cat([p[0] for p in parts], 1)
    cols = torch.cat([p[1] for p in parts], 2)
    h = torch.cat([p[2] for p in parts], 1)
    return g, cols.permute(1, 2, 0), h
