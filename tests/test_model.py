import pytest
import torch
from torch import nn

from resnorm.model import ResNet, resnet
from resnorm.norms import NORM_NAMES, NORMS


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_depth_is_6n_plus_2_weighted_layers(n):
    model = resnet(n, 10, "bn")
    assert model.depth == 6 * n + 2
    assert len(weighted_layers(model)) == 6 * n + 2


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_builds_and_classifies(norm):
    model = resnet(2, 25, norm, in_channels=3)
    x = torch.rand(4, 3, 32, 32)
    assert model(x).shape == (4, 25)
    norm_cls = NORMS[norm]
    norms = [m for name, m in model.named_modules() if name.split(".")[-1] in ("norm1", "norm2")]
    assert len(norms) == 13  # the stem and two per block; option-A shortcuts have none
    if isinstance(norm_cls, type):
        assert all(isinstance(m, norm_cls) for m in norms)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_convs_have_a_bias_only_without_a_norm(norm):
    convs = [m for m in resnet(2, 10, norm).modules() if isinstance(m, nn.Conv2d)]
    assert all((c.bias is not None) == (norm == "nn") for c in convs)


def test_stages_halve_the_resolution_and_widen():
    model = resnet(2, 10, "torch_bn", in_channels=1).eval()
    shapes = []
    for stage in (model.layer1, model.layer2, model.layer3):
        stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    model(torch.rand(2, 1, 32, 32))
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]


def test_takes_images_in_unit_range_and_standardises_them_itself():
    mean, std = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]
    a = resnet(1, 5, "nn", mean=mean, std=std)
    b = resnet(1, 5, "nn")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("input_")}, strict=False)
    x = torch.rand(3, 3, 16, 16)
    standardised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(a(x), b(standardised))
    assert set(a.state_dict()) >= {"input_mean", "input_std"}


def test_accepts_a_norm_constructor_as_torchvision_does():
    model = ResNet(1, 3, lambda c: nn.GroupNorm(4, c), in_channels=1)
    assert isinstance(model.norm1, nn.GroupNorm) and model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        resnet(0, 10, "bn")
    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        resnet(2, 1, "bn")
    with pytest.raises(ValueError, match="unknown norm 'xx'"):
        resnet(2, 10, "xx")
