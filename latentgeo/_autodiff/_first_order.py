"""First-order rules: Jacobian columns ``∂f(z)·e_i`` pushed through the trace (see :mod:`latentgeo._autodiff`).

A rule ``rule(step, root, a, at, kw, D) -> (value, tangent)`` gets the node's arguments ``a``,
their tangents ``at`` (``None``: constant) of shape ``(D, *value.shape)`` and its keyword
arguments ``kw`` (without tangents: nodes with varying keyword arguments take the generic rule).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.func import jvp, vmap
from torch.utils import _pytree as pytree

from ._interpreter import Mode
from ._trace import (
    _ACT, _NO, _frozen_batch_norm, _tangent_tree, _Decline, _Unsupported, _arg, _call, _fit, _has_tangent, _lift,
    _resolve, _shift_dim, _zeros_like_tangent,
)


# rule(step, root, a, at, kw, d) -> (value, tangent); `at[i]` is the tangent of `a[i]` (None: constant)


def _only_first(at):
    if at[0] is None or any(t is not None for t in at[1:]):
        raise _Decline
    return at[0]


def _r_constant(step, root, a, at, kw, d):
    return _call(step, root, a, kw), None


def _r_getattr(step, root, a, at, kw, d):
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor):
        return y, None
    raise _Decline


def _r_identity(step, root, a, at, kw, d):
    t = _only_first(at)
    return _call(step, root, a, kw), t


def _r_linear_module(step, root, a, at, kw, d):
    t = _only_first(at)
    mod = _resolve(root, step.path)
    y = mod(*a, **kw)
    return y, F.linear(t, mod.weight)


def _r_linear_function(step, root, a, at, kw, d):
    t = _only_first(at)
    w = _arg(a, kw, 1, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise _Decline
    return _call(step, root, a, kw), F.linear(t, w)


def _r_activation(step, root, a, at, kw, d):
    t = _only_first(at)
    kind, spec, is_module = step.params
    uses_result, deriv = _ACT[kind]
    if is_module:
        mod = _resolve(root, step.path)
        params = {name: getattr(mod, name) for name in spec}
    else:
        params = {name: _arg(a, kw, pos, name, default) for pos, (name, default) in enumerate(spec, start=1)}
        if any(isinstance(v, torch.Tensor) for v in params.values()):
            raise _Decline
    x = a[0]
    if uses_result:
        y = _call(step, root, a, kw)
        return y, deriv(t, y, params)
    t_out = deriv(t, x, params)  # before the call: an in-place activation overwrites x
    return _call(step, root, a, kw), t_out


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


_SELU_SCALE, _SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
_GELU_C = 0.7978845608028654  # √(2/π)


def _elementwise_kind(step, root, a, kw):
    """``(kind, params)`` of a unary activation node with closed-form derivatives
    (:func:`_elementwise_derivs`), or ``None``."""
    if step.op == "call_module":
        mod = _resolve(root, step.path)
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            return ("batchnorm", {"module": mod}) if _frozen_batch_norm(mod) else None
        kind = _ELEMENTWISE_MODULES.get(type(mod))
        if kind is None:
            return None
        params = {"approximate": getattr(mod, "approximate", "none"), "alpha": getattr(mod, "alpha", 1.0),
                  "lambd": getattr(mod, "lambd", 0.5)}
        return kind, params
    if step.op != "call_function":
        return None
    spec = _ELEMENTWISE_FUNCTIONS.get(step.target)
    if spec is None:
        return None
    kind, names = spec
    params = {}
    for pos, (name, default) in enumerate(names, start=1):
        params[name] = _arg(a, kw, pos, name, default)
    if len(a) > len(names) + 1 or set(kw) - {n for n, _ in names} or any(isinstance(v, torch.Tensor) for v in params.values()):
        return None
    return kind, params


def _elementwise_derivs(kind, params, x):
    """Closed-form ``(σ'(x), σ''(x))`` of a unary activation (``σ''`` ``None`` where it is zero
    almost everywhere). Evaluated at the input, before the call (in-place activations overwrite
    it). Besides speed (one nested ``torch.func.jvp`` costs ~0.1 ms in set-up), torch has no
    forward-mode derivative of ``silu_backward``, ``mish_backward`` or ``hardsigmoid_backward``: a
    nested jvp through SiLU, Mish or Hardsigmoid raises ``NotImplementedError``."""
    if kind == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s)), s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s))
    if kind == "mish":
        s = torch.sigmoid(x)
        t = torch.tanh(F.softplus(x))
        sech2 = 1.0 - t * t
        return t + x * sech2 * s, sech2 * s * (2.0 + x * (1.0 - s - 2.0 * t * s))
    if kind == "gelu":
        if params["approximate"] == "tanh":
            u = _GELU_C * (x + 0.044715 * x * x * x)
            du = _GELU_C * (1.0 + 3 * 0.044715 * x * x)
            t = torch.tanh(u)
            sech2 = 1.0 - t * t
            return 0.5 * (1.0 + t) + 0.5 * x * sech2 * du, sech2 * (du + 0.5 * x * (_GELU_C * 6 * 0.044715 * x - 2.0 * t * du * du))
        if params["approximate"] != "none":
            return None
        phi = torch.exp(-0.5 * x * x) * 0.3989422804014327
        return 0.5 * (1.0 + torch.erf(x * 0.7071067811865476)) + x * phi, phi * (2.0 - x * x)
    if kind == "softsign":
        r = 1.0 / (1.0 + x.abs())
        return r * r, -2.0 * torch.sign(x) * r * r * r
    if kind in ("selu", "celu"):
        alpha = _SELU_ALPHA if kind == "selu" else float(params["alpha"])
        scale = _SELU_SCALE if kind == "selu" else 1.0
        neg = x <= 0
        e = torch.exp(torch.where(neg, x, torch.zeros_like(x)) / (1.0 if kind == "selu" else alpha))
        d1 = torch.where(neg, (scale * alpha if kind == "selu" else 1.0) * e, torch.full_like(x, scale))
        d2 = torch.where(neg, (scale * alpha if kind == "selu" else 1.0 / alpha) * e, torch.zeros_like(x))
        return d1, d2
    if kind == "logsigmoid":
        s = torch.sigmoid(x)
        return 1.0 - s, -s * (1.0 - s)
    if kind == "hardsigmoid":
        return torch.where((x > -3.0) & (x < 3.0), torch.full_like(x, 1.0 / 6.0), torch.zeros_like(x)), None
    if kind == "hardswish":
        mid = (x > -3.0) & (x < 3.0)
        d1 = torch.where(mid, x / 3.0 + 0.5, torch.where(x >= 3.0, torch.ones_like(x), torch.zeros_like(x)))
        return d1, torch.where(mid, torch.full_like(x, 1.0 / 3.0), torch.zeros_like(x))
    if kind == "tanhshrink":
        t = torch.tanh(x)
        return t * t, 2.0 * t * (1.0 - t * t)
    if kind in ("softshrink", "hardshrink"):
        return (x.abs() > params["lambd"]).to(x.dtype), None
    if kind == "relu6":
        return ((x > 0.0) & (x < 6.0)).to(x.dtype), None
    if kind == "batchnorm":  # eval mode: (x − mean)·w/√(var + eps) + b per channel (axis 1)
        mod = params["module"]
        scale = torch.rsqrt(mod.running_var.to(x.dtype) + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight.to(x.dtype)
        if x.dim() < 2 or x.shape[1] != scale.shape[0]:
            return None
        return scale.reshape((1, -1) + (1,) * (x.dim() - 2)).expand(x.shape), None
    return None  # pragma: no cover - every kind of the tables is listed


_ELEMENTWISE_MODULES = {
    torch.nn.SiLU: "silu", torch.nn.Mish: "mish", torch.nn.GELU: "gelu", torch.nn.Softsign: "softsign",
    torch.nn.SELU: "selu", torch.nn.CELU: "celu", torch.nn.LogSigmoid: "logsigmoid",
    torch.nn.Hardsigmoid: "hardsigmoid", torch.nn.Hardswish: "hardswish", torch.nn.Tanhshrink: "tanhshrink",
    torch.nn.Softshrink: "softshrink", torch.nn.Hardshrink: "hardshrink",
}
_INPLACE = (("inplace", False),)
_ELEMENTWISE_FUNCTIONS = {
    F.silu: ("silu", _INPLACE), F.mish: ("mish", _INPLACE), F.gelu: ("gelu", (("approximate", "none"),)),
    F.softsign: ("softsign", ()), F.selu: ("selu", _INPLACE), F.celu: ("celu", (("alpha", 1.0),) + _INPLACE),
    F.logsigmoid: ("logsigmoid", ()), F.hardsigmoid: ("hardsigmoid", _INPLACE),
    F.hardswish: ("hardswish", _INPLACE), F.tanhshrink: ("tanhshrink", ()),
    F.softshrink: ("softshrink", (("lambd", 0.5),)), F.hardshrink: ("hardshrink", (("lambd", 0.5),)),
    F.relu6: ("relu6", _INPLACE),
}


def elementwise_derivs(step, root, a, kw):
    """``(σ', σ'')`` of a unary node at its input (see :func:`_elementwise_derivs`), or ``None``."""
    k = _elementwise_kind(step, root, a, kw)
    if k is None or not isinstance(a[0], torch.Tensor) or not a[0].is_floating_point():
        return None
    return _elementwise_derivs(k[0], k[1], a[0])


def _r_unary(step, root, a, at, kw, d):
    t = _only_first(at)
    x = a[0]
    if not isinstance(x, torch.Tensor):
        raise _Decline

    # closed-form derivatives where the function is known (torch.func.jvp costs ~0.1 ms a call in
    # set-up alone: a tenth of a small batch's whole Jacobian)
    if step.op == "call_method":
        name = step.target
    elif step.op == "call_function":
        name = _UNARY_NAMES.get(step.target)
    else:
        name = None
    ders = elementwise_derivs(step, root, a, kw)  # (before the call: it may be in place)
    if ders is not None:
        y = _call(step, root, a, kw)
        if isinstance(y, torch.Tensor) and y.shape == ders[0].shape:
            return y, _fit(_lift(t, y.dim()) * ders[0], y)
        raise _Decline
    if name is not None and not kw:
        y = _call(step, root, a, kw)
        ders = _unary_derivs(name, x, y, a) if isinstance(y, torch.Tensor) and y.shape == x.shape else None
        if ders is not None:
            return y, _fit(_lift(t, y.dim()) * ders[0], y)

    def f(v):
        return _call(step, root, (v,) + tuple(a[1:]), kw)

    y, dy = jvp(f, (x,), (torch.ones_like(x),))
    if dy.shape != y.shape:
        raise _Decline
    return y, _fit(_lift(t, y.dim()) * dy, y)


def _r_add(step, root, a, at, kw, d):
    if kw or len(a) != 2:
        raise _Decline  # alpha=..., out=...
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor):
        raise _Decline
    ta, tb = at
    nd = y.dim()
    if tb is None:
        t = _lift(ta, nd)
    elif ta is None:
        t = _lift(tb, nd) if step.params > 0 else -_lift(tb, nd)
    else:
        t = _lift(ta, nd) + _lift(tb, nd) if step.params > 0 else _lift(ta, nd) - _lift(tb, nd)
    return y, _fit(t, y)


