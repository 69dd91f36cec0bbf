"""The one fx interpreter: runs a compiled program with the rule table of a mode.

A *mode* says what every value carries next to it (its tangent slots), how the input is seeded,
which rule computes each node's tangents, the generic rule for everything else, and how the
output is assembled:

* first order (:mod:`._first_order`): ``d`` Jacobian columns ``∂x·e_i``;
* Taylor (:mod:`._taylor`): ``U = [∂x·e_1, …, ∂x·e_d, ẋ, ẍ]`` along ``z + t v``;
* mixed (:mod:`._taylor`): ``[∂x·e_i …, ẋ, ∂²x[v, e_i] …]``;
* Hessian (:mod:`._taylor`): ``[∂x·e_i …, ∂²x[e_i, e_j] … (i ≤ j)]``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch.fx.node import map_aggregate

from ._trace import _Decline, _Program, _Ref, _Unsupported, _call, _has_tangent, _resolve, _tangent_tree

__all__ = ["Mode", "run"]


class Mode(NamedTuple):
    """What the interpreter pushes through the graph (see the module docstring)."""

    name: str
    slots: Callable[[int], int]  # tangent slots for a latent dimension d
    seed: Callable  # (z, v) -> tangent of the input, (slots, N, d)
    rules: dict  # rule name -> rule(step, root, a, at, kw, D) -> (value, tangent)
    generic: Callable  # rule(step, root, a, at, kw, D, kwt=None) for any other node
    finish: Callable  # (template, vals, tans, d) -> outputs


def _gather(template, vals, tans):
    """Values and tangents of a (nested) argument template."""
    v = map_aggregate(template, lambda x: vals[x.i] if type(x) is _Ref else x)
    t = map_aggregate(template, lambda x: tans[x.i] if type(x) is _Ref else None)
    return v, t


def run(prog: _Program, root, z: torch.Tensor, mode: Mode, v=None):
    """Interpret ``prog`` on ``z`` (``(N, d)``; ``v`` the velocity for Taylor mode) in ``mode``."""
    n, d = z.shape
    D = mode.slots(d)
    rules, generic = mode.rules, mode.generic
    size = len(prog.steps)
    vals: list[Any] = [None] * size
    tans: list[Any] = [None] * size
    for i, s in enumerate(prog.steps):
        op = s.op
        if op == "input":
            vals[i] = z
            tans[i] = mode.seed(z, v)
            continue
        if op == "attr":
            vals[i] = _resolve(root, s.path)
            continue
        if op == "const":
            vals[i] = s.value
            continue
        if op == "output":
            return mode.finish(s.args[0], vals, tans, d)
        if s.flat:  # no nested argument containers (most nodes): skip the generic gathering
            a = [vals[x.i] if type(x) is _Ref else x for x in s.args]
            at = [tans[x.i] if type(x) is _Ref else None for x in s.args]
            has_t = any(t is not None for t in at)
            if s.kwargs:
                kw = {k: vals[x.i] if type(x) is _Ref else x for k, x in s.kwargs.items()}
                kwt = {k: tans[x.i] if type(x) is _Ref else None for k, x in s.kwargs.items()}
                kw_has_t = _has_tangent(kwt)
            else:
                kw, kwt, kw_has_t = s.kwargs, None, False
        else:
            a, at = _gather(list(s.args), vals, tans)
            kw, kwt = _gather(dict(s.kwargs), vals, tans)
            has_t = _has_tangent(at)
            kw_has_t = _has_tangent(kwt)
        if not (has_t or kw_has_t):
            vals[i] = _call(s, root, a, kw)
            continue
        if kw_has_t:  # tangents in keyword arguments: only the generic rule aligns them
            vals[i], tans[i] = generic(s, root, a, at, kw, D, {k: _tangent_tree(kw[k], kwt[k]) for k in kw})
            continue
        rule = rules.get(s.rule)
        try:
            if rule is None:
                raise _Decline
            vals[i], tans[i] = rule(s, root, a, at, kw, D)
        except _Decline:
            vals[i], tans[i] = generic(s, root, a, at, kw, D)
    raise _Unsupported("the traced graph has no output")  # pragma: no cover
