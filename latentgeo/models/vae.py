"""Variational autoencoder with a pluggable latent space and likelihood.

``VAE(data_dim, latent_dim, latent="euclidean", likelihood="gaussian")`` is an MLP encoder
producing the posterior parameters of a :class:`~latentgeo.models.latents.Latent`, and an
MLP decoder producing the likelihood parameters (:mod:`latentgeo.models.likelihoods`).

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014 (ELBO, eq. 3).
    Arvanitidis, Hansen & Hauberg, *Latent Space Oddity*, ICLR 2018 (mean-then-variance
    training, RBF variance, §4).

Example:
    >>> import torch
    >>> from latentgeo.models import VAE
    >>> vae = VAE(data_dim=64, latent_dim=2, hidden=(32,), random_state=0)
    >>> x = torch.rand(5, 64)
    >>> vae.elbo(x).shape, vae.encode_mean(x).shape
    (torch.Size([5]), torch.Size([5, 2]))
    >>> metric_decoder = vae.decoder_for_analysis()   # a latentgeo.GaussianDecoder
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .latents import LATENTS, Latent, get_latent
from .likelihoods import LIKELIHOODS, VARIANCES, GaussianLikelihood
from .nets import ACTIVATIONS, MLP, check_hidden

__all__ = ["VAE"]

_CONFIG_KEYS = {
    "class", "data_dim", "latent_dim", "latent", "latent_kwargs", "likelihood", "hidden", "activation",
    "item_shape", "min_std", "variance", "rbf", "dtype", "metadata",
}


def _posint(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


class VAE(nn.Module):
    """A VAE with MLP encoder/decoder.

    Args:
        data_dim: width ``D`` of a flattened data item.
        latent_dim: latent dimension ``d``.
        latent: registered latent name (``"euclidean"``; see
            :func:`~latentgeo.models.latents.register_latent`).
        latent_kwargs: extra keyword arguments of the latent (JSON-serialisable).
        likelihood: ``"gaussian"`` (mean and std heads) or ``"bernoulli"`` (logits).
        hidden: encoder hidden widths (from the data side); the decoder mirrors them.
        activation: hidden activation (default ``"tanh"``: smooth, so the pullback metric is).
        item_shape: shape of one data item for reshaping (e.g. ``(8, 8)``); default ``(D,)``.
        min_std: floor of the decoder's constant/learned std.
        random_state: if given, the initial weights depend on it only (drawn inside a forked RNG);
            ``None`` uses torch's global generator.

    Attributes:
        config: everything needed to rebuild the model (:meth:`from_config`).
        metadata: a free JSON-able dict saved with the model (e.g. the data set's name/params).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 2,
        *,
        latent: str = "euclidean",
        latent_kwargs: Optional[dict] = None,
        likelihood: str = "gaussian",
        hidden=(64, 64),
        activation: str = "tanh",
        item_shape=None,
        min_std: float = 1e-3,
        random_state: Optional[int] = None,
    ):
        super().__init__()
        _posint(data_dim, "data_dim")
        _posint(latent_dim, "latent_dim")
        if latent not in LATENTS:
            raise ValueError(f"unknown latent {latent!r}; available: {', '.join(sorted(LATENTS))}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        hidden = check_hidden(hidden)
        if item_shape is None:
            item_shape = (data_dim,)
        item_shape = tuple(int(s) for s in item_shape)
        if math.prod(item_shape) != data_dim:
            raise ValueError(f"item_shape {item_shape} has {math.prod(item_shape)} entries but data_dim is {data_dim}")
        latent_kwargs = dict(latent_kwargs or {})
        if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int)):
            raise ValueError(f"random_state must be an integer or None, got {random_state!r}")
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.latent_name, self.latent_kwargs = latent, latent_kwargs
        self.likelihood_name = likelihood
        self.hidden, self.activation = hidden, activation
        self.item_shape, self.min_std = item_shape, float(min_std)
        self.metadata: dict = {}

        def build():
            self.latent: Latent = get_latent(latent, latent_dim, **latent_kwargs)
            self.encoder = MLP(data_dim, self.latent.n_params, hidden, activation)
            self.likelihood = LIKELIHOODS[likelihood](
                self.latent.code_dim, data_dim, tuple(reversed(hidden)), activation, min_std
            )

        if random_state is None:
            build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_state)
                build()

    # -- config / persistence ----------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def variance(self) -> Optional[str]:
        """Current std of a Gaussian decoder (``"constant"``, ``"learned"``, ``"rbf"``); ``None`` for Bernoulli."""
        return self.likelihood.variance

    def set_variance(self, mode: str) -> "VAE":
        """Choose which std a Gaussian decoder uses (``"constant"``, ``"learned"``, ``"rbf"``)."""
        if not isinstance(self.likelihood, GaussianLikelihood):
            raise ValueError("only a Gaussian likelihood has a variance to choose")
        self.likelihood.set_variance(mode)
        return self

    @property
    def config(self) -> dict:
        """JSON-serialisable description from which :meth:`from_config` rebuilds the model."""
        return {
            "class": "VAE",
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "latent": self.latent_name,
            "latent_kwargs": {**self.latent.kwargs(), **self.latent_kwargs},
            "likelihood": self.likelihood_name,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "item_shape": list(self.item_shape),
            "min_std": self.min_std,
            "variance": self.variance,
            "rbf": self.likelihood.rbf_config(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "metadata": self.metadata,
        }

    @classmethod
    def from_config(cls, config: dict) -> "VAE":
        """Rebuild an (untrained) model with the architecture and state layout of ``config``."""
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        if config.get("class", "VAE") != "VAE":
            raise ValueError(f"config describes a {config.get('class')!r}, not a VAE")
        unknown = {k for k in config if not k.startswith("_")} - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown VAE config keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        missing = {"data_dim", "latent_dim"} - set(config)
        if missing:
            raise ValueError(f"VAE config lacks {sorted(missing)}")
        model = cls(
            config["data_dim"],
            config["latent_dim"],
            latent=config.get("latent", "euclidean"),
            latent_kwargs=config.get("latent_kwargs") or {},
            likelihood=config.get("likelihood", "gaussian"),
            hidden=tuple(config.get("hidden", (64, 64))),
            activation=config.get("activation", "tanh"),
            item_shape=config.get("item_shape"),
            min_std=config.get("min_std", 1e-3),
        )
        dtype = config.get("dtype", "float32")
        if dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise ValueError(f"unsupported dtype {dtype!r} in VAE config")
        model.to(getattr(torch, dtype))
        rbf = config.get("rbf")
        if rbf is not None:
            if not isinstance(model.likelihood, GaussianLikelihood):
                raise ValueError("config has an RBF variance but the likelihood is not Gaussian")
            model.likelihood.make_empty_rbf(_posint(rbf.get("n_centers"), "rbf.n_centers"), model.dtype)
        variance = config.get("variance")
        if isinstance(model.likelihood, GaussianLikelihood):
            if variance not in VARIANCES:
                raise ValueError(f"VAE config variance {variance!r} is not one of {VARIANCES}")
            model.likelihood.set_variance(variance)
        model.metadata = dict(config.get("metadata") or {})
        return model

    def save(self, path, *, metadata: Optional[dict] = None) -> None:
        """Atomically write weights + config (:func:`latentgeo.checkpoint.save_checkpoint`).

        ``metadata`` (e.g. ``{"dataset": {"name": "digits"}}``) is merged into :attr:`metadata`.
        """
        if metadata:
            self.metadata.update(metadata)
        save_checkpoint(path, self.state_dict(), self.config)

    @classmethod
    def load(cls, path, map_location=None) -> "VAE":
        """Load a model saved with :meth:`save` (or a trainer checkpoint), in eval mode.

        Raises :class:`~latentgeo.checkpoint.CheckpointError` for unsafe/corrupt files and
        for weights that do not match the config (naming the tensor and both shapes).
        """
        state, config = load_checkpoint(path)
        return cls.from_checkpoint_state(state, config, path, map_location)

    @classmethod
    def from_checkpoint_state(cls, state: dict, config: dict, path="<memory>", map_location=None) -> "VAE":
        model_cfg = config.get("model", config) if config.get("class") != "VAE" else config
        try:
            model = cls.from_config(model_cfg)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: invalid model config: {exc}") from None
        state = {k[len("model::"):] if k.startswith("model::") else k: v for k, v in state.items()
                 if "::" not in k or k.startswith("model::")}
        expected = model.state_dict()
        problems = []
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing:
            problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        for k in sorted(set(state) & set(expected)):
            if tuple(state[k].shape) != tuple(expected[k].shape):
                problems.append(
                    f"tensor {k!r} has shape {tuple(state[k].shape)} in the file but the config implies "
                    f"{tuple(expected[k].shape)}"
                )
            elif state[k].dtype != expected[k].dtype:
                problems.append(f"tensor {k!r} is {state[k].dtype} but the config says {expected[k].dtype}")
            elif state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
                problems.append(f"tensor {k!r} contains NaN/inf")
        if problems:
            raise CheckpointError(f"checkpoint {path}: weights do not match the config: " + "; ".join(problems))
        model.load_state_dict(state)
        if map_location is not None:
            model.to(map_location)
        return model.eval()

    # -- data checks -------------------------------------------------------------------
    def _check_x(self, x, name="x") -> torch.Tensor:
        from .._validation import as_data_batch

        x = as_data_batch(x, self.data_dim, self.item_shape, self.dtype, name=name)
        if self.likelihood_name == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise ValueError(f"{name} must lie in [0, 1] for a Bernoulli likelihood")
        return x

    def _check_z(self, z) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.shape[-1] != self.latent.code_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a tensor of shape (..., {self.latent.code_dim}), got {shape}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("z contains NaN/inf")
        return z

    # -- model -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.distributions.Distribution:
        """Posterior ``q(z | x)`` for ``x (N, D)``: batch shape ``(N,)``, event ``(code_dim,)``."""
        return self.latent.posterior(self.encoder(self._check_x(x)))

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, code_dim)``: the posterior location of each item (no gradient)."""
        return self.latent.mean(self.encode(x))

    def decode(self, z: torch.Tensor):
        """Likelihood parameters at ``z (N, code_dim)``: Gaussian ``(mean, std)`` each ``(N, D)``,
        Bernoulli ``logits (N, D)`` (reshape with :attr:`item_shape` for images)."""
        return self.likelihood.params(self._check_z(z))

    def _terms(self, x: torch.Tensor, n_samples: int = 1):
        """``(log p(x|z) (N,), KL (N,))`` Monte-Carlo over ``n_samples`` (no input checks)."""
        q = self.latent.posterior(self.encoder(x))
        z = self.latent.rsample(q, n_samples)  # (S, N, c)
        s, n, c = z.shape
        params = self.likelihood.params(z.reshape(s * n, c))
        if isinstance(params, tuple):
            params = tuple(p.reshape(s, n, -1) for p in params)
        else:
            params = params.reshape(s, n, -1)
        recon = self.likelihood.log_prob(x, params).mean(0)
        kl = self.latent.kl(q, z)
        return recon, kl

    def elbo(self, x: torch.Tensor, beta: float = 1.0, n_samples: int = 1) -> torch.Tensor:
        """Per-item ELBO ``E_q[log p(x|z)] − β·KL(q ‖ p)``, shape ``(N,)`` (Kingma & Welling eq. 3).

        The expectation is a Monte-Carlo average over ``n_samples`` reparameterised draws;
        the training loss is ``-elbo(x).mean()``.
        """
        _posint(n_samples, "n_samples")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        recon, kl = self._terms(self._check_x(x), n_samples)
        return recon - beta * kl

    def decoder_for_analysis(self, kind: Optional[str] = None, *, variance: Optional[str] = None):
        """The trained decoder as a :class:`latentgeo.GaussianDecoder` (or ``BernoulliDecoder``).

        Args:
            kind: optional metric kind the caller will use (``"expected"``, ``"fisher"``, ...);
                checked against the returned decoder's supported kinds (``ValueError`` if not).
            variance: Gaussian only: which std to use, ``"constant"``, ``"learned"`` or ``"rbf"``
                (default: the model's current one, i.e. the RBF std after :meth:`fit_rbf_variance`).

        The wrapper shares the model's networks (puts the model in eval mode); use it with
        ``latentgeo.PullbackMetric(decoder, kind=...)``.
        """
        self.eval()
        dec = self.likelihood.analysis_decoder(variance)
        if kind is not None:
            dec.resolve_kind(kind)
        return dec

    def fit_rbf_variance(self, data: torch.Tensor, n_centers: int = 32, **kwargs):
        """Fit the post-hoc RBF precision std (LSO §4) on ``data`` and make it the decoder's std.

        Codes are the encoder means of ``data``; ``kwargs`` go to
        :func:`latentgeo.variance.fit_rbf_variance` (``bandwidth_scale``, ``far_std``, ``n_iter``,
        ``random_state``). Returns the fitted :class:`~latentgeo.variance.RBFPrecision`.
        """
        from ..variance import fit_rbf_variance

        if not isinstance(self.likelihood, GaussianLikelihood):
            raise ValueError("the RBF variance needs a Gaussian likelihood")
        x = self._check_x(data, "data")
        was_training = self.training
        self.eval()
        codes = self.encode_mean(x)
        mean_net = self.likelihood.mean_net
        dec = fit_rbf_variance(lambda z: mean_net(z), codes, x, n_centers=n_centers, **kwargs)
        self.likelihood.rbf = dec.std
        self.likelihood.set_variance("rbf")
        self.train(was_training)
        return dec.std