def _r_mul(step, root, a, at, kw, d):
    if kw or len(a) != 2:
        raise _Decline
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor):
        raise _Decline
    (x1, x2), (t1, t2) = a, at
    nd = y.dim()
    t = None
    if t1 is not None:
        t = _lift(t1, nd) * x2
    if t2 is not None:
        u = x1 * _lift(t2, nd)
        t = u if t is None else t + u
    return y, _fit(t, y)


def _r_div(step, root, a, at, kw, d):
    if kw or len(a) != 2:
        raise _Decline  # rounding_mode=...
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor):
        raise _Decline
    x2, (t1, t2) = a[1], at
    nd = y.dim()
    if t2 is None:
        t = _lift(t1, nd) / x2
    elif t1 is None:
        t = -(_lift(t2, nd) * y) / x2
    else:
        t = (_lift(t1, nd) - _lift(t2, nd) * y) / x2
    return y, _fit(t, y)


def _r_neg(step, root, a, at, kw, d):
    t = _only_first(at)
    return _call(step, root, a, kw), -t


def _r_matmul(step, root, a, at, kw, d):
    if kw or len(a) != 2:
        raise _Decline
    (x1, x2), (t1, t2) = a, at
    if not (isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor)) or x1.dim() < 2 or x2.dim() < 2:
        raise _Decline  # vector operands change matmul's semantics once lifted
    y = _call(step, root, a, kw)
    nd = y.dim()
    t = None
    if t1 is not None:
        t = torch.matmul(_lift(t1, nd), x2)
    if t2 is not None:
        u = torch.matmul(x1, _lift(t2, nd))
        t = u if t is None else t + u
    return y, _fit(t, y)


