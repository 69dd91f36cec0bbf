"""Tracing, classification and caching for the fx interpreter (see :mod:`latentgeo._autodiff`).

A module is traced once with :func:`torch.fx.symbolic_trace` (cached per module, weakly keyed)
and compiled into a list of :class:`_Step` s, each with the *name* of its tangent rule
(``"linear_module"``, ``"activation"``, ..., ``"generic"``); the interpreter looks the name up in
the rule table of its mode (first-order Jacobian columns, or second-order Taylor mode).
"""

from __future__ import annotations

import operator
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node, symbolic_trace
from torch.fx.node import map_aggregate
from torch.nn.modules import module as _module_mod
from torch.utils import _pytree as pytree

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


def _frozen_batch_norm(mod) -> bool:
    """A batch-norm layer that normalises with its running statistics (eval mode): an affine map."""
    return not mod.training and mod.track_running_stats and mod.running_var is not None


def _module_rule(mod):
    if isinstance(mod, nn.Linear):
        return "linear_module", None
    for cls, kind, names in _ACT_MODULES:
        if isinstance(mod, cls):
            return "activation", (kind, names, True)
    if isinstance(mod, _UNARY_MODULES) or (isinstance(mod, nn.modules.batchnorm._BatchNorm) and _frozen_batch_norm(mod)):
        return "unary", None
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return "reshape", None
    if isinstance(mod, (nn.Identity, nn.modules.dropout._DropoutNd)):  # dropout: eval mode here
        return "identity", None
    return "generic", None


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
        return "constant", None
    if f in _DROPOUT_FUNCTIONS:
        pos, default = _DROPOUT_FUNCTIONS[f]
        training = _arg(args, kwargs, pos, "training", default)
        if training is not False:
            raise _Unsupported(f"{f.__name__} with training={training!r} (random)")
        if _arg(args, kwargs, pos + 1, "inplace", False):
            _check_inplace(nd)
        return "identity", None
    if f is F.batch_norm and _arg(args, kwargs, 5, "training", False) is not False:
        raise _Unsupported("batch_norm in training mode (couples the rows of the batch)")
    if f in _ACT_FUNCTIONS:
        kind, spec = _ACT_FUNCTIONS[f]
        for pos, (name, default) in enumerate(spec, start=1):
            if name == "inplace" and _arg(args, kwargs, pos, name, default):
                _check_inplace(nd)
        return "activation", (kind, spec, False)
    if f in _UNARY_FUNCTIONS:
        return "unary", None
    if f in _ADD:
        return "add", 1.0
    if f in _SUB:
        return "add", -1.0
    if f in _MUL:
        return "mul", None
    if f in _DIV:
        return "div", None
    if f in _NEG:
        return "neg", None
    if f is F.linear:
        return "linear_function", None
    if f in _MATMUL:
        return "matmul", None
    if f in _RESHAPE_FUNCTIONS:
        return "reshape", None
    if f in (torch.permute, torch.transpose):
        return "permute", f.__name__
    if f is operator.getitem:
        return "getitem", None
    if f in _CAT:
        return "cat", "cat"
    if f is torch.stack:
        return "cat", "stack"
    if f in _SPLIT_FUNCTIONS:
        return "split", (len(_SPLIT_FUNCTIONS[f]) + 1, f.__name__)
    if f in (torch.sum, torch.mean):
        return "reduce", f.__name__
    if f is getattr:
        attr = args[1] if len(args) > 1 else None
        return ("constant" if attr in _SHAPE_ATTRS else "getattr"), None
    if f is torch.Tensor.detach or f is torch.detach:
        return "constant", None
    return "generic", None


