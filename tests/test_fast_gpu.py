"""The fast path on a CUDA GPU (skipped without one): CUDA graphs, bf16, images on the GPU."""

import pytest
import torch

from resnorm.config import TrainConfig
from resnorm.data import load_data
from resnorm.engine import train
from resnorm.fast import place_images, resolve_speed
from resnorm.norms import get_norm, norm_options

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = torch.device("cuda")


def test_images_live_on_the_gpu_when_they_fit():
    data = load_data("digits", 32)
    placed, where = place_images(data, GPU)
    assert where == "gpu" and placed.train.images.is_cuda and placed.train.labels.is_cuda
    assert torch.equal(placed.test.images.cpu(), data.test.images)


@pytest.mark.parametrize("norm", ["bn", "in", "bin", "ln", "gn"])
def test_compiled_norms_on_the_gpu_equal_eager_ones(norm):
    layer = get_norm(norm, **norm_options(norm, groups=4))(16).to(GPU).train()
    x = torch.randn(8, 16, 12, 12, device=GPU).to(memory_format=torch.channels_last).requires_grad_()
    eager = layer(x)
    (g_eager,) = torch.autograd.grad(eager.sum() + (eager**2).sum(), x)
    compiled = torch.compile(layer)(x)
    (g_compiled,) = torch.autograd.grad(compiled.sum() + (compiled**2).sum(), x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-3, atol=1e-3)
    torch._dynamo.reset()


@pytest.mark.parametrize("batch_size", [8, 128])  # CUDA graphs (reduce-overhead), then default compile
def test_a_fast_gpu_run_learns_what_a_plain_gpu_run_learns(batch_size):
    cfg = TrainConfig(
        norm="bin", epochs=10, batch_size=batch_size, image_size=32, data="digits", lr=0.1 if batch_size <= 32 else 0.2
    )
    data = load_data(cfg.data, cfg.image_size)
    plain = train(cfg, data, GPU, resolve_speed("plain", GPU, cfg.batch_size), progress=False)
    fast = train(cfg, data, GPU, resolve_speed("fast", GPU, cfg.batch_size), progress=False)
    assert fast.compile_fallback is None, fast.compile_fallback
    a, b = (r.final_metrics()["best_test_accuracy"] for r in (plain, fast))
    assert a > 0.9 and b > 0.9 and abs(a - b) <= 0.03, (a, b)
    torch._dynamo.reset()
