"""The derivative engine: Jacobian columns and Taylor-mode second derivatives of decoders.

Two paths, chosen by the callers (decoders and metrics), never by decoder type here:

* the **generic** :mod:`torch.func` path (:mod:`._generic`: :func:`rowwise_jacobian`,
  :func:`rowwise_gram`), for any row-wise callable;
* **one fx interpreter** (:mod:`._trace` compiles a cached ``torch.fx`` trace into steps with
  named rules, :mod:`._interpreter` runs it) parameterised by *rule tables*: first-order Jacobian
  columns (:mod:`._first_order`, :func:`jacobian_columns`) and Taylor mode, which adds
  ``∂²f[v, v]`` along a direction (:mod:`._taylor`, :func:`second_order`), its mixed mode,
  which adds the velocity's Hessian column ``∂²f[v, ·]`` instead (:func:`mixed_second_order`:
  what an exact velocity Jacobian of the geodesic acceleration needs), and its Hessian mode,
  which adds the upper triangle ``∂²f[e_i, e_j]`` (:func:`hessian_second_order`: the curvature
  term of the energy stage's Newton steps and the Brownian drift). Plain functions and
  lambdas are traced too (:func:`function_module` wraps them, registering the modules they use).

The rest of this docstring describes the interpreter's first-order mode; :mod:`._taylor`
describes the second-order one.


Jacobian columns: :func:`jacobian_columns` computes, for a row-wise decoder ``f`` and points ``z`` ``(N, d)``,
the output ``f(z)`` and the ``d`` forward-mode tangents ``∂f(z)·e_i`` (``e_i`` broadcast over the
batch), i.e. the Jacobian columns of every row at once — the same numbers as
``vmap(lambda t: jvp(f, (z,), (t,)))(eye[:, None].expand(d, N, d))`` — but without paying
``torch.func``'s per-operation overhead on every layer.

How. The module is traced once with :func:`torch.fx.symbolic_trace` (cached per module, weakly
keyed) and the graph is interpreted node by node, carrying next to every value ``x`` its batched
tangent ``t`` of shape ``(d, *x.shape)`` (forward-mode AD, Griewank & Walther, *Evaluating
Derivatives*, 2nd ed., SIAM 2008, ch. 3: the tangent of every intermediate is pushed forward by
the chain rule):

* ``nn.Linear`` / ``F.linear`` / ``matmul`` with a constant operand: one matmul ``t @ Wᵀ``
  (torch's forward-mode formula for ``addmm`` also multiplies the primal by the — zero — weight
  tangent; that ``mm`` is skipped here);
* elementwise activations (modules, functions or methods: tanh, sigmoid, relu, softplus, elu,
  leaky_relu, hardtanh/relu6, exp): ``t · σ'(x)`` with torch's own derivative kernels
  (``aten.tanh_backward`` etc. — the formulas torch's ``jvp`` uses, nothing hand-derived); other
  unary elementwise functions (gelu, silu, log, sin, sqrt, softsign, mish, ``x ** c``, ...):
  ``σ'(x)`` from one ``jvp`` with a tangent of ones;
* ``+ − × ÷`` and negation by the sum and product rules, with broadcasting;
* shape operations (view/reshape/flatten/unflatten/squeeze/unsqueeze, ``nn.Flatten``,
  ``nn.Unflatten``, permute/transpose, basic indexing, cat/stack/split/chunk/unbind) applied to
  the tangents with the leading ``d`` axis; shape queries carry no tangent;
* ``sum``/``mean`` over given axes by the same reduction of the tangents;
* every other node (convolutions, softmax, normalisations, ...): ``vmap(jvp(node))`` over the
  ``d`` tangents, so any traceable module is handled exactly.

Why. ``benchmarks/RESULTS.md`` (section "Metric", proposal 4): on a 2→64→64→50 tanh decoder,
1000 points, float32, one thread, the generic ``vmap(jvp)`` path was 2.15× slower than
stochman 0.3.0's hand-written layer Jacobians; the prototype of this interpreter ran at 1.08×
stochman there, and at 0.87× the floor (``1 + d`` forward passes + ``JᵀJ``) on a
10→512→512→784 Gaussian decoder with two heads. This implementation (pre-chosen rules per node,
torch's derivative kernels instead of a ``jvp`` per activation), measured the same way
(process CPU time, best of 20, interleaved runs on a shared 2-core machine, columns + ``JᵀJ``
bmm): 0.59–0.74× stochman and 0.33–0.40× the generic path in (a); 0.89–0.94× the floor and
≈ 0.8× the generic path in (b).

Scope and limits.

* **First-order tangents only** (for the metric tensor ``JᵀJ``). Derivatives *of* the result
  with ordinary autograd work (all operations are differentiable torch ops and are tested
  against the generic path). Under an active ``torch.func`` transform (``vmap``, ``jvp``,
  ``grad``, ``jacfwd``/``jacrev``, ...) it returns ``None``: torch's derivative kernels used
  here are not all transformable (``aten.gelu_backward``'s own derivative fails under
  ``jacrev``, ``aten.silu_backward`` has none), and higher-order work — the geodesic code —
  nests ``torch.func`` through the pure ``embedding()`` with the generic path anyway.
* Returns ``None`` — and the caller uses its generic ``vmap(jvp)`` path — when the module does
  not trace (data-dependent control flow such as ``if x.sum() > 0``, ``len(x)``...), takes more
  than one required input, returns anything but a tensor or a flat tuple/list of tensors, uses
  in-place operations, draws random numbers, or contains a Dropout/RReLU/BatchNorm (or
  InstanceNorm with running statistics) in training mode, or has forward hooks (a trace skips
  them; checked at every call); also when interpreting the graph
  raises (an operation ``torch.func`` cannot vectorise). :func:`unsupported_reason` says why.
  Every decision is cached, so the cost of a failed trace is paid once.
* Parameters and buffers are read live from the module at every call (no copies): weights
  trained after the first call are used. The cache is keyed by the types and ``training`` flags
  of all submodules, so switching ``train()``/``eval()`` or replacing a layer re-traces; plain
  Python attributes read in ``forward`` (e.g. ``self.min_std = 1e-3``) are baked into the trace
  and changing them later is *not* seen.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from latentgeo._autodiff import jacobian_columns
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    >>> z = torch.randn(4, 2, dtype=torch.float64)
    >>> out, cols = jacobian_columns(net, z)
    >>> out.shape, cols.shape                      # cols[i, n] = J(z_n) e_i
    (torch.Size([4, 5]), torch.Size([2, 4, 5]))
    >>> jac = torch.autograd.functional.jacobian(lambda x: net(x[None])[0], z[1])
    >>> bool(torch.allclose(cols[:, 1].T, jac))
    True
"""


