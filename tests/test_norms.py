"""The hand-written norms against torch's own layers, in float64 with tight tolerances."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnorm.norms import (
    NORM_NAMES,
    BatchInstanceNorm2d,
    BatchNorm2d,
    GroupNorm2d,
    InstanceNorm2d,
    LayerNorm2d,
    check_groups,
    gate_clipper,
    get_norm,
)

C = 16
TOL = dict(rtol=1e-10, atol=1e-10)


def batch(seed: int, n: int = 4, h: int = 5, w: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A non-zero mean and non-unit scale per channel, so a wrong axis shows.
    shift = torch.linspace(-3, 3, C, dtype=torch.float64).view(1, C, 1, 1)
    scale = torch.linspace(0.5, 4, C, dtype=torch.float64).view(1, C, 1, 1)
    return torch.randn(n, C, h, w, generator=g, dtype=torch.float64) * scale + shift


def randomise_affine(*layers: nn.Module) -> None:
    g = torch.Generator().manual_seed(123)
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def assert_same_forward_backward(ours: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """Outputs and the gradients of input, weight and bias agree for one random upstream gradient."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    upstream = torch.randn(ya.shape, dtype=ya.dtype, generator=torch.Generator().manual_seed(7))
    ya.backward(upstream)
    yb.backward(upstream)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **TOL)
    ours.zero_grad()
    ref.zero_grad()


def test_bn_matches_torch_batchnorm_in_train_and_eval():
    ours, ref = BatchNorm2d(C).double(), nn.BatchNorm2d(C).double()
    randomise_affine(ours, ref)
    for step in range(5):  # running statistics accumulate over several steps
        x = batch(step)
        assert_same_forward_backward(ours, ref, x)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    # The running variance is the unbiased one, blended with momentum 0.1.
    assert not torch.allclose(ours.running_var, torch.ones(C, dtype=torch.float64))
    ours.eval()
    ref.eval()
    assert_same_forward_backward(ours, ref, batch(99))
    # Eval mode leaves the running statistics alone.
    before = ours.running_mean.clone()
    ours(batch(100))
    torch.testing.assert_close(ours.running_mean, before, rtol=0, atol=0)


def test_bn_rejects_a_single_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm2d(C)(torch.randn(1, C, 1, 1))


def test_in_matches_functional_instance_norm_in_train_and_eval():
    ours = InstanceNorm2d(C).double()
    randomise_affine(ours)

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(ours.weight.detach().clone())
            self.bias = nn.Parameter(ours.bias.detach().clone())

        def forward(self, x):
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=1e-5)

    ref = Ref()
    assert_same_forward_backward(ours, ref, batch(0))
    ours.eval()
    assert_same_forward_backward(ours, ref, batch(1))  # no running statistics: eval is the same


@pytest.mark.parametrize("groups", [1, 2, 8, 16])
def test_gn_matches_torch_groupnorm(groups):
    ours, ref = GroupNorm2d(C, groups=groups).double(), nn.GroupNorm(groups, C).double()
    randomise_affine(ours, ref)
    assert_same_forward_backward(ours, ref, batch(groups))


def test_ln_is_groupnorm_with_one_group_not_layernorm_over_width():
    ours, ref = LayerNorm2d(C).double(), nn.GroupNorm(1, C).double()
    randomise_affine(ours, ref)
    x = batch(3)
    assert_same_forward_backward(ours, ref, x)
    # Every sample is standardised over (C, H, W) before the affine.
    plain = LayerNorm2d(C).double()(x)
    torch.testing.assert_close(plain.mean(dim=(1, 2, 3)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # nn.LayerNorm(W) on NCHW normalises along the last axis only: a different layer.
    assert not torch.allclose(plain, nn.LayerNorm(x.shape[-1], elementwise_affine=False).double()(x))


def _bn_and_in_parts(x):
    """Torch's own BN (train mode, no affine) and IN of ``x``."""
    bn = nn.BatchNorm2d(C, affine=False).double()
    return bn(x), F.instance_norm(x, eps=1e-5), bn


def test_bin_gate_starts_at_one_and_then_equals_bn():
    ours, ref = BatchInstanceNorm2d(C).double(), nn.BatchNorm2d(C).double()
    assert torch.equal(ours.rho.detach(), torch.ones(C, dtype=torch.float64))
    randomise_affine(ours, ref)
    for step in range(3):
        assert_same_forward_backward(ours, ref, batch(step))
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)


def test_bin_with_gate_zero_equals_in_in_train_and_eval():
    ours = BatchInstanceNorm2d(C).double()
    with torch.no_grad():
        ours.rho.zero_()
    x = batch(4)
    torch.testing.assert_close(ours(x), F.instance_norm(x, eps=1e-5), **TOL)
    ours.eval()
    torch.testing.assert_close(ours(x), F.instance_norm(x, eps=1e-5), **TOL)


def test_bin_mixes_bn_and_in_per_channel_and_passes_gradient_to_the_gate():
    ours = BatchInstanceNorm2d(C).double()
    rho = torch.linspace(0, 1, C, dtype=torch.float64)
    with torch.no_grad():
        ours.rho.copy_(rho)
    randomise_affine(ours)
    x = batch(5)
    x_bn, x_in, _ = _bn_and_in_parts(x)
    r = rho.view(1, C, 1, 1)
    expected = ours.weight.view(1, C, 1, 1) * (r * x_bn + (1 - r) * x_in) + ours.bias.view(1, C, 1, 1)
    y = ours(x)
    torch.testing.assert_close(y, expected, **TOL)
    y.square().sum().backward()
    assert ours.rho.grad is not None and ours.rho.grad.abs().sum() > 0


def test_gate_clipper_keeps_rho_in_unit_interval():
    model = nn.Sequential(BatchInstanceNorm2d(3), BatchNorm2d(3))
    with torch.no_grad():
        model[0].rho.copy_(torch.tensor([-0.5, 0.3, 1.7]))
    gate_clipper(model)()
    assert model[0].rho.tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_registry_builds_every_norm_from_the_channel_count():
    x = torch.randn(2, 32, 4, 4)
    for name in NORM_NAMES:
        layer = get_norm(name)(32)
        assert layer(x).shape == x.shape, name


def test_unknown_norm_names_the_value_and_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        get_norm("batchnorm")
    assert "'batchnorm'" in str(e.value)
    for name in NORM_NAMES:
        assert name in str(e.value)


def test_groups_must_divide_every_stage():
    check_groups(8, (16, 32, 64))
    with pytest.raises(ValueError, match=r"groups=3 .*allowed: 1, 2, 4, 8, 16"):
        check_groups(3, (16, 32, 64))
    with pytest.raises(ValueError, match="divisor of the channel count 16, got 5"):
        GroupNorm2d(16, groups=5)
