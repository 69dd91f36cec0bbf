"""Forward-mode Jacobian columns of an ``nn.Module`` through a ``torch.fx`` trace.

:func:`traced_jvp_columns` computes, for a row-wise decoder ``f`` and points ``z`` ``(N, d)``,
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
    >>> from latentgeo._fxjac import traced_jvp_columns
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    >>> z = torch.randn(4, 2, dtype=torch.float64)
    >>> out, cols = traced_jvp_columns(net, z)
    >>> out.shape, cols.shape                      # cols[i, n] = J(z_n) e_i
    (torch.Size([4, 5]), torch.Size([2, 4, 5]))
    >>> jac = torch.autograd.functional.jacobian(lambda x: net(x[None])[0], z[1])
    >>> bool(torch.allclose(cols[:, 1].T, jac))
    True
"""

from __future__ import annotations

import operator
import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_mod
from torch.func import jvp, vmap
from torch.fx import Node, symbolic_trace
from torch.fx.node import map_aggregate
from torch.utils import _pytree as pytree

__all__ = ["traced_jvp_columns", "unsupported_reason"]

_aten = torch.ops.aten


class _Unsupported(Exception):
    """The module (or this node of its graph) cannot be interpreted: use the generic path."""


class _Decline(Exception):
    """A fast rule does not apply to these arguments: use the generic rule for this node."""


class _Ref:
    """Reference to the value of an earlier step of a compiled program."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


_NO = object()  # "no tangent" leaf in tangent trees (the generic rule)

# ----------------------------------------------------------------------------- classification
_RANDOM_FUNCTIONS = {
    F.rrelu, F.gumbel_softmax, torch.bernoulli, torch.normal, torch.poisson, torch.multinomial,
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.dropout, torch.alpha_dropout, torch.feature_dropout,
    torch.feature_alpha_dropout, torch.rrelu,
}
_RANDOM_METHODS = {"bernoulli", "multinomial", "normal_", "uniform_", "random_", "exponential_",
                   "geometric_", "cauchy_", "log_normal_", "bernoulli_"}
# dropout-like functions: (position of `training`, its default); identity when training is False
_DROPOUT_FUNCTIONS = {
    F.dropout: (2, True), F.dropout1d: (2, True), F.dropout2d: (2, True), F.dropout3d: (2, True),
    F.alpha_dropout: (2, False), F.feature_alpha_dropout: (2, False),
}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ipow, operator.imatmul, operator.ifloordiv, operator.setitem}
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "stride", "get_device",
                  "is_contiguous"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}


def _random_train_module(mod: nn.Module) -> Optional[str]:
    if not mod.training:
        return None
    if isinstance(mod, nn.modules.dropout._DropoutNd):
        return f"{type(mod).__name__} in training mode (random)"
    if isinstance(mod, nn.RReLU):
        return "RReLU in training mode (random)"
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return f"{type(mod).__name__} in training mode (couples the rows of the batch)"
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm) and mod.track_running_stats:
        return f"{type(mod).__name__} in training mode with running statistics"
    return None


# ----------------------------------------------------------------------------- tangent helpers
def _lift(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Insert singleton axes after the leading tangent axis so that ``t`` has ``1 + ndim`` axes."""
    extra = ndim - (t.dim() - 1)
    if extra > 0:
        return t[(slice(None),) + (None,) * extra]
    return t