from __future__ import annotations

import types
import weakref
from typing import Callable, Optional

import torch
from torch import nn
from torch.func import jvp, vmap

from ._first_order import FIRST_ORDER
from ._generic import (
    CHUNK_BUDGET, auto_chunk_rows, choose_mode, rowwise_gram, rowwise_jacobian, second_directional, value_and_columns,
)
from ._interpreter import run
from ._taylor import HESSIAN, MIXED, TAYLOR, hessian_pairs, unpack_hessian
from ._trace import _entry, _transforms_active, nested_forward_hazard, nonsmooth_ops, op_kink, unsupported_reason

__all__ = [
    "jacobian_columns",
    "second_order",
    "compose_second_order",
    "mixed_second_order",
    "compose_mixed_second_order",
    "hessian_second_order",
    "compose_hessian_second_order",
    "hessian_pairs",
    "unpack_hessian",
    "function_module",
    "unsupported_reason",
    "nonsmooth_ops",
    "op_kink",
    "decoder_modules",
    "uncompiled",
    "nested_forward_hazard",
    "transforms_active",
    "rowwise_jacobian",
    "rowwise_gram",
    "value_and_columns",
    "second_directional",
    "choose_mode",
    "auto_chunk_rows",
    "CHUNK_BUDGET",
]


def transforms_active() -> bool:
    """Whether a :mod:`torch.func` transform (vmap, jvp, grad, ...) is active (the fx path is then off)."""
    return _transforms_active()


def _check_z(z, what):
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError(
            "z must be a floating-point tensor of shape (N, d), got "
            + (f"{tuple(z.shape)} of dtype {z.dtype}" if isinstance(z, torch.Tensor) else type(z).__name__)
        )


def _interpret(module, z, mode, v=None):
    if _transforms_active():  # torch's derivative kernels used here are not all transformable
        return None
    entry = _entry(module)
    if isinstance(entry, str):
        return None
    sig = (mode.name, z.dtype, z.device, z.shape[1])
    if sig in entry.failed:
        return None
    try:
        return run(entry, module, z, mode, v)
    except Exception as exc:  # an op torch.func cannot vectorise, an unsupported structure, ...
        entry.failed[sig] = f"interpreting the traced graph failed ({mode.name}): {type(exc).__name__}: {exc}"
        return None


