"""Conditional flows with one interface: ``flow(x, context) -> (y, log_det)``, ``flow.inverse(y, context)``.

* :class:`ZukoFlow` — zuko's conditional RealNVP or NSF (``context`` = encoder features); the
  sample and its log-determinant come from zuko's ``call_and_ladj``. zuko is imported when a
  :class:`ZukoFlow` is built.
* :class:`AmortizedFlow` — ``n_layers`` planar or radial layers whose parameters are the
  ``context`` itself (a slice of the encoder output, :attr:`AmortizedFlow.n_params` wide).
* :class:`FlowStack` — a sequence of layers with this interface (e.g. the hyperbolic couplings).

Shapes: ``x (..., d)`` (``(S, N, d)`` for ``S`` posterior samples of ``N`` items) and
``context (N, h)``, broadcast against ``x``'s leading dimensions; ``log_det (...)``.

Example:
    >>> import torch
    >>> from latentgeo.flows import AmortizedFlow
    >>> flow = AmortizedFlow("radial", dim=2, n_layers=3)
    >>> params = torch.randn(5, flow.n_params, dtype=torch.float64)
    >>> x = torch.randn(4, 5, 2, dtype=torch.float64)
    >>> y, logdet = flow(x, params)
    >>> bool(torch.allclose(flow.inverse(y, params), x, atol=1e-10)), logdet.shape
    (True, torch.Size([4, 5]))
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .euclidean import PlanarTransform, RadialTransform

__all__ = ["ZukoFlow", "AmortizedFlow", "FlowStack", "ZUKO_KINDS", "AMORTIZED_KINDS"]

ZUKO_KINDS = ("realnvp", "nsf")
AMORTIZED_KINDS = ("planar", "radial")


def _posint(v, name, least=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ValueError(f"{name} must be an integer ≥ {least}, got {v!r}")
    return v


def _expand_context(context, x, width, name="context"):
    if not isinstance(context, torch.Tensor) or context.shape[-1] != width:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"{name} must have last dimension {width}, got {shape}")
    try:
        return context.expand(x.shape[:-1] + (width,))
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(context.shape)} does not broadcast against x of shape {tuple(x.shape)}"
        ) from None


class ZukoFlow(nn.Module):
    """zuko's conditional ``RealNVP`` or ``NSF`` as a posterior flow.

    Args:
        kind: ``"realnvp"`` (affine couplings) or ``"nsf"`` (rational-quadratic spline couplings).
        dim: the dimension ``d`` of the flowed variable (``d ≥ 2`` for couplings).
        context_dim: width of the conditioning features (0: unconditional).
        transforms: number of coupling layers.
        hidden: hidden widths of zuko's conditioner networks.
    """

    def __init__(self, kind: str, dim: int, context_dim: int = 0, transforms: int = 3,
                 hidden: Sequence[int] = (64, 64)):
        super().__init__()
        if kind not in ZUKO_KINDS:
            raise ValueError(f"kind must be one of {ZUKO_KINDS}, got {kind!r}")
        _posint(dim, "dim", 2)
        _posint(context_dim, "context_dim", 0)
        _posint(transforms, "transforms")
        try:
            import zuko
        except ImportError as exc:
            raise ImportError(
                f"flow {kind!r} needs zuko (a latentgeo dependency: pip install 'zuko>=1.6'): {exc}"
            ) from None

        cls = zuko.flows.RealNVP if kind == "realnvp" else zuko.flows.NSF
        self.kind, self.dim, self.context_dim = kind, dim, context_dim
        self.flow = cls(dim, context_dim, transforms=transforms, hidden_features=tuple(hidden))

    def _transform(self, x, context):
        if self.context_dim:
            return self.flow.transform(_expand_context(context, x, self.context_dim))
        return self.flow.transform(None)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None):
        return self._transform(x, context).call_and_ladj(x)

    def inverse(self, y: torch.Tensor, context: Optional[torch.Tensor] = None):
        return self._transform(y, context).inv(y)


class AmortizedFlow(nn.Module):
    """``n_layers`` planar or radial layers, parameters per item from ``context (..., n_params)``.

    Has no weights of its own: the encoder produces the parameters (amortisation).
    """

    def __init__(self, kind: str, dim: int, n_layers: int = 4):
        super().__init__()
        if kind not in AMORTIZED_KINDS:
            raise ValueError(f"kind must be one of {AMORTIZED_KINDS}, got {kind!r}")
        self.kind, self.dim, self.n_layers = kind, _posint(dim, "dim"), _posint(n_layers, "n_layers")
        self.cls = PlanarTransform if kind == "planar" else RadialTransform
        self.per_layer = self.cls.n_params(dim)

    @property
    def n_params(self) -> int:
        """Width of the context (the flat parameters of all layers)."""
        return self.n_layers * self.per_layer

    def transforms(self, context: torch.Tensor) -> list:
        """The layers as ``torch.distributions.Transform`` objects, first to last."""
        if not isinstance(context, torch.Tensor) or context.shape[-1] != self.n_params:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context must have last dimension {self.n_params}, got {shape}")
        p = self.per_layer
        return [self.cls.from_params(context[..., k * p : (k + 1) * p]) for k in range(self.n_layers)]

    def forward(self, x, context):
        logdet = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for t in self.transforms(context):
            y = t(x)
            logdet = logdet + t.log_abs_det_jacobian(x, y)
            x = y
        return x, logdet

    def inverse(self, y, context):
        for t in reversed(self.transforms(context)):
            y = t.inv(y)
        return y

    def extra_repr(self):
        return f"kind={self.kind!r}, dim={self.dim}, n_layers={self.n_layers}"


class FlowStack(nn.Module):
    """Compose layers with the ``(x, context) -> (y, log_det)`` / ``inverse(y, context)`` interface."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x, context=None):
        logdet = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y, context=None):
        for layer in reversed(self.layers):
            y = layer.inverse(y, context)
        return y