def _method_rule(nd: Node):
    m = nd.target
    if m in _RANDOM_METHODS:
        raise _Unsupported(f"random method {m!r}")
    if m.endswith("_") and not m.endswith("__"):
        raise _Unsupported(f"in-place method {m!r}")
    if m in _SHAPE_METHODS or m in _CONSTANT_METHODS:
        return "constant", None
    if m in _ACT_METHODS:
        return "activation", (_ACT_METHODS[m], (), False)
    if m in _UNARY_METHODS:
        return "unary", None
    if m == "add":
        return "add", 1.0
    if m == "sub":
        return "add", -1.0
    if m == "mul":
        return "mul", None
    if m in ("div", "true_divide"):
        return "div", None
    if m == "neg":
        return "neg", None
    if m in ("matmul", "mm"):
        return "matmul", None
    if m in _RESHAPE_METHODS:
        return "reshape", None
    if m in ("permute", "transpose"):
        return "permute", m
    if m in _IDENTITY_METHODS:
        return "identity", None
    if m in _SPLIT_METHODS:
        return "split", (len(_SPLIT_METHODS[m]) + 1, m)
    if m in ("sum", "mean"):
        return "reduce", m
    return "generic", None


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


def _transforms_active() -> bool:
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # pragma: no cover - private API moved
        return False


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why :func:`~latentgeo._autodiff.jacobian_columns` returns ``None`` for ``module`` in its current mode, else ``None``.

    Traces the module if that has not happened yet. Reports a failed trace/refusal, or the last
    failure while interpreting the graph (for any input dtype/device/width).
    """
    entry = _entry(module)
    if isinstance(entry, str):
        return entry
    if entry.failed:
        return next(reversed(entry.failed.values()))
    return None


# ----------------------------------------------------------------------------- smoothness
# Activations whose derivatives jump: "C0" (the first derivative jumps: the pullback metric is
# discontinuous) or "C1" (the second derivative jumps: the metric is continuous but the geodesic
# equation's right-hand side, which holds its derivatives, jumps where a unit switches)
# (class, level, kink points, where); modules with attribute-dependent kinks are in op_kink
_KINKED_MODULES = (
    (nn.ReLU, "C0", (0.0,), "0"), (nn.LeakyReLU, "C0", (0.0,), "0"), (nn.PReLU, "C0", (0.0,), "0"),
    (nn.RReLU, "C0", (0.0,), "0"), (nn.Hardsigmoid, "C0", (-3.0, 3.0), "±3"), (nn.SELU, "C0", (0.0,), "0"),
    (nn.CELU, "C1", (0.0,), "0"), (nn.Softsign, "C1", (0.0,), "0"), (nn.Hardswish, "C1", (-3.0, 3.0), "±3"),
)
# function -> (level, kink points or None (their arguments: described, not located), where)
_KINKED_FUNCTIONS = {
    F.relu: ("C0", (0.0,), "0"), torch.relu: ("C0", (0.0,), "0"), F.relu6: ("C0", (0.0, 6.0), "0 and 6"),
    F.leaky_relu: ("C0", (0.0,), "0"), F.prelu: ("C0", (0.0,), "0"), F.hardtanh: ("C0", None, "its clamp limits"),
    F.threshold: ("C0", None, "its threshold"), F.selu: ("C0", (0.0,), "0"), F.hardsigmoid: ("C0", (-3.0, 3.0), "±3"),
    F.softshrink: ("C0", None, "±lambd"), F.hardshrink: ("C0", None, "±lambd"),
    torch.abs: ("C0", None, "0"),  # (|x| inside smooth compositions, e.g. x/(1+|x|), is not a kink of the map)
    F.celu: ("C1", (0.0,), "0"), F.softsign: ("C1", (0.0,), "0"), F.hardswish: ("C1", (-3.0, 3.0), "±3"),
}
_KINKED_METHODS = {"relu": ("C0", (0.0,), "0"), "abs": ("C0", None, "0")}


def op_kink(op: str, target, args, kwargs, mod=None):
    """``(level, points, where)`` of a graph node (``op``/``target`` as in ``torch.fx``; ``mod``: the
    module of a ``call_module`` node) whose derivatives jump, or ``None``. ``level`` is ``"C0"``
    (its first derivative jumps: the pullback metric is discontinuous) or ``"C1"`` (its second
    derivative jumps: the geodesic equation's right-hand side jumps where a unit switches);
    ``points`` the inputs at which it does (``None``: not known without its arguments); ``where``
    in words. The one table behind :func:`nonsmooth_ops` and the piecewise stage's kink meshes."""
    if op == "call_module":
        if isinstance(mod, nn.ELU):
            return ("C1" if float(mod.alpha) == 1.0 else "C0"), (0.0,), "0"
        if isinstance(mod, nn.Hardtanh):  # (ReLU6 too)
            return "C0", (float(mod.min_val), float(mod.max_val)), "its clamp limits"
        if isinstance(mod, (nn.Softshrink, nn.Hardshrink)):
            return "C0", (-float(mod.lambd), float(mod.lambd)), "±lambd"
        if isinstance(mod, nn.Threshold):
            return "C0", (float(mod.threshold),), "its threshold"
        for cls, level, points, where in _KINKED_MODULES:
            if isinstance(mod, cls):
                return level, points, where
        return None
    if op == "call_function":
        if target is F.elu:
            alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
            known = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
            return ("C1" if known and float(alpha) == 1.0 else "C0"), ((0.0,) if known else None), "0"
        return _KINKED_FUNCTIONS.get(target)
    if op == "call_method":
        return _KINKED_METHODS.get(target)
    return None


def _describe_kink(what: str, level: str, where: str) -> str:
    jump = "derivative" if level == "C0" else "second derivative"
    return f"{what} (its {jump} jumps at {where})"


def nonsmooth_ops(module: nn.Module) -> Optional[list]:
    """The operations of ``module``'s traced graph that are not twice continuously differentiable.

    Each entry names the operation and what jumps, e.g. ``"nn.ELU (its second derivative jumps at
    0)"`` (:func:`op_kink`). The geodesic equation of a pullback metric holds the decoder's second
    derivatives, so where one of them jumps (a unit switching sign along the curve) its right-hand
    side jumps; where a first derivative jumps (ReLU) the metric itself is discontinuous. ``[]``:
    none found; ``None``: the module cannot be traced (unknown). Guards such as ``clamp`` and
    ``where`` are not listed: they are usually inactive.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> nonsmooth_ops(nn.Sequential(nn.Linear(2, 8), nn.ELU(), nn.Linear(8, 3), nn.Softplus()))
        ['nn.ELU (its second derivative jumps at 0)']
        >>> nonsmooth_ops(nn.Sequential(nn.Linear(2, 8), nn.SiLU(), nn.Linear(8, 3)))
        []
    """
    entry = _entry(module)
    if isinstance(entry, str):
        return None
    out = []
    for st in entry.steps:
        mod = _resolve(module, st.path) if st.op == "call_module" else None
        k = op_kink(st.op, st.target, st.args, st.kwargs, mod)
        if k is None:
            continue
        if st.op == "call_module":
            what = f"nn.{type(mod).__name__}"
        elif st.op == "call_method":
            what = f"Tensor.{st.target}"
        else:
            what = f"{getattr(st.target, '__module__', 'torch').replace('torch.nn.functional', 'F')}.{st.target.__name__}"
        found = _describe_kink(what, k[0], k[2])
        if found not in out:
            out.append(found)
    return out


def nested_forward_hazard(decoder) -> Optional[str]:
    """Why nested forward-mode derivatives (``jvp`` of ``jvp``) of ``decoder``'s callables would be
    wrong, or ``None``: torch 2.13 gets the second forward-mode derivative of ``nn.LayerNorm``
    (``native_layer_norm``) and of instance statistics wrong (~40 % off; the first derivative is
    right). latentgeo's traced path decomposes those layers (see
    :func:`latentgeo._autodiff._first_order._decomposed`); the paths that nest ``torch.func.jvp``
    over the whole decoder (untraceable decoders, derivatives of ``Metric.tensor_fn``) cannot, and
    refuse such decoders with this reason instead of returning wrong numbers."""
    from . import decoder_modules

    for m in decoder_modules(decoder):
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm) or (
                isinstance(mod, nn.modules.instancenorm._InstanceNorm) and (mod.training or not mod.track_running_stats)
            ):
                return (f"the decoder has a {type(mod).__name__}, whose second forward-mode derivatives torch "
                        f"{torch.__version__} gets wrong (nested jvp through layer_norm is ~40 % off finite differences)")
    return None