def _check_zv(z, v):
    _check_z(z, "z")
    if not isinstance(v, torch.Tensor) or v.shape != z.shape:
        raise ValueError(
            f"v must be a tensor of z's shape {tuple(z.shape)}, got "
            + (str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__)
        )


def jacobian_columns(module: nn.Module, z: torch.Tensor):
    """Output and forward-mode Jacobian columns of ``module`` at ``z``, via a cached fx trace.

    Args:
        module: the decoder, an ``nn.Module`` applied to a batch ``(N, d)`` of latent points.
        z: ``(N, d)`` floating-point points (float32 or float64, any device).

    Returns:
        ``(out, cols)`` or ``None``. ``out`` is ``module(z)``: a tensor or a tuple/list of tensors
        (as the module returns). ``cols`` has the same structure; each leaf has shape
        ``(d, *leaf.shape)`` and ``cols[i]`` is the forward-mode tangent of the output for the
        tangent ``e_i`` in every row — for a row-wise module, ``cols[i, n] = J(z_n) e_i``.
        ``None`` when the module cannot be traced or interpreted (see the module docstring and
        :func:`unsupported_reason`); the decision is cached per module (weakly keyed) and the
        caller should then use the generic ``vmap(jvp)`` path.

    Raises:
        ValueError: ``module`` is not an ``nn.Module``, or ``z`` is not a floating ``(N, d)`` tensor.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"jacobian_columns needs an nn.Module, got {type(module).__name__}")
    _check_z(z, "z")
    return _interpret(module, z, FIRST_ORDER)


def second_order(module: nn.Module, z: torch.Tensor, v: torch.Tensor):
    """Output, Jacobian columns and second directional derivative of ``module`` via its fx trace.

    Args:
        module: an ``nn.Module`` applied row-wise to a batch ``(N, d)`` of points.
        z: ``(N, d)`` floating-point points.
        v: ``(N, d)`` directions (cast to ``z``'s dtype).

    Returns:
        ``(out, cols, h)`` or ``None``. ``out = module(z)`` (a tensor or a flat tuple/list of
        tensors); ``cols`` as in :func:`jacobian_columns`; ``h`` has leaves ``leaf.shape``:
        ``h[n] = ∂²f(z_n)[v_n, v_n]``. ``None`` when the module is not eligible (same rules and
        cache as :func:`jacobian_columns`) or interpreting the graph fails: use nested
        ``torch.func.jvp`` then.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.func import jvp
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
        >>> z, v = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> out, cols, h = second_order(net, z, v)
        >>> out.shape, cols.shape, h.shape
        (torch.Size([4, 5]), torch.Size([2, 4, 5]), torch.Size([4, 5]))
        >>> ref = jvp(lambda x: jvp(net, (x,), (v,))[1], (z,), (v,))[1]
        >>> bool(torch.allclose(h, ref))
        True
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"second_order needs an nn.Module, got {type(module).__name__}")
    _check_zv(z, v)
    return _interpret(module, z, TAYLOR, v.to(device=z.device, dtype=z.dtype))


def compose_second_order(outer: Callable, raw: torch.Tensor, cols: torch.Tensor, h: torch.Tensor, v: torch.Tensor):
    """Push a jet ``(raw (N, ...), cols (d, N, ...), h (N, ...))`` through a pure map ``outer``.

    Returns ``(outer(raw), cols', h')`` with ``cols' = ∂outer·cols`` and
    ``h' = ∂outer·h + ∂²outer[ẋ, ẋ]``, ``ẋ = Σ_i v_i cols_i`` (the chain rule to second order).
    """
    xd = torch.einsum("nd,dn...->n...", v, cols)  # ∂raw·v
    out, ocols = vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)
    _, oh = jvp(lambda x, xdot: jvp(outer, (x,), (xdot,))[1], (raw, xd), (xd, h))
    return out, ocols, oh


