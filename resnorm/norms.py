"""The seven normalisation layers of the study and the name -> constructor table.

Every constructor takes the channel count first, so the model can build any of them as
``norm_layer(channels)``. Inputs are NCHW feature maps throughout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]

EPS = 1e-5
# The running statistics' update factor, as torch's BatchNorm2d names it:
# running = (1 - MOMENTUM) * running + MOMENTUM * batch. Not the optimiser's momentum.
MOMENTUM = 0.1
DEFAULT_GROUPS = 8  # group norm's channel groups (Wu & He, 2018, use 32 for wider nets)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: statistics of bf16 activations (the fast path's autocast) are
    computed in float32, as torch's own norms do; float32 and float64 pass through unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over ``dims`` in one pass (kept dims for broadcasting)."""
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    return mean, var


class _ChannelAffine(nn.Module):
    """A per-channel scale (ones) and shift (zeros), shared by every hand-written norm."""

    def __init__(self, num_features: int, eps: float = EPS) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class BatchNorm2d(_ChannelAffine):
    """Batch norm: per channel over (N, H, W), running statistics for eval (Ioffe & Szegedy, 2015).

    Matches ``nn.BatchNorm2d``: the batch is normalised with the biased variance, while
    ``running_var`` is updated with the unbiased one, ``running = (1 - m) * running + m * batch``.
    """

    running_mean: torch.Tensor  # buffers (register_buffer)
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, eps: float = EPS, momentum: float = MOMENTUM) -> None:
        super().__init__(num_features, eps)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x standardised with batch statistics (train) or running statistics (eval), no affine."""
        if not self.training:
            mean = self.running_mean.view(1, -1, 1, 1)
            var = self.running_var.view(1, -1, 1, 1)
            return (x - mean) * torch.rsqrt(var + self.eps)
        mean, var = _moments(x, (0, 2, 3))  # (1, C, 1, 1)
        count = x.numel() // x.size(1)
        if count < 2:
            raise ValueError(
                f"batch norm needs more than one value per channel in training, got input of shape {tuple(x.shape)}"
            )
        with torch.no_grad():
            unbiased = var.flatten() * (count / (count - 1))
            self.running_mean.lerp_(mean.flatten().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return (x - mean) * torch.rsqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(self.normalize(_wide(x))).to(x.dtype)


class InstanceNorm2d(_ChannelAffine):
    """Instance norm: per sample, per channel over (H, W), with a per-channel affine (Ulyanov et al., 2016).

    No running statistics: train and eval both use the sample's own, as ``F.instance_norm`` does
    by default and as the IN branch of Batch-Instance norm (Nam & Kim, 2018) does.
    """

    @staticmethod
    def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
        mean, var = _moments(x, (2, 3))  # (N, C, 1, 1)
        return (x - mean) * torch.rsqrt(var + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(self.normalize(_wide(x), self.eps)).to(x.dtype)


class BatchInstanceNorm2d(BatchNorm2d):
    """Batch-instance norm (Nam & Kim, 2018): ``gamma * (rho * x_BN + (1 - rho) * x_IN) + beta``.

    ``rho`` is one gate per channel that starts at 1 (pure batch norm). The paper keeps it in
    [0, 1] by clipping after every update (see :func:`gate_clipper`) and exempts it from weight
    decay; the BN branch keeps running statistics for eval, the IN branch always uses the sample's.
    """

    def __init__(self, num_features: int, eps: float = EPS, momentum: float = MOMENTUM) -> None:
        super().__init__(num_features, eps, momentum)
        self.rho = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rho = self.rho.view(1, -1, 1, 1)
        wide = _wide(x)
        x_bn = self.normalize(wide)
        x_in = InstanceNorm2d.normalize(wide, self.eps)
        return self._affine(rho * x_bn + (1 - rho) * x_in).to(x.dtype)


class LayerNorm2d(_ChannelAffine):
    """Layer norm for conv features: per sample over (C, H, W), with a per-channel affine.

    This is the LN of the GroupNorm paper (Wu & He, 2018), i.e. ``GroupNorm(1, C)``. It is *not*
    ``nn.LayerNorm(C)`` applied to NCHW, which would normalise over the last axis (W) only.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = _wide(x)
        mean, var = _moments(wide, (1, 2, 3))  # (N, 1, 1, 1)
        return self._affine((wide - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


class GroupNorm2d(_ChannelAffine):
    """Group norm (Wu & He, 2018): per sample over (C/G, H, W) for G contiguous channel groups.

    Channel count first (unlike ``nn.GroupNorm(num_groups, num_channels)``) so every norm in
    the table is built the same way.
    """

    def __init__(self, num_features: int, groups: int = DEFAULT_GROUPS, eps: float = EPS) -> None:
        super().__init__(num_features, eps)
        if groups < 1 or num_features % groups:
            raise ValueError(f"groups must be a positive divisor of the channel count {num_features}, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = _wide(x).reshape(n, self.groups, c // self.groups, h, w)  # (N, G, C/G, H, W)
        mean, var = _moments(g, (2, 3, 4))
        g = (g - mean) * torch.rsqrt(var + self.eps)
        return self._affine(g.reshape(n, c, h, w)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"


class NoNorm(nn.Identity):
    """No normalisation. The model gives a conv followed by this layer a bias of its own."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def _torch_batchnorm(num_features: int) -> nn.Module:
    return nn.BatchNorm2d(num_features, eps=EPS, momentum=MOMENTUM)


# name -> constructor, which takes the channel count first ("gn" also takes ``groups``).
NORMS: dict[str, Callable[..., nn.Module]] = {
    "torch_bn": _torch_batchnorm,  # torch.nn.BatchNorm2d, the reference
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "bin": BatchInstanceNorm2d,
    "ln": LayerNorm2d,  # over (C, H, W), i.e. GroupNorm(1, C)
    "gn": GroupNorm2d,
    "nn": NoNorm,
}
NORM_NAMES: tuple[str, ...] = tuple(NORMS)
# The run settings a norm's constructor takes as keywords, beside the channel count.
NORM_SETTINGS: dict[str, tuple[str, ...]] = {"gn": ("groups",)}


def get_norm(name: str, **options) -> NormLayer:
    """The constructor ``channels -> nn.Module`` of the norm called ``name``, with ``options`` bound
    (``groups`` for ``gn``); an unknown name is an error listing the valid ones."""
    try:
        constructor = NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; valid norms: {', '.join(NORM_NAMES)}") from None
    return functools.partial(constructor, **options) if options else constructor


def norm_options(name: str, **settings) -> dict:
    """The options among a run's ``settings`` that the norm ``name`` takes (``NORM_SETTINGS``)."""
    return {k: settings[k] for k in NORM_SETTINGS.get(name, ()) if k in settings}


def check_groups(groups: int, channels: Iterable[int]) -> None:
    """Raise ``ValueError`` unless ``groups`` divides every channel count in ``channels``."""
    channels = tuple(channels)
    bad = [c for c in channels if groups < 1 or c % groups]
    if bad:
        allowed = sorted(set.intersection(*({d for d in range(1, c + 1) if c % d == 0} for c in channels)))
        raise ValueError(
            f"groups={groups} must divide every stage's channels {tuple(channels)}; "
            f"allowed: {', '.join(map(str, allowed))}"
        )


def gate_clipper(model: nn.Module) -> Callable[[], None]:
    """A function that clips the model's Batch-Instance gates into [0, 1], which the engine calls
    after every step: the gates are found once, and clipped in two multi-tensor kernels per call
    (nothing to do for the other norms)."""
    gates: list[torch.Tensor] = [m.rho for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]

    @torch.no_grad()
    def clip() -> None:
        if gates:
            torch._foreach_clamp_min_(gates, 0.0)
            torch._foreach_clamp_max_(gates, 1.0)

    return clip