def _r_reshape(step, root, a, at, kw, d):
    t = _only_first(at) if not (len(at) > 1 and step.target in ("view_as", "reshape_as")) else at[0]
    if t is None:
        raise _Decline
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor) or y.dtype != a[0].dtype or y.numel() != a[0].numel():
        raise _Decline
    return y, t.reshape((t.shape[0],) + tuple(y.shape))


def _r_permute(step, root, a, at, kw, d):
    t = _only_first(at)
    if kw:
        raise _Decline
    x = a[0]
    n = x.dim()
    y = _call(step, root, a, kw)
    if step.params == "transpose":
        d0, d1 = a[1], a[2]
        return y, t.transpose(d0 % n + 1, d1 % n + 1)
    dims = a[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    return y, t.permute(0, *(int(p) % n + 1 for p in dims))


def _is_basic_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(
        i is None or i is Ellipsis or isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool))
        for i in items
    ) and all(
        all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)) for i in items if isinstance(i, slice)
    )


def _r_getitem(step, root, a, at, kw, d):
    x, idx = a
    t = at[0]
    if isinstance(x, (tuple, list)):  # a tuple-valued node (split, a module returning a tuple)
        if t is None or not isinstance(idx, int):
            raise _Decline
        return x[idx], t[idx]
    if t is None or _has_tangent(at[1]) or not isinstance(x, torch.Tensor) or not _is_basic_index(idx):
        raise _Decline
    items = idx if isinstance(idx, tuple) else (idx,)
    return x[idx], t[(slice(None),) + items]