def mixed_second_order(module: nn.Module, z: torch.Tensor, v: torch.Tensor):
    """Output, Jacobian columns and the mixed second derivatives ``∂²f[v, e_i]`` via the fx trace.

    The mixed mode of :mod:`._taylor`: every intermediate value carries its ``d`` Jacobian
    columns, ``ẋ = ∂x·v`` and the ``d`` mixed derivatives ``∂²x[v, e_i]`` (``2d + 1`` slots
    against Taylor mode's ``d + 2``). From them ``∂²f[v, v] = Σ_i v_i ∂²f[v, e_i]``, and the
    derivative of ``∂²f[w, w]`` in ``w`` at ``v`` is ``2 ∂²f[v, ·]``: the geodesic acceleration
    and its exact Jacobian in the velocity from one pass.

    Returns:
        ``(out, cols, mix)`` or ``None`` (as :func:`second_order`); ``mix`` has leaves
        ``(d, *leaf.shape)``: ``mix[i, n] = ∂²f(z_n)[v_n, e_i]``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.func import jvp
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
        >>> z, v = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> out, cols, mix = mixed_second_order(net, z, v)
        >>> mix.shape
        torch.Size([2, 4, 5])
        >>> e0 = torch.zeros_like(z); e0[:, 0] = 1.0
        >>> ref = jvp(lambda x: jvp(net, (x,), (v,))[1], (z,), (e0,))[1]
        >>> bool(torch.allclose(mix[0], ref))
        True
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"mixed_second_order needs an nn.Module, got {type(module).__name__}")
    _check_zv(z, v)
    return _interpret(module, z, MIXED, v.to(device=z.device, dtype=z.dtype))


def compose_mixed_second_order(outer: Callable, raw: torch.Tensor, cols: torch.Tensor, mix: torch.Tensor,
                               v: torch.Tensor):
    """Push a mixed jet ``(raw (N, ...), cols (d, N, ...), mix (d, N, ...))`` through ``outer``.

    Returns ``(outer(raw), cols', mix')`` with ``cols'_i = ∂outer·cols_i`` and
    ``mix'_i = ∂outer·mix_i + ∂²outer[ẋ, cols_i]``, ``ẋ = Σ_i v_i cols_i``.
    """
    xd = torch.einsum("nd,dn...->n...", v, cols)
    out, ocols = vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)

    def one(c, m):
        return jvp(lambda x, xdot: jvp(outer, (x,), (xdot,))[1], (raw, xd), (c, m))[1]

    return out, ocols, vmap(one)(cols, mix)


def hessian_second_order(module: nn.Module, z: torch.Tensor):
    """Output, Jacobian columns and the upper triangle of the Hessian via the fx trace.

    The Hessian mode of :mod:`._taylor`: every intermediate value carries its ``d`` Jacobian
    columns and the ``m = d(d+1)/2`` second derivatives ``∂²x[e_i, e_j]``, ``i ≤ j``
    (:func:`hessian_pairs` gives the order): ``d + m`` slots, against ``d · (2d + 1)`` for the
    same numbers from ``d`` mixed passes (:func:`mixed_second_order` with ``v = e_j``). What the
    curvature term of an energy's Hessian needs (``Σ_K c_K ∇²g_K``), with no velocity.

    Returns:
        ``(out, cols, hess)`` or ``None`` (as :func:`second_order`); ``hess`` has leaves
        ``(m, *leaf.shape)``: ``hess[k, n] = ∂²f(z_n)[e_I[k], e_J[k]]``, ``(I, J) = hessian_pairs(d)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
        >>> z = torch.randn(4, 2, dtype=torch.float64)
        >>> out, cols, hess = hessian_second_order(net, z)
        >>> hess.shape, hessian_pairs(2)
        (torch.Size([3, 4, 5]), ((0, 0, 1), (0, 1, 1)))
        >>> H = torch.func.vmap(torch.func.hessian(net))(z)  # (4, 5, 2, 2)
        >>> bool(torch.allclose(hess[1], H[:, :, 0, 1]))
        True
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"hessian_second_order needs an nn.Module, got {type(module).__name__}")
    _check_z(z, "z")
    return _interpret(module, z, HESSIAN)


def compose_hessian_second_order(outer: Callable, raw: torch.Tensor, cols: torch.Tensor, hess: torch.Tensor):
    """Push a Hessian-mode jet ``(raw (N, ...), cols (d, N, ...), hess (m, N, ...))`` through ``outer``.

    Returns ``(outer(raw), cols', hess')`` with ``cols'_i = ∂outer·cols_i`` and
    ``hess'_k = ∂outer·hess_k + ∂²outer[cols_I[k], cols_J[k]]``.
    """
    d = cols.shape[0]
    I, J = (list(x) for x in hessian_pairs(d))
    out, ocols = vmap(lambda t: jvp(outer, (raw,), (t,)), out_dims=(None, 0))(cols)

    def one(left, right, h):
        return jvp(lambda x, xdot: jvp(outer, (x,), (xdot,))[1], (raw, left), (right, h))[1]

    return out, ocols, vmap(one)(cols[I], cols[J], hess)


