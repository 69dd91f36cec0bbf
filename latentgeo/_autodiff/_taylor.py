"""Second-order (Taylor-mode) directional derivatives of an ``nn.Module`` through a ``torch.fx`` trace.

Taylor mode: :func:`latentgeo._autodiff.second_order` computes, for a row-wise map ``f`` (a decoder, an embedding),
points ``z`` ``(N, d)`` and velocities ``v`` ``(N, d)``, in one interpretation of the graph:

* ``f(z)``;
* the Jacobian columns ``∂f(z_n)·e_i`` (``i = 1..d``), shape ``(d, *out.shape)`` — the same as
  :func:`latentgeo._autodiff.jacobian_columns`;
* the second directional derivative ``h_n = ∂²f(z_n)[v_n, v_n]``, shape ``out.shape``.

That is what the geodesic equation of an embedded pullback metric needs:
``γ'' = −(JᵀJ)⁻¹ Jᵀ ∂²g[γ', γ']`` (see :mod:`latentgeo.geodesics.ode`). Two more layouts of the
same slots (:class:`_Layout`): the mixed mode (``∂²f[v, e_i]``, for the acceleration's exact
velocity Jacobian) and the Hessian mode (``∂²f[e_i, e_j]``, ``i ≤ j``, no velocity: the curvature
term of an energy's Hessian in ``1 + d + d(d+1)/2`` rows a point, where ``d`` mixed passes carry
``d (2d + 2)``; in the energy stage of a 2-D digits VAE's geodesics, 0.7 ms of 2.3 a Newton iteration).

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

import functools
import math

import torch
from torch.func import jvp, vmap
from torch.utils import _pytree as pytree

from . import _first_order as fo
from ._interpreter import Mode
from ._trace import _Decline, _Unsupported, _arg, _call, _fit, _lift, _resolve


# ----------------------------------------------------------------------------- helpers
def _full(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _fit(t, x)


class _Layout:
    """Where the slots of a second-order tangent ``U`` live, for the three second-order modes.

    ``U = [T_1, …, T_d, (ẋ,) S_1, …, S_m]``: the ``d`` first-order columns ``T_i = ∂x·e_i``, in
    the Taylor and mixed modes the first derivative ``ẋ = ∂x·v`` along the velocity, and ``m``
    second-order slots ``S_k = ∂²x[L_k, R_k]`` for pairs of first-order directions:

    * Taylor mode (``"taylor"``): ``m = 1``, ``(L, R) = (v, v)``: ``S_1 = ẍ = ∂²x[v, v]``;
    * mixed mode (``"mixed"``): ``m = d``, ``L_k = v``, ``R_k = e_k``: ``S_i = ∂²x[v, e_i]``, the
      velocity's column of the Hessian (``∂²x[v, v] = Σ_i v_i S_i``);
    * Hessian mode (``"hessian"``, no velocity and no ``ẋ`` slot): ``m = d(d+1)/2``,
      ``(L_k, R_k) = (e_i, e_j)`` for the pairs ``i ≤ j`` in row-major order
      (:func:`hessian_pairs`): the upper triangle of the Hessian, ``S_k = ∂²x[e_i, e_j]``.

    Every nonlinear rule adds to ``S_k`` the bilinear term of its second derivative taken at the
    tangents ``(left(U)[k], right(U)[k])`` of ``(L_k, R_k)``: for ``σ(x)`` it is
    ``σ''(x)·left·right``; for a product ``a·b`` it is ``left(a)·right(b) + right(a)·left(b)``.
    The Taylor and mixed modes share ``left = ẋ`` over all slots (no slot axis; it broadcasts).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.mixed = kind != "taylor"  # the second-order slots carry a leading slot axis

    def d(self, D: int) -> int:
        if self.kind == "hessian":
            return int(round((math.sqrt(9 + 8 * D) - 3) / 2))
        return (D - 1) // 2 if self.kind == "mixed" else D - 2

    def slots(self, d: int) -> int:
        return {"taylor": d + 2, "mixed": 2 * d + 1, "hessian": d + d * (d + 1) // 2}[self.kind]

    def first(self, D: int) -> int:
        """Index of the first second-order slot."""
        d = self.d(D)
        return d if self.kind == "hessian" else d + 1

    def left(self, u: torch.Tensor, D: int, nd=None) -> torch.Tensor:
        """Tangents of the left directions ``L_k``: ``ẋ`` (no slot axis) or ``(m, *x.shape)``
        (Hessian mode; with ``nd``, lifted to ``1 + nd`` axes)."""
        d = self.d(D)
        if self.kind != "hessian":
            return u[d]
        t = u[_pair_index(d, u.device)[0]]
        return t if nd is None else _lift(t, nd)

    def right(self, u: torch.Tensor, D: int, nd=None) -> torch.Tensor:
        """Tangents of the right directions ``R_k``, ``(m, *x.shape)`` (with ``nd``, lifted)."""
        d = self.d(D)
        if self.kind == "hessian":
            t = u[_pair_index(d, u.device)[1]]
        else:
            t = u[:d] if self.kind == "mixed" else u[d : d + 1]
        return t if nd is None else _lift(t, nd)

    def add(self, u: torch.Tensor, corr: torch.Tensor, D: int, owned: bool = False) -> torch.Tensor:
        """``u`` with ``corr`` (broadcast to ``(m, *x.shape)``) added to its second-order slots.

        ``owned``: ``u`` is the rule's own new tensor (not a view or an input's tangent); then,
        unless autograd records, the slots are updated in place. Otherwise a new tensor is built:
        copying the other slots costs about as much as the rule's first-order product
        (7 % of a 10-D geodesic solve)."""
        f = self.first(D)
        sec = u[f:]
        if _updatable(u, corr, owned, sec.shape):
            sec += corr
            return u
        return torch.cat([u[:f], (sec + corr).expand(sec.shape)], 0)

    def add_square(self, uy: torch.Tensor, s2: torch.Tensor, u: torch.Tensor, D: int, owned: bool = False) -> torch.Tensor:
        """``uy`` plus ``s2 · left(u) · right(u)`` in its second-order slots (an elementwise map's
        second-order term; ``u`` its input's full tangent), in place where ``add`` would be. In
        Hessian mode, block by block of the row-major pairs (``(i, j ≥ i)``: ``s2·T_i`` times the
        view ``T[i:]``, one fused multiply-add each) instead of gathering ``2m`` slot copies: in
        10-D the gathers of an RBF head's ``(N, C, d)`` tangents were a third of the jet."""
        kind = self.kind
        d = self.d(D)
        if not _updatable(uy, s2, owned, uy.shape[1:]):
            return self.add(uy, s2 * self.left(u, D) * self.right(u, D), D, owned=owned)
        if kind == "taylor":
            uy[d + 1].addcmul_(s2 * u[d], u[d])
        elif kind == "mixed":  # (s2·ẋ) times the d columns
            uy[d + 1 :].addcmul_(s2 * u[d], u[:d])
        else:
            off = d
            for i in range(d):
                uy[off : off + d - i].addcmul_(s2 * u[i], u[i:d])
                off += d - i
        return uy


def _updatable(u: torch.Tensor, corr: torch.Tensor, owned: bool, shape) -> bool:
    """Whether a correction ``corr`` that broadcasts to ``shape`` may be added into slots of ``u``
    in place: ``u`` is the rule's own contiguous tensor and autograd does not record."""
    return (owned and u._base is None and u.is_contiguous() and corr.dtype == u.dtype
            and not (torch.is_grad_enabled() and (u.requires_grad or corr.requires_grad))
            and _broadcasts_to(corr.shape, shape))


@functools.lru_cache(maxsize=None)
def hessian_pairs(d: int) -> tuple:
    """The pairs ``(i, j)``, ``i ≤ j``, of the Hessian mode's slots, in row-major order, as two
    tuples ``(I, J)``; slot ``k`` holds ``∂²x[e_{I[k]}, e_{J[k]}]``."""
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def unpack_hessian(h: torch.Tensor) -> torch.Tensor:
    """A packed upper triangle ``(..., m)`` (the order of :func:`hessian_pairs`) as the symmetric
    ``(..., d, d)`` matrix."""
    m = h.shape[-1]
    d = int(round((math.sqrt(1 + 8 * m) - 1) / 2))
    return h[..., _sym_index(d, h.device)].reshape(h.shape[:-1] + (d, d))


_SYM: dict = {}


def _sym_index(d: int, device) -> torch.Tensor:
    key = (d, str(device))
    if key not in _SYM:
        I, J = hessian_pairs(d)
        pos = {(i, j): k for k, (i, j) in enumerate(zip(I, J))}
        _SYM[key] = torch.tensor([pos[min(a, b), max(a, b)] for a in range(d) for b in range(d)], device=device)
    return _SYM[key]


_PAIR_INDEX: dict = {}


def _pair_index(d: int, device) -> tuple:
    key = (d, str(device))
    r = _PAIR_INDEX.get(key)
    if r is None:
        I, J = hessian_pairs(d)
        r = _PAIR_INDEX[key] = (torch.tensor(I, device=device), torch.tensor(J, device=device))
    return r


def _broadcasts_to(small, big) -> bool:
    """Whether ``small`` broadcasts to ``big`` unchanged (``torch.broadcast_shapes`` is pure Python
    over torch's reference implementation: 60 µs a call, 5 % of a k-means fit)."""
    return len(small) <= len(big) and all(s == 1 or s == b for s, b in zip(reversed(small), reversed(big)))


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
# rule(step, root, a, at, kw, D) -> (value, U); U laid out as in _Layout
def _rules(L: _Layout) -> dict:
    """The rule table of one second-order layout: first-order rules on every slot (linear ops
    need nothing more), plus the second-order terms of the nonlinear ones."""

    def activation(step, root, a, at, kw, D):
        u = fo._only_first(at)
        kind, spec, is_module = step.params
        if is_module:
            mod = _resolve(root, step.path)
            params = {name: getattr(mod, name) for name in spec}
        else:
            params = {name: _arg(a, kw, pos, name, default) for pos, (name, default) in enumerate(spec, start=1)}
        x = a[0]
        u = _full(u, x)
        y, uy = fo._r_activation(step, root, a, at, kw, D)  # (in place, it overwrites x, not u)
        s2 = _act_second(kind, x, y, params)  # uses x only for softplus (never in place)
        if s2 is None:
            return y, uy
        return y, L.add_square(uy, s2, u, D, owned=True)

    def unary(step, root, a, at, kw, D):
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
        closed = fo.elementwise_derivs(step, root, a, kw)  # (before the call: it may be in place)
        y = _call(step, root, a, kw)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise _Decline
        if closed is not None:
            d1, d2 = closed
            uy = u * d1
            return y, (uy if d2 is None else L.add_square(uy, d2, u, D, owned=True))
        ders = fo._unary_derivs(name, x, y, a) if name is not None and not kw else None
        if ders is None:
            def f(w):
                return _call(step, root, (w,) + tuple(a[1:]), kw)

            ones = torch.ones_like(x)
            (_, d1), (_, d2) = jvp(lambda w: jvp(f, (w,), (ones,)), (x,), (ones,))
        else:
            d1, d2 = ders
        return y, L.add_square(u * d1, d2, u, D, owned=True)

    def mul(step, root, a, at, kw, D):
        y, uy = fo._r_mul(step, root, a, at, kw, D)
        t1, t2 = at
        if t1 is None or t2 is None:
            return y, uy
        nd = y.dim()  # ∂²(ab)[l, r] adds a_l·b_r + a_r·b_l
        return y, L.add(uy, L.left(t1, D, nd) * L.right(t2, D, nd) + L.left(t2, D, nd) * L.right(t1, D, nd), D,
                        owned=True)

    def div(step, root, a, at, kw, D):
        y, uy = fo._r_div(step, root, a, at, kw, D)
        t2 = at[1]
        if t2 is None:
            return y, uy
        nd = y.dim()  # y·b = a: ∂²y[l, r] adds −(y_l·b_r + y_r·b_l) / b
        corr = L.left(uy, D, nd) * L.right(t2, D, nd) + L.right(uy, D, nd) * L.left(t2, D, nd)
        return y, L.add(uy, -corr / a[1], D, owned=True)

    def matmul(step, root, a, at, kw, D):
        y, uy = fo._r_matmul(step, root, a, at, kw, D)
        t1, t2 = at
        if t1 is None or t2 is None:
            return y, uy
        nd = y.dim()
        corr = (torch.matmul(L.left(t1, D, nd), L.right(t2, D, nd))
                + torch.matmul(L.right(t1, D, nd), L.left(t2, D, nd)))
        return y, L.add(uy, corr, D, owned=True)

    rules = dict(fo.RULES)
    rules.update(activation=activation, unary=unary, mul=mul, div=div, matmul=matmul, reduce=_s_reduce)
    return rules


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


def _generic(L: _Layout):
    def generic(step, root, a, at, kw, D, kwt=None):
        """``vmap(jvp(node))`` over the ``D`` slots plus ``∂²node[L_k, R_k]`` (a jvp of a jvp) in
        the second-order slots."""
        node = fo._node_as_function(step, root, a, at, kw, kwt)
        if node is None:
            return _call(step, root, a, kw), None
        f_sub, primals, tangents = node
        tans = tuple(_full(t, p) for t, p in zip(tangents, primals))
        y, u = vmap(lambda *ts: jvp(f_sub, primals, ts), out_dims=(None, 0))(*tans)
        if L.kind == "hessian":
            def second2(ls, rs):
                return jvp(lambda *xs: jvp(f_sub, xs, ls)[1], primals, rs)[1]

            sec = vmap(second2)(tuple(L.left(t, D) for t in tans), tuple(L.right(t, D) for t in tans))
        else:
            xd = tuple(L.left(t, D) for t in tans)

            def second(*ps):
                return jvp(lambda *xs: jvp(f_sub, xs, xd)[1], primals, ps)[1]

            if L.mixed:
                sec = vmap(second)(*(L.right(t, D) for t in tans))  # leaves (d, *leaf.shape)
            else:
                sec = pytree.tree_map(lambda si: si.unsqueeze(0), second(*xd))
        u = pytree.tree_map(lambda ui, si: L.add(ui, si, D) if isinstance(ui, torch.Tensor) else ui, u, sec)
        return y, u

    return generic


def _finisher(L: _Layout):
    def finish(template, vals, tans, d):
        D = L.slots(d)
        f = L.first(D)
        leaves = template if isinstance(template, (tuple, list)) else (template,)
        outs, cols, hs = [], [], []
        for x in leaves:
            val, u = vals[x.i], tans[x.i]
            if not isinstance(val, torch.Tensor):
                raise _Unsupported(f"the module returned a {type(val).__name__}, not a tensor")
            if u is None:
                u = val.new_zeros((D,) + tuple(val.shape))
            elif not isinstance(u, torch.Tensor) or u.shape[1:] != val.shape or u.shape[0] != D:
                raise _Unsupported("internal: tangent shape does not match its value")
            outs.append(val)
            cols.append(u[:d])
            hs.append(u[f:] if L.mixed else u[f])
        if isinstance(template, (tuple, list)):
            kind = list if isinstance(template, list) else tuple
            return kind(outs), kind(cols), kind(hs)
        return outs[0], cols[0], hs[0]

    return finish


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


def _seed_mixed(z, v):
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
    return torch.cat([eye, v.unsqueeze(0), z.new_zeros((d, n, d))], 0)


def _seed_hessian(z, v=None):
    n, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
    return torch.cat([eye, z.new_zeros((d * (d + 1) // 2, n, d))], 0)


_TAYLOR, _MIXED, _HESSIAN = _Layout("taylor"), _Layout("mixed"), _Layout("hessian")

#: Taylor mode: ``d`` Jacobian columns plus ``ẋ`` and ``ẍ`` along ``z + t v``
TAYLOR = Mode("taylor", _TAYLOR.slots, _seed, _rules(_TAYLOR), _generic(_TAYLOR), _finisher(_TAYLOR))

#: mixed mode: ``d`` Jacobian columns, ``ẋ``, and the ``d`` mixed second derivatives ``∂²x[v, e_i]``
MIXED = Mode("mixed", _MIXED.slots, _seed_mixed, _rules(_MIXED), _generic(_MIXED), _finisher(_MIXED))

#: Hessian mode: ``d`` Jacobian columns and the ``d(d+1)/2`` second derivatives ``∂²x[e_i, e_j]``, ``i ≤ j``
HESSIAN = Mode("hessian", _HESSIAN.slots, _seed_hessian, _rules(_HESSIAN), _generic(_HESSIAN), _finisher(_HESSIAN))