def _fit(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The tangent ``t`` broadcast to the full shape ``(d, *y.shape)`` (a view)."""
    shape = (t.shape[0],) + tuple(y.shape)
    if t.dtype != y.dtype:  # e.g. a float32 input plus a float64 buffer
        t = t.to(y.dtype)
    if t.shape == shape:
        return t
    return _lift(t, y.dim()).expand(shape)


def _zeros_like_tangent(v: torch.Tensor, d: int) -> torch.Tensor:
    return v.new_zeros((d,) + tuple(v.shape))


def _shift_dim(dim: int, ndim: int) -> int:
    """Axis ``dim`` of a value with ``ndim`` axes, as an axis of its tangent."""
    return dim + 1 if dim >= 0 else dim  # negative axes count from the end: unchanged


def _arg(args, kwargs, pos: int, name: str, default):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


# ----------------------------------------------------------------------------- elementwise rules
# name -> (uses the result y (True) or the input x (False), fn(t, x_or_y, params) -> tangent)
def _d_tanh(t, y, p):
    return _aten.tanh_backward(t, y)


def _d_sigmoid(t, y, p):
    return _aten.sigmoid_backward(t, y)


def _d_relu(t, y, p):
    return _aten.threshold_backward(t, y, 0)


def _d_exp(t, y, p):
    return t * y


def _d_softplus(t, x, p):
    return _aten.softplus_backward(t, x, p["beta"], p["threshold"])


def _d_elu(t, x, p):
    return _aten.elu_backward(t, p["alpha"], 1, 1, False, x)


def _d_leaky_relu(t, x, p):
    return _aten.leaky_relu_backward(t, x, p["negative_slope"], False)


def _d_hardtanh(t, x, p):
    return _aten.hardtanh_backward(t, x, p["min_val"], p["max_val"])


_ACT = {
    "tanh": (True, _d_tanh), "sigmoid": (True, _d_sigmoid), "relu": (True, _d_relu),
    "exp": (True, _d_exp), "softplus": (False, _d_softplus), "elu": (False, _d_elu),
    "leaky_relu": (False, _d_leaky_relu),
    "hardtanh": (False, _d_hardtanh),
}

# modules -> (kind, params read live from the module)
_ACT_MODULES = [
    (nn.Tanh, "tanh", ()), (nn.Sigmoid, "sigmoid", ()), (nn.ReLU, "relu", ()),
    (nn.Softplus, "softplus", ("beta", "threshold")), (nn.ELU, "elu", ("alpha",)),
    (nn.LeakyReLU, "leaky_relu", ("negative_slope",)),
    (nn.Hardtanh, "hardtanh", ("min_val", "max_val")),  # ReLU6 too
]
# functions -> (kind, ((param, default), ...) after the input); "inplace" is checked separately
_ACT_FUNCTIONS = {
    torch.tanh: ("tanh", ()), F.tanh: ("tanh", ()), torch.sigmoid: ("sigmoid", ()),
    F.sigmoid: ("sigmoid", ()), torch.relu: ("relu", ()), F.relu: ("relu", (("inplace", False),)),
    torch.exp: ("exp", ()),
    F.softplus: ("softplus", (("beta", 1.0), ("threshold", 20.0))),
    F.elu: ("elu", (("alpha", 1.0), ("inplace", False))),
    F.leaky_relu: ("leaky_relu", (("negative_slope", 0.01), ("inplace", False))),
    F.hardtanh: ("hardtanh", (("min_val", -1.0), ("max_val", 1.0), ("inplace", False))),
}
_ACT_METHODS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "exp": "exp"}

# unary elementwise ops whose derivative comes from one jvp with a tangent of ones
_UNARY_FUNCTIONS = {
    torch.log, torch.log1p, torch.expm1, torch.sin, torch.cos, torch.sqrt, torch.rsqrt,
    torch.abs, torch.square, torch.erf, torch.reciprocal, torch.exp2, torch.log2, torch.log10,
    torch.sinh, torch.cosh, torch.atan, torch.asinh, torch.clamp, torch.clip,
    F.softsign, F.mish, F.selu, F.celu, F.logsigmoid, F.hardsigmoid, F.hardswish, F.tanhshrink,
    F.softshrink, F.hardshrink, F.relu6, F.silu, F.gelu, operator.pow, torch.pow,
}
_UNARY_METHODS = {"log", "log1p", "expm1", "sin", "cos", "sqrt", "rsqrt", "abs", "square", "erf",
                  "reciprocal", "exp2", "log2", "log10", "sinh", "cosh", "atan", "asinh",
                  "clamp", "clip", "pow"}
# SiLU: aten.silu_backward has no derivative, so it would break autograd through the result;
# GELU: aten.gelu_backward with a broadcast (d, N, ...) gradient fails under vmap-of-backward
# (torch.autograd.functional.jacobian(vectorize=True), jacrev)
_UNARY_MODULES = (nn.SiLU, nn.GELU, nn.Softsign, nn.Mish, nn.SELU, nn.CELU, nn.LogSigmoid, nn.Hardsigmoid,
                  nn.Hardswish, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink)

_ADD = {operator.add, torch.add}
_SUB = {operator.sub, torch.sub}
_MUL = {operator.mul, torch.mul}
_DIV = {operator.truediv, torch.div, torch.true_divide}
_NEG = {operator.neg, torch.neg}
_MATMUL = {operator.matmul, torch.matmul, torch.mm}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                    "reshape_as"}
_IDENTITY_METHODS = {"contiguous", "clone"}
# outputs that do not depend on the values of their tensor arguments (tangent zero)
_CONSTANT_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
_CONSTANT_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "detach"}
_CAT = {torch.cat, torch.concat}
_SPLIT_FUNCTIONS = {torch.split: ("split_size_or_sections",), torch.chunk: ("chunks",),
                    torch.unbind: ()}
_SPLIT_METHODS = {"split": ("split_size",), "chunk": ("chunks",), "unbind": ()}


# ----------------------------------------------------------------------------- compiled program
class _Step:
    __slots__ = ("op", "target", "args", "kwargs", "flat", "rule", "path", "value", "params")

    def __init__(self, op, target=None, args=(), kwargs=None, rule=None, path=None, value=None, params=None):
        self.op, self.target, self.args, self.kwargs = op, target, args, kwargs or {}
        self.flat = all(not isinstance(a, (list, tuple, dict, slice)) for a in args) and all(
            not isinstance(a, (list, tuple, dict, slice)) for a in self.kwargs.values()
        )
        self.rule, self.path, self.value, self.params = rule, path, value, params


class _Program:
    __slots__ = ("steps", "failed")

    def __init__(self, steps):
        self.steps = steps
        self.failed: dict = {}  # (dtype, device, trailing shape) -> reason


def _resolve(root, path):
    obj = root
    for part in path:
        obj = getattr(obj, part)
    return obj


def _call(step: _Step, root, a, kw):
    if step.op == "call_module":
        return _resolve(root, step.path)(*a, **kw)
    if step.op == "call_function":
        return step.target(*a, **kw)
    return getattr(a[0], step.target)(*a[1:], **kw)


def _compile(module: nn.Module):
    """Trace ``module`` and turn its graph into a list of steps with pre-chosen tangent rules."""
    try:
        gm = symbolic_trace(module)
    except Exception as exc:  # data-dependent control flow, untraceable constructs
        raise _Unsupported(f"torch.fx.symbolic_trace failed: {type(exc).__name__}: {exc}") from None
    nodes = list(gm.graph.nodes)
    index = {nd: i for i, nd in enumerate(nodes)}

    def conv(a):
        return map_aggregate(a, lambda x: _Ref(index[x]) if isinstance(x, Node) else x)

    steps = []
    seen_input = False
    for i, nd in enumerate(nodes):
        args, kwargs = conv(nd.args), conv(dict(nd.kwargs))
        if nd.op == "placeholder":
            if not seen_input:
                seen_input = True
                steps.append(_Step("input"))
            elif nd.args:  # an extra argument with a default value
                steps.append(_Step("const", value=nd.args[0]))
            else:
                raise _Unsupported(f"forward takes more than one required input ({nd.target!r})")
        elif nd.op == "get_attr":
            path = tuple(nd.target.split("."))
            try:
                _resolve(module, path)
                steps.append(_Step("attr", path=path))  # read live from the module
            except AttributeError:  # a constant the tracer stored on the GraphModule
                steps.append(_Step("const", value=_resolve(gm, path)))
        elif nd.op == "output":
            out = nd.args[0]
            leaves = out if isinstance(out, (tuple, list)) else (out,)
            if not all(isinstance(x, Node) for x in leaves):
                raise _Unsupported("the module must return a tensor or a flat tuple/list of tensors")
            steps.append(_Step("output", args=(args[0],)))
        elif nd.op == "call_module":
            path = tuple(nd.target.split("."))
            mod = _resolve(module, path)
            why = _random_train_module(mod)
            if why:
                raise _Unsupported(why)
            rule, params = _module_rule(mod)
            if getattr(mod, "inplace", False):
                _check_inplace(nd)
            steps.append(_Step("call_module", nd.target, args, kwargs, rule, path=path, params=params))
        elif nd.op == "call_function":
            rule, params = _function_rule(nd, args, kwargs)
            steps.append(_Step("call_function", nd.target, args, kwargs, rule, params=params))
        elif nd.op == "call_method":
            rule, params = _method_rule(nd)
            steps.append(_Step("call_method", nd.target, args, kwargs, rule, params=params))
        else:  # pragma: no cover - fx has no other node kinds
            raise _Unsupported(f"unknown fx node kind {nd.op!r}")
    if not steps or steps[-1].op != "output":
        raise _Unsupported("the traced graph has no output")
    return _Program(steps)


def _check_inplace(nd: Node):
    src = nd.args[0] if nd.args else None
    if not isinstance(src, Node) or len(src.users) != 1 or src.op == "placeholder":
        raise _Unsupported(f"in-place operation {nd.target!r} on a value that is used elsewhere")


def _module_rule(mod):
    if isinstance(mod, nn.Linear):
        return _r_linear_module, None
    for cls, kind, names in _ACT_MODULES:
        if isinstance(mod, cls):
            return _r_activation, (kind, names, True)
    if isinstance(mod, _UNARY_MODULES):
        return _r_unary, None
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return _r_reshape, None
    if isinstance(mod, (nn.Identity, nn.modules.dropout._DropoutNd)):  # dropout: eval mode here
        return _r_identity, None
    return _r_generic, None


def _function_rule(nd: Node, args, kwargs):
    f = nd.target
    if f in _RANDOM_FUNCTIONS:
        raise _Unsupported(f"random function {getattr(f, '__name__', f)!r}")
    name = getattr(f, "__name__", "")
    if f in _INPLACE_OPERATORS or (name.endswith("_") and not name.endswith("__")):
        raise _Unsupported(f"in-place operation {name!r}")
    if kwargs.get("inplace", False) is not False:
        _check_inplace(nd)
    if f in _CONSTANT_FUNCTIONS:
        return _r_constant, None
    if f in _DROPOUT_FUNCTIONS:
        pos, default = _DROPOUT_FUNCTIONS[f]
        training = _arg(args, kwargs, pos, "training", default)
        if training is not False:
            raise _Unsupported(f"{f.__name__} with training={training!r} (random)")
        if _arg(args, kwargs, pos + 1, "inplace", False):
            _check_inplace(nd)
        return _r_identity, None
    if f is F.batch_norm and _arg(args, kwargs, 5, "training", False) is not False:
        raise _Unsupported("batch_norm in training mode (couples the rows of the batch)")
    if f in _ACT_FUNCTIONS:
        kind, spec = _ACT_FUNCTIONS[f]
        for pos, (name, default) in enumerate(spec, start=1):
            if name == "inplace" and _arg(args, kwargs, pos, name, default):
                _check_inplace(nd)
        return _r_activation, (kind, spec, False)
    if f in _UNARY_FUNCTIONS:
        return _r_unary, None
    if f in _ADD:
        return _r_add, 1.0
    if f in _SUB:
        return _r_add, -1.0
    if f in _MUL:
        return _r_mul, None
    if f in _DIV:
        return _r_div, None
    if f in _NEG:
        return _r_neg, None
    if f is F.linear:
        return _r_linear_function, None
    if f in _MATMUL:
        return _r_matmul, None
    if f in _RESHAPE_FUNCTIONS:
        return _r_reshape, None
    if f in (torch.permute, torch.transpose):
        return _r_permute, f.__name__
    if f is operator.getitem:
        return _r_getitem, None
    if f in _CAT:
        return _r_cat, "cat"
    if f is torch.stack:
        return _r_cat, "stack"
    if f in _SPLIT_FUNCTIONS:
        return _r_split, (len(_SPLIT_FUNCTIONS[f]) + 1, f.__name__)
    if f in (torch.sum, torch.mean):
        return _r_reduce, f.__name__
    if f is getattr:
        attr = args[1] if len(args) > 1 else None
        return (_r_constant if attr in _SHAPE_ATTRS else _r_getattr), None
    if f is torch.Tensor.detach or f is torch.detach:
        return _r_constant, None
    return _r_generic, None


def _method_rule(nd: Node):
    m = nd.target
    if m in _RANDOM_METHODS:
        raise _Unsupported(f"random method {m!r}")
    if m.endswith("_") and not m.endswith("__"):
        raise _Unsupported(f"in-place method {m!r}")
    if m in _SHAPE_METHODS or m in _CONSTANT_METHODS:
        return _r_constant, None
    if m in _ACT_METHODS:
        return _r_activation, (_ACT_METHODS[m], (), False)
    if m in _UNARY_METHODS:
        return _r_unary, None
    if m == "add":
        return _r_add, 1.0
    if m == "sub":
        return _r_add, -1.0
    if m == "mul":
        return _r_mul, None
    if m in ("div", "true_divide"):
        return _r_div, None
    if m == "neg":
        return _r_neg, None
    if m in ("matmul", "mm"):
        return _r_matmul, None
    if m in _RESHAPE_METHODS:
        return _r_reshape, None
    if m in ("permute", "transpose"):
        return _r_permute, m
    if m in _IDENTITY_METHODS:
        return _r_identity, None
    if m in _SPLIT_METHODS:
        return _r_split, (len(_SPLIT_METHODS[m]) + 1, m)
    if m in ("sum", "mean"):
        return _r_reduce, m
    return _r_generic, None


# ----------------------------------------------------------------------------- rules
# rule(step, root, a, at, kw, d) -> (value, tangent); `at[i]` is the tangent of `a[i]` (None: constant)


def _only_first(at, kw_has_t):
    if at[0] is None or kw_has_t or any(t is not None for t in at[1:]):
        raise _Decline
    return at[0]


def _r_constant(step, root, a, at, kw, d, kw_has_t):
    return _call(step, root, a, kw), None


def _r_getattr(step, root, a, at, kw, d, kw_has_t):
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor):
        return y, None
    raise _Decline


def _r_identity(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
    return _call(step, root, a, kw), t


def _r_linear_module(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
    mod = _resolve(root, step.path)
    y = mod(*a, **kw)
    return y, F.linear(t, mod.weight)


def _r_linear_function(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
    w = _arg(a, kw, 1, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise _Decline
    return _call(step, root, a, kw), F.linear(t, w)


def _r_activation(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
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


def _r_unary(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
    x = a[0]
    if not isinstance(x, torch.Tensor):
        raise _Decline

    def f(v):
        return _call(step, root, (v,) + tuple(a[1:]), kw)

    y, dy = jvp(f, (x,), (torch.ones_like(x),))
    if dy.shape != y.shape:
        raise _Decline
    return y, _fit(_lift(t, y.dim()) * dy, y)


def _r_add(step, root, a, at, kw, d, kw_has_t):
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


def _r_mul(step, root, a, at, kw, d, kw_has_t):
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


def _r_div(step, root, a, at, kw, d, kw_has_t):
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


def _r_neg(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
    return _call(step, root, a, kw), -t


def _r_matmul(step, root, a, at, kw, d, kw_has_t):
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


def _r_reshape(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t) if not (len(at) > 1 and step.target in ("view_as", "reshape_as")) else at[0]
    if t is None:
        raise _Decline
    y = _call(step, root, a, kw)
    if not isinstance(y, torch.Tensor) or y.dtype != a[0].dtype or y.numel() != a[0].numel():
        raise _Decline
    return y, t.reshape((t.shape[0],) + tuple(y.shape))


def _r_permute(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
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


def _r_getitem(step, root, a, at, kw, d, kw_has_t):
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


def _r_cat(step, root, a, at, kw, d, kw_has_t):
    if kw_has_t or len(a) > 2 or set(kw) - {"dim"}:
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


def _r_split(step, root, a, at, kw, d, kw_has_t):
    t = _only_first(at, kw_has_t)
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


def _r_reduce(step, root, a, at, kw, d, kw_has_t):
    """``sum``/``mean`` over given axes (linear): the same reduction of the tangent."""
    t = _only_first(at, kw_has_t)
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


def _tangent_tree(v, t):
    """Tangent pytree aligned with value ``v``: tensors where there is a tangent, ``_NO`` elsewhere."""
    if isinstance(t, torch.Tensor):
        return t
    if isinstance(t, (tuple, list)) and isinstance(v, (tuple, list)) and len(t) == len(v) and _has_tangent(t):
        parts = [_tangent_tree(vi, ti) for vi, ti in zip(v, t)]
        return type(v)(*parts) if _is_namedtuple(v) else type(v)(parts)
    return pytree.tree_map(lambda _: _NO, v)


def _is_namedtuple(v) -> bool:
    return isinstance(v, tuple) and hasattr(v, "_fields")


def _r_generic(step, root, a, at, kw, d, kw_has_t, kwt=None):
    """``vmap`` over the ``d`` tangents of ``jvp`` of the node (exact for any differentiable op)."""
    leaves, spec = pytree.tree_flatten((list(a), kw))
    tleaves, tspec = pytree.tree_flatten(([_tangent_tree(v, t) for v, t in zip(a, at)], kwt or {
        k: pytree.tree_map(lambda _: _NO, v) for k, v in kw.items()}))
    if len(tleaves) != len(leaves):
        raise _Unsupported(f"cannot align tangents with the arguments of {step.target!r}")
    idx = [i for i, t in enumerate(tleaves) if isinstance(t, torch.Tensor)]
    if not idx:
        return _call(step, root, a, kw), None

    def f_sub(*xs):
        args = list(leaves)
        for i, x in zip(idx, xs):
            args[i] = x
        aa, kk = pytree.tree_unflatten(args, spec)
        return _call(step, root, aa, kk)

    primals = tuple(leaves[i] for i in idx)
    return vmap(lambda *ts: jvp(f_sub, primals, ts), out_dims=(None, 0))(*(tleaves[i] for i in idx))


# ----------------------------------------------------------------------------- interpreter
def _gather(template, vals, tans):
    """Values and tangents of a (nested) argument template."""
    v = map_aggregate(template, lambda x: vals[x.i] if type(x) is _Ref else x)
    t = map_aggregate(template, lambda x: tans[x.i] if type(x) is _Ref else None)
    return v, t


def _has_tangent(t) -> bool:
    if t is None:
        return False
    if isinstance(t, torch.Tensor):
        return True
    if isinstance(t, (tuple, list)):
        return any(_has_tangent(x) for x in t)
    if isinstance(t, dict):
        return any(_has_tangent(x) for x in t.values())
    return False


def _run(prog: _Program, root: nn.Module, z: torch.Tensor):
    n, d = z.shape
    size = len(prog.steps)
    vals: list[Any] = [None] * size
    tans: list[Any] = [None] * size
    for i, s in enumerate(prog.steps):
        op = s.op
        if op == "input":
            vals[i] = z
            tans[i] = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, n, d)
            continue
        if op == "attr":
            vals[i] = _resolve(root, s.path)
            continue
        if op == "const":
            vals[i] = s.value
            continue
        if op == "output":
            return _finish(s.args[0], vals, tans, d)
        if s.flat:
            a = [vals[x.i] if type(x) is _Ref else x for x in s.args]
            at = [tans[x.i] if type(x) is _Ref else None for x in s.args]
            if s.kwargs:
                kw = {k: vals[x.i] if type(x) is _Ref else x for k, x in s.kwargs.items()}
                kwt = {k: tans[x.i] if type(x) is _Ref else None for k, x in s.kwargs.items()}
            else:
                kw, kwt = s.kwargs, None
            has_t = any(t is not None for t in at)
        else:
            a, at = _gather(list(s.args), vals, tans)
            kw, kwt = _gather(dict(s.kwargs), vals, tans)
            has_t = _has_tangent(at)
        kw_has_t = kwt is not None and _has_tangent(kwt)
        if not (has_t or kw_has_t):
            vals[i] = _call(s, root, a, kw)
            continue
        if kw_has_t:
            kwt_tree = {k: _tangent_tree(kw[k], kwt[k]) for k in kw}
            vals[i], tans[i] = _r_generic(s, root, a, at, kw, d, True, kwt_tree)
            continue
        try:
            vals[i], tans[i] = s.rule(s, root, a, at, kw, d, kw_has_t)
        except _Decline:
            vals[i], tans[i] = _r_generic(s, root, a, at, kw, d, kw_has_t)
    raise _Unsupported("the traced graph has no output")  # pragma: no cover


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


# ----------------------------------------------------------------------------- cache and API
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _entry(module: nn.Module):
    """The compiled program for the module's current structure/mode, or a string saying why not."""
    mods = list(module.modules())
    # forward hooks are not part of a symbolic trace: leave hooked modules to the generic path
    # (checked on every call: hooks come and go; not cached)
    if _module_mod._global_forward_hooks or _module_mod._global_forward_pre_hooks:
        return "global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook)"
    for m in mods:
        if m._forward_hooks or m._forward_pre_hooks:
            return f"a {type(m).__name__} has forward hooks (a trace does not run them)"
    per_module = _CACHE.get(module)
    if per_module is None:
        per_module = {}
        _CACHE[module] = per_module
    key = tuple((type(m), m.training) for m in mods)
    entry = per_module.get(key)
    if entry is None:
        try:
            entry = _compile(module)
        except _Unsupported as exc:
            entry = str(exc)
        per_module[key] = entry
    return entry


def traced_jvp_columns(module: nn.Module, z: torch.Tensor):
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

    First-order tangents only (the metric tensor); see the module docstring for what is
    interpreted how, the reference (Griewank & Walther 2008) and the measured speed-up.

    Raises:
        ValueError: ``module`` is not an ``nn.Module``, or ``z`` is not a floating ``(N, d)`` tensor.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"traced_jvp_columns needs an nn.Module, got {type(module).__name__}")
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError(
            f"z must be a floating-point tensor of shape (N, d), got "
            f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
            + (f" of dtype {z.dtype}" if isinstance(z, torch.Tensor) else "")
        )
    if _transforms_active():  # first order only: under vmap/jvp/grad/jacrev... the generic path
        return None
    entry = _entry(module)
    if isinstance(entry, str):
        return None
    sig = (z.dtype, z.device, z.shape[1])
    if sig in entry.failed:
        return None
    try:
        return _run(entry, module, z)
    except Exception as exc:  # an op torch.func cannot vectorise, an unsupported structure, ...
        entry.failed[sig] = f"interpreting the traced graph failed: {type(exc).__name__}: {exc}"
        return None


def _transforms_active() -> bool:
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # pragma: no cover - private API moved
        return False


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why :func:`traced_jvp_columns` returns ``None`` for ``module`` in its current mode, else ``None``.

    Traces the module if that has not happened yet. Reports a failed trace/refusal, or the last
    failure while interpreting the graph (for any input dtype/device/width).
    """
    entry = _entry(module)
    if isinstance(entry, str):
        return entry
    if entry.failed:
        return next(reversed(entry.failed.values()))
    return None
