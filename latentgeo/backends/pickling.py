"""Can an object travel to another process? Find out before the cluster does, and say what blocks it.

Workers receive the metric (with its decoder) and the solver options as pickles. Two policies:

* ``"reference"`` (the default of :class:`~latentgeo.backends.DaskBackend`): plain
  :mod:`pickle`. Classes and functions are pickled *by reference* (module and name), so they
  must be defined at the top level of a module the workers can import — the package itself, a
  module of your project installed or on ``PYTHONPATH`` on every worker. ``nn.Module``
  decoders, :class:`~latentgeo.DeterministicDecoder` over such a function, and tensors all
  qualify. Lambdas, functions defined inside other functions, and functions defined in
  ``__main__`` or a notebook cell do not (``__main__`` on a worker is not your script).
* ``"value"``: cloudpickle (what Dask itself uses) pickles functions from ``__main__``,
  notebooks and lambdas *by value*, with their closures. It works when every module the
  function refers to is installed on the workers; the closure travels with every copy.

Objects that pickle under neither (open files, locks, generators, CUDA streams, ...) are
rejected in both cases.

Example:
    >>> import torch, latentgeo as lg
    >>> from latentgeo.backends.pickling import check_picklable
    >>> check_picklable(lg.PullbackMetric(lg.DeterministicDecoder(torch.tanh)), "metric")
    >>> check_picklable(lg.PullbackMetric(lg.DeterministicDecoder(lambda z: 2 * z)), "metric")
    Traceback (most recent call last):
    ...
    TypeError: metric cannot be sent to the workers: metric.decoder.f is the function '<lambda>' ...
"""

from __future__ import annotations

import pickle
import types

__all__ = ["check_picklable", "POLICIES"]

POLICIES = ("reference", "value")


def _dumps_for(policy):
    if policy == "reference":
        return lambda obj: pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        from distributed.protocol.pickle import dumps
    except ImportError:  # pragma: no cover - distributed absent
        try:
            import cloudpickle
        except ImportError as err:
            raise ImportError("pickle='value' needs cloudpickle (installed with dask[distributed])") from err
        dumps = cloudpickle.dumps
    return dumps


def _fails(dumps, obj):
    try:
        dumps(obj)
    except Exception as err:  # noqa: BLE001 - any failure to pickle is what we look for
        return err
    return None


def _children(obj):
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, types.FunctionType) and obj.__closure__:
        return [(f".<closure {n}>", c.cell_contents) for n, c in zip(obj.__code__.co_freevars, obj.__closure__)
                if _cell_full(c)]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        d = dict(vars(obj))
        for key in ("_modules", "_parameters", "_buffers"):  # nn.Module children by their attribute names
            sub = d.pop(key, None)
            if isinstance(sub, dict):
                d.update({k: v for k, v in sub.items() if v is not None})
        return [(f".{k}", v) for k, v in d.items()]
    return []


def _cell_full(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _describe(obj):
    if isinstance(obj, types.FunctionType):
        q, m = obj.__qualname__, obj.__module__
        if obj.__name__ == "<lambda>":
            why = "a lambda has no importable name"
        elif "<locals>" in q:
            why = "it is defined inside another function"
        elif m == "__main__":
            why = "it is defined in __main__ (a script or notebook), which workers cannot import"
        else:
            why = "it cannot be found again by its name"
        return f"the function {obj.__name__!r} ({m}.{q}): {why}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def _culprit(obj, dumps, path, depth=8, seen=None):
    """The deepest attribute path below ``obj`` that fails to pickle (``obj`` itself if none does)."""
    seen = set() if seen is None else seen
    if depth <= 0 or id(obj) in seen:
        return path, obj
    seen.add(id(obj))
    for name, child in _children(obj):
        if _fails(dumps, child) is not None:
            return _culprit(child, dumps, path + name, depth - 1, seen)
    return path, obj


def check_picklable(obj, name: str, policy: str = "reference") -> None:
    """Raise ``TypeError`` naming the part of ``obj`` that cannot be pickled under ``policy``.

    Args:
        obj: what is to be sent (a metric, solver options).
        name: its argument name, used in the message.
        policy: ``"reference"`` (plain :mod:`pickle`) or ``"value"`` (cloudpickle); see the module text.
    """
    if policy not in POLICIES:
        raise ValueError(f"pickle must be one of {POLICIES}, got {policy!r}")
    dumps = _dumps_for(policy)
    err = _fails(dumps, obj)
    if err is None:
        return
    path, bad = _culprit(obj, dumps, name)
    hint = ("define it at the top level of an importable module (installed or on PYTHONPATH on every "
            "worker), or use an nn.Module; pickle='value' ships functions from __main__/notebooks and "
            "lambdas by value with cloudpickle") if policy == "reference" else (
            "cloudpickle cannot serialise it either; keep such objects (files, locks, generators, ...) out of "
            "the metric and decoder")
    raise TypeError(f"{name} cannot be sent to the workers: {path} is {_describe(bad)} "
                    f"({type(err).__name__}: {err}); {hint}") from err
