"""Input checks shared by the whole package.

Every public entry point validates what it is given and raises a ``ValueError`` that names
the problem (which argument, which shape, which points) instead of returning NaN or failing
deep inside torch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "as_latent_batch",
    "check_finite",
    "describe_bad_rows",
    "check_int",
    "check_real",
    "check_bool",
    "check_choice",
    "check_on_failure",
    "ON_FAILURE",
    "infer_latent_dim",
    "model_dtype",
    "probe_decoder",
    "as_data_batch",
]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def describe_bad_rows(mask: torch.Tensor, max_show: int = 5) -> str:
    """Human-readable list of the batch indices where ``mask`` (N,) is True."""
    idx = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1).tolist()
    shown = ", ".join(str(i) for i in idx[:max_show])
    more = f" and {len(idx) - max_show} more" if len(idx) > max_show else ""
    return f"{len(idx)} point(s) (indices {shown}{more})"


def as_latent_batch(
    z,
    latent_dim: Optional[int] = None,
    name: str = "z",
    allow_single: bool = True,
    dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, bool]:
    """Check a batch of latent codes and return it as a floating ``(N, d)`` tensor.

    Returns ``(z, was_single)``; a single code of shape ``(d,)`` is promoted to ``(1, d)``
    when ``allow_single`` is true, and ``was_single`` tells the caller to squeeze results.

    Conversions (never ones that lose precision silently): lists and numpy arrays become
    tensors of ``dtype`` (the dtype of the model they meet; default: numpy's own float dtype,
    else torch's default dtype); integer and bool tensors become ``dtype`` (or the default
    dtype). A floating tensor keeps its dtype (the caller refuses a mismatch, naming both).

    Raises:
        TypeError: not convertible to a tensor, or a complex / non-numeric dtype (the message
            names the dtype the caller passed).
        ValueError: a wrong rank, a wrong latent dimension, an empty batch, NaN/inf entries.

    Example:
        >>> import torch
        >>> from latentgeo._validation import as_latent_batch
        >>> z, single = as_latent_batch([1, 2], dtype=torch.float64)
        >>> z.dtype, tuple(z.shape), single
        (torch.float64, (1, 2), True)
    """
    given = type(z).__name__
    if not isinstance(z, torch.Tensor):
        import numpy as np

        if isinstance(z, (str, bytes, dict, set)) or z is None:
            raise TypeError(f"{name} must be a tensor of latent codes (N, d), got {given}")
        try:
            arr = np.asarray(z)
        except Exception as exc:
            raise TypeError(f"{name} must be a tensor of latent codes (N, d), got {given} ({exc})") from None
        if arr.dtype.kind == "c":
            raise TypeError(f"{name} must be real, got a complex {given} (dtype {arr.dtype})")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric latent codes, got a {given} of dtype {arr.dtype}")
        target = dtype
        if target is None:
            target = torch.float64 if arr.dtype == np.float64 and given == "ndarray" else torch.get_default_dtype()
            if arr.dtype.kind == "f" and given == "ndarray":
                target = {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}.get(arr.dtype, target)
        z = torch.as_tensor(arr.astype(np.float64) if arr.dtype.kind in "biu" else arr).to(target)
    elif not torch.is_floating_point(z):
        if z.dtype in _INT_DTYPES:
            z = z.to(dtype if dtype is not None else torch.get_default_dtype())
        else:
            raise TypeError(f"{name} must have a real dtype (float or integer), got {z.dtype}")
    if z.is_inference() and not torch.is_inference_mode_enabled():
        # codes made under torch.inference_mode() (e.g. by an encoder) cannot enter autodiff;
        # a normal copy can
        z = z.clone()
    single = False
    if z.dim() == 1 and allow_single:
        z = z.unsqueeze(0)
        single = True
    if z.dim() != 2:
        want = "(N, d) (or (d,) for a single code)" if allow_single else "(N, d)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(z.shape)}); give at least one code")
    if z.shape[1] == 0:
        raise ValueError(f"{name} has latent dimension 0 (shape {tuple(z.shape)})")
    if latent_dim is not None and z.shape[1] != latent_dim:
        raise ValueError(
            f"{name} has latent dimension {z.shape[1]} but the decoder/metric expects {latent_dim} "
            f"(shape {tuple(z.shape)})"
        )
    check_finite(z, name)
    return z, single


def as_data_batch(x, data_dim: int, item_shape: tuple = (), dtype: Optional[torch.dtype] = None,
                  name: str = "x", device=None) -> torch.Tensor:
    """Check a batch of data items and return it as a ``(N, data_dim)`` tensor of ``dtype``.

    Accepts ``(N, data_dim)`` or ``(N, *item_shape)``; lists, numpy arrays and integer tensors
    are converted to ``dtype`` (the model's); a floating tensor of another dtype is refused
    (``ValueError`` naming both), complex or non-numeric input is a ``TypeError``, an empty
    batch or NaN/inf entries a ``ValueError``.
    """
    given = type(x).__name__
    if not isinstance(x, torch.Tensor):
        import numpy as np

        if isinstance(x, (str, bytes, dict, set)) or x is None:
            raise TypeError(f"{name} must be a tensor of data items (N, {data_dim}), got {given}")
        try:
            arr = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{name} must be a tensor of data items (N, {data_dim}), got {given} ({exc})") from None
        if arr.dtype.kind not in "biuf":
            kind = "complex" if arr.dtype.kind == "c" else "non-numeric"
            raise TypeError(f"{name} must be real numbers, got a {kind} {given} (dtype {arr.dtype})")
        x = torch.as_tensor(arr.astype(np.float64) if arr.dtype.kind in "biu" else arr).to(
            dtype or torch.get_default_dtype())
    elif x.is_complex() or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must have a real dtype (float or integer), got {x.dtype}")
    elif not x.is_floating_point():
        x = x.to(dtype or torch.get_default_dtype())
    item_shape = tuple(item_shape or ())
    if x.dim() >= 2 and item_shape and tuple(x.shape[1:]) == item_shape:
        x = x.reshape(x.shape[0], data_dim)
    if x.dim() != 2 or x.shape[1] != data_dim:
        alt = f" or (N, *{item_shape})" if item_shape and item_shape != (data_dim,) else ""
        raise ValueError(f"{name} must have shape (N, {data_dim}){alt}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); give at least one item")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but the model is {dtype}; convert one of them (e.g. {name}.to({dtype}))"
        )
    if device is not None and x.device != torch.device(device):
        raise ValueError(f"{name} is on {x.device} but the model is on {device}")
    check_finite(x, name)
    return x


def model_dtype(obj) -> Optional[torch.dtype]:
    """The floating dtype of the first parameter of ``obj`` (an ``nn.Module``, a decoder
    wrapper, a metric) or ``None`` when it has none: the dtype non-tensor input is converted to."""
    seen = set()
    todo = [obj]
    while todo:
        o = todo.pop(0)
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            for p in o.parameters():
                if torch.is_floating_point(p):
                    return p.dtype
            continue
        if isinstance(o, torch.Tensor):
            if torch.is_floating_point(o):
                return o.dtype
            continue
        mods = getattr(o, "_modules", None)
        if callable(mods) and not isinstance(o, type):  # latentgeo Decoder: its callables
            try:
                todo.extend(mods())
            except Exception:  # pragma: no cover - a broken wrapper is not our business here
                pass
            todo.extend(v for k, v in vars(o).items() if not k.startswith("_") and callable(v))
        elif callable(o) and hasattr(o, "__code__"):  # a plain function: what it closes over
            todo.extend(c.cell_contents for c in (o.__closure__ or ()) if _cell_full(c))
            todo.extend(o.__defaults__ or ())
            todo.extend((o.__kwdefaults__ or {}).values())
        todo.append(getattr(o, "decoder", None))
    return None


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def infer_latent_dim(callables) -> Optional[int]:
    """The input width of ``callables`` when it is structurally certain, else ``None``.

    Certain means: an ``nn.Linear`` itself, or an ``nn.Sequential`` whose first layer is (after
    descending into nested ``nn.Sequential`` s) an ``nn.Linear``; its ``in_features`` is the
    latent width. Arbitrary modules and functions give ``None`` (see :func:`probe_decoder`).
    Several callables must agree; disagreement gives ``None``.
    """
    dims = set()
    for f in callables:
        m = f
        while isinstance(m, torch.nn.Sequential) and len(m) > 0:
            m = m[0]
        if isinstance(m, torch.nn.Linear):
            dims.add(int(m.in_features))
        else:
            return None
    return dims.pop() if len(dims) == 1 else None


def probe_decoder(fn, z: torch.Tensor, name: str = "z", what: str = "the decoder") -> None:
    """Call ``fn`` on the first row of ``z`` (no grad) and turn a torch failure into a
    ``ValueError`` naming the shape ``what`` refused (torch says "mat1 and mat2 shapes cannot be
    multiplied", which names neither the argument nor the latent width)."""
    try:
        with torch.no_grad():
            fn(z[:1].detach())
    except (RuntimeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "dtype" in first or "Double" in first or "Float" in first or "Half" in first:
            hint = f"give {name} in the dtype the decoder computes in"
        else:
            hint = "check the latent width the decoder was built for (pass latent_dim= to the wrapper to have it checked up front)"
        raise ValueError(
            f"{what} refused {name} of shape {tuple(z.shape)} (latent width {z.shape[1]}, dtype {z.dtype}): "
            f"{first}; {hint}"
        ) from None


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the offending batch rows if ``x`` has NaN/inf."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.reshape(x.shape[0], -1).all(dim=1) if x.dim() > 0 else ~finite
        kinds = []
        if bool(torch.isnan(x).any()):
            kinds.append("NaN")
        if bool(torch.isinf(x).any()):
            kinds.append("inf")
        raise ValueError(f"{name} contains {'/'.join(kinds)} at {describe_bad_rows(bad)}")


# ---------------------------------------------------------------------------------------
# scalar options: one message shape ("NAME must be EXPECTED, got GIVEN") for every entry point
# ---------------------------------------------------------------------------------------
def check_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an ``int`` (bools and non-integral floats refused) within ``[minimum, maximum]``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(
    value,
    name: str,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the given bounds (``strict_*``: open bound)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict_min else '>='} {minimum}, got {value}")
    if maximum is not None and (value >= maximum if strict_max else value > maximum):
        raise ValueError(f"{name} must be {'<' if strict_max else '<='} {maximum}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` if it is a ``bool`` (numpy bools accepted), else a ``TypeError``."""
    if isinstance(value, bool):
        return value
    try:
        import numpy as np

        if isinstance(value, np.bool_):
            return bool(value)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_choice(value, name: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; expected one of {opts}")
    return value


ON_FAILURE = ("raise", "warn", "ignore")


def check_on_failure(value, name: str = "on_failure", choices=ON_FAILURE) -> str:
    """The package's one failure vocabulary: ``"raise"`` (an exception naming the failed items),
    ``"warn"`` (a ``RuntimeWarning`` with the count; the result flags them) or ``"ignore"``
    (the result flags them, silently). Entry points may accept a subset."""
    return check_choice(value, name, choices)