def _r_cat(step, root, a, at, kw, d):
    if len(a) > 2 or set(kw) - {"dim"}:
        raise _Decline
    xs, ts = a[0], at[0]
    if not isinstance(xs, (tuple, list)) or ts is None:
        raise _Decline
    dim = _arg(a, kw, 1, "dim", 0)
    if not isinstance(dim, int):
        raise _Decline
    y = _call(step, root, a, kw)
    full = [t if t is not None else _zeros_like_tangent(x, d) for x, t in zip(xs, ts)]
    f = torch.cat if step.params == "cat" else torch.stack
    return y, f(full, _shift_dim(dim, xs[0].dim()))


def _r_split(step, root, a, at, kw, d):
    t = _only_first(at)
    pos, name = step.params
    if set(kw) - {"dim"}:
        raise _Decline
    dim = _arg(a, kw, pos, "dim", 0)
    if not isinstance(dim, int):
        raise _Decline
    y = _call(step, root, a, kw)
    sd = _shift_dim(dim, a[0].dim())
    if name == "unbind":
        ts = t.unbind(sd)
    elif name == "chunk":
        ts = t.chunk(a[1] if len(a) > 1 else kw["chunks"], sd)
    else:
        ts = t.split(a[1] if len(a) > 1 else next(iter(v for k, v in kw.items() if k != "dim")), sd)
    if len(ts) != len(y) or any(ti.shape[1:] != yi.shape for ti, yi in zip(ts, y)):
        raise _Decline
    return y, tuple(ts)