class _FunctionModule(nn.Module):
    """A plain callable as an ``nn.Module``, so that the fx interpreter can trace it.

    The ``nn.Module`` s the callable uses (closure cells, globals it names, a bound method's
    owner, ``functools.partial`` arguments) are registered as submodules, so their parameters
    are read live, as for a module decoder; tensors it captures become constants of the trace
    (read by reference: in-place updates are seen, rebinding the variable is not — the wrapper
    is rebuilt when the captured objects change).
    """

    def __init__(self, fn: Callable, modules: tuple):
        super().__init__()
        self.fn = fn
        self.captured = nn.ModuleList(modules)

    def forward(self, z):
        return self.fn(z)


def _captured(fn) -> tuple:
    """The objects a callable refers to (closure cells, named globals, bound self, partial args)."""
    objs = []
    seen = set()

    def add(o, depth=0):
        if id(o) in seen or depth > 2:
            return
        seen.add(id(o))
        if isinstance(o, nn.Module):
            objs.append(o)
        elif isinstance(o, types.MethodType):
            add(o.__self__, depth + 1)
            add(o.__func__, depth + 1)
        elif isinstance(o, types.FunctionType):
            for cell in o.__closure__ or ():
                try:
                    add(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
            g = o.__globals__
            for name in o.__code__.co_names:
                if name in g:
                    add(g[name], depth + 1)
        elif hasattr(o, "func") and hasattr(o, "args"):  # functools.partial
            add(o.func, depth + 1)
            for a in tuple(o.args) + tuple((o.keywords or {}).values()):
                add(a, depth + 1)

    add(fn)
    return tuple(objs)


_WRAPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def uncompiled(f):
    """The module a ``torch.compile`` d module wraps, else ``f``: compiled code is retraced for every
    new batch shape (~0.7 s a geodesic) and cannot be traced for derivatives; the wrapped module
    is the same function."""
    orig = getattr(f, "_orig_mod", None)
    return orig if type(f).__name__ == "OptimizedModule" and isinstance(orig, nn.Module) else f


def decoder_modules(decoder) -> list:
    """The ``nn.Module`` s a decoder's callables are, or wrap (:func:`function_module`: the modules
    a plain function uses become submodules): what its ``.modules()`` must be searched for."""
    out = []
    for f in ([] if decoder is None else list(vars(decoder).values())):
        if not callable(f) or isinstance(f, type):
            continue
        try:
            m = function_module(f)
        except Exception:  # noqa: BLE001 - not wrappable (some builtins): nothing to inspect
            m = None
        if m is not None and all(m is not x for x in out):
            out.append(m)
    return out


def function_module(fn: Callable) -> Optional[nn.Module]:
    """An ``nn.Module`` wrapping the plain callable ``fn`` for the fx interpreter (cached), or ``None``.

    ``nn.Module`` s are returned as they are. The wrapper registers the modules ``fn`` uses (see
    :class:`_FunctionModule`) and is rebuilt when they change. ``None`` when ``fn`` cannot be
    weakly referenced (some builtins): the generic path applies.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> f = lambda z: 2.0 * net(z)                  # a plain function using a module
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> out, cols = jacobian_columns(function_module(f), z)
        >>> ref = torch.func.jacfwd(lambda x: f(x[None])[0])(z[0])
        >>> bool(torch.allclose(cols[:, 0].T, ref))
        True
    """
    if isinstance(fn, nn.Module):
        return uncompiled(fn)
    mods = _captured(fn)
    try:
        cached = _WRAPPERS.get(fn)
    except TypeError:
        return None
    if cached is not None and len(cached.captured) == len(mods) and all(a is b for a, b in zip(cached.captured, mods)):
        return cached
    wrapper = _FunctionModule(fn, mods)
    # eval-mode decoders: the wrapper is always in eval mode (its own flag), the captured modules keep theirs
    wrapper.training = False
    try:
        _WRAPPERS[fn] = wrapper
    except TypeError:
        return None
    return wrapper