def _r_reduce(step, root, a, at, kw, d):
    """``sum``/``mean`` over given axes (linear): the same reduction of the tangent."""
    t = _only_first(at)
    if set(kw) - {"dim", "keepdim"} or len(a) > 3:
        raise _Decline  # dtype=..., full reductions
    dim = _arg(a, kw, 1, "dim", None)
    keepdim = _arg(a, kw, 2, "keepdim", False)
    dims = (dim,) if isinstance(dim, int) else dim
    if not isinstance(dims, (tuple, list)) or not dims or not all(isinstance(i, int) for i in dims):
        raise _Decline
    if not isinstance(keepdim, bool):
        raise _Decline
    n = a[0].dim()
    y = _call(step, root, a, kw)
    tdims = tuple(i % n + 1 for i in dims)
    r = t.sum(tdims, keepdim=keepdim) if step.params == "sum" else t.mean(tdims, keepdim=keepdim)
    return y, _fit(r, y)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` from elementwise ops and reductions (see :func:`_decomposed`)."""
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    c = x - x.mean(dims, keepdim=True)
    y = c * torch.rsqrt((c * c).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    """``F.instance_norm`` with the instance statistics from elementwise ops (see :func:`_decomposed`)."""
    if not use_input_stats:  # the running statistics: an affine map, torch's derivatives are right
        return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    dims = tuple(range(2, x.dim()))
    c = x - x.mean(dims, keepdim=True)
    y = c * torch.rsqrt((c * c).mean(dims, keepdim=True) + eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _decomposed(step, root):
    """A replacement ``f(args, kwargs)`` for nodes whose nested forward-mode derivatives torch gets
    wrong, or ``None``. torch 2.13's jvp of a jvp through ``native_layer_norm`` (``nn.LayerNorm``,
    ``F.layer_norm``) and through the instance statistics of ``F.instance_norm`` is off by ~40 %
    against finite differences and reverse-mode Hessians (its first derivatives are right): the
    geodesic acceleration of a decoder with LayerNorm was wrong. The same maps from elementwise
    ops and means are differentiated correctly."""
    if step.op == "call_module":
        mod = _resolve(root, step.path)
        if isinstance(mod, torch.nn.LayerNorm):
            return lambda aa, kk: _layer_norm(aa[0], mod.normalized_shape, mod.weight, mod.bias, mod.eps)
        if isinstance(mod, torch.nn.modules.instancenorm._InstanceNorm) and (mod.training or not mod.track_running_stats):
            return lambda aa, kk: _instance_norm(aa[0], None, None, mod.weight, mod.bias, True, mod.momentum, mod.eps)
        return None
    if step.op == "call_function" and step.target is F.layer_norm:
        return lambda aa, kk: _layer_norm(*aa, **kk)
    if step.op == "call_function" and step.target is F.instance_norm:
        return lambda aa, kk: _instance_norm(*aa, **kk)
    if step.op == "call_function" and step.target is torch.cdist:
        return lambda aa, kk: _cdist(*aa, **kk)
    return None


def _cdist(x1, x2, p=2.0, compute_mode=None):
    """``torch.cdist`` by broadcasting (torch has no forward-mode derivative of ``_cdist_forward``:
    RBF layers written with it could not be differentiated at all)."""
    diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    if p == 2:
        return (diff * diff).sum(-1).sqrt()
    if p == 1:
        return diff.abs().sum(-1)
    if p == float("inf"):
        return diff.abs().amax(-1)
    return diff.abs().pow(p).sum(-1).pow(1.0 / p)


def _node_as_function(step, root, a, at, kw, kwt=None):
    """The node as a function of its tangent-carrying tensor leaves: ``(f_sub, primals, tangents)``,
    or ``None`` when no leaf carries a tangent (shared by the generic rules of every mode). Nodes
    whose nested derivatives torch gets wrong are evaluated by their decomposition
    (:func:`_decomposed`)."""
    leaves, spec = pytree.tree_flatten((list(a), kw))
    tleaves, _ = pytree.tree_flatten(([_tangent_tree(v, t) for v, t in zip(a, at)], kwt or {
        k: pytree.tree_map(lambda _: _NO, v) for k, v in kw.items()}))
    if len(tleaves) != len(leaves):
        raise _Unsupported(f"cannot align tangents with the arguments of {step.target!r}")
    idx = [i for i, t in enumerate(tleaves) if isinstance(t, torch.Tensor)]
    if not idx:
        return None

    sub = _decomposed(step, root)

    def f_sub(*xs):
        args = list(leaves)
        for i, x in zip(idx, xs):
            args[i] = x
        aa, kk = pytree.tree_unflatten(args, spec)
        return _call(step, root, aa, kk) if sub is None else sub(aa, kk)

    return f_sub, tuple(leaves[i] for i in idx), tuple(tleaves[i] for i in idx)


def _r_generic(step, root, a, at, kw, d, kwt=None):
    """``vmap`` over the ``d`` tangents of ``jvp`` of the node (exact for any differentiable op)."""
    node = _node_as_function(step, root, a, at, kw, kwt)
    if node is None:
        return _call(step, root, a, kw), None
    f_sub, primals, tangents = node
    return vmap(lambda *ts: jvp(f_sub, primals, ts), out_dims=(None, 0))(*tangents)



def _finish(template, vals, tans, d):
    leaves = template if isinstance(template, (tuple, list)) else (template,)
    outs, cols = [], []
    for x in leaves:
        v, t = vals[x.i], tans[x.i]
        if not isinstance(v, torch.Tensor):
            raise _Unsupported(f"the module returned a {type(v).__name__}, not a tensor")
        if t is None:
            t = _zeros_like_tangent(v, d)
        elif not isinstance(t, torch.Tensor) or t.shape[1:] != v.shape:
            raise _Unsupported("internal: tangent shape does not match its value")
        outs.append(v)
        cols.append(t)
    if isinstance(template, (tuple, list)):
        kind = list if isinstance(template, list) else tuple
        return kind(outs), kind(cols)
    return outs[0], cols[0]




def _seed(z, v):
    n, d = z.shape
    return torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)


#: rule name -> rule (the generic rule handles every other node)
RULES = {
    "constant": _r_constant,
    "getattr": _r_getattr,
    "identity": _r_identity,
    "linear_module": _r_linear_module,
    "linear_function": _r_linear_function,
    "activation": _r_activation,
    "unary": _r_unary,
    "add": _r_add,
    "mul": _r_mul,
    "div": _r_div,
    "neg": _r_neg,
    "matmul": _r_matmul,
    "reshape": _r_reshape,
    "permute": _r_permute,
    "getitem": _r_getitem,
    "cat": _r_cat,
    "split": _r_split,
    "reduce": _r_reduce,
}


#: Jacobian columns: ``d`` tangent slots, seeded with the unit vectors
FIRST_ORDER = Mode("jacobian", lambda d: d, _seed, RULES, _r_generic, _finish)
