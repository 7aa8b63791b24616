"""The fast path, checked on the CPU: its settings, that it keeps the norms exact (compiled, and
with bf16 activations), that it learns what the plain path learns, that a compile failure costs
speed and not the run, and the `bench` entry point. Speed itself is the bench's job, not a test's."""

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from resnorm import names
from resnorm.config import TrainConfig
from resnorm.data import load_data, synthetic
from resnorm.engine import build_model, evaluate, train
from resnorm.fast import EVAL_BATCH, Runner, Speed, resolve_speed
from resnorm.norms import (
    NORM_NAMES,
    BatchInstanceNorm2d,
    BatchNorm2d,
    GroupNorm2d,
    InstanceNorm2d,
    LayerNorm2d,
    get_norm,
    norm_options,
)
from tests.conftest import PYTHON, ROOT, command, run_command, subprocess_env

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a name here: nothing runs on it


@pytest.fixture
def compile_cache(tmp_path, monkeypatch):
    """A compile cache of this test only (the fast path would otherwise point at RESNORM_HOME's)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    yield
    torch._dynamo.reset()


def test_auto_is_fast_on_cuda_and_plain_on_the_cpu():
    assert resolve_speed("auto", CPU, 32) == Speed("plain")
    assert resolve_speed("plain", CUDA, 32) == Speed("plain")
    gpu = resolve_speed("auto", CUDA, 32)
    assert (gpu.mode, gpu.autocast, gpu.channels_last, gpu.eval_batch) == ("fast", torch.bfloat16, True, EVAL_BATCH)
    assert gpu.compile_mode == "reduce-overhead"  # small batches are launch-bound: CUDA graphs
    assert resolve_speed("fast", CUDA, 128).compile_mode == "default"
    assert resolve_speed("fast", CPU, 8).compile_mode == "default"  # no CUDA graphs off CUDA
    assert resolve_speed("fast", CUDA, 8, "none").compile_mode is None


@pytest.mark.parametrize("norm", [n for n in NORM_NAMES if n not in ("torch_bn", "nn")])
def test_bf16_activations_are_normalised_with_float32_statistics(norm):
    """Under autocast a conv hands the norm bf16: the statistics must not be taken in bf16."""
    layer = get_norm(norm, **norm_options(norm, groups=4))(16).train()
    x = (torch.randn(8, 16, 6, 6) * 3 + 5).bfloat16()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    out = layer(x)
    assert out.dtype == torch.bfloat16
    layer.load_state_dict(state)
    torch.testing.assert_close(out, layer(x.float()).bfloat16(), rtol=0, atol=0)


def test_fast_evaluation_pads_its_last_batch_and_predicts_as_plain():
    data = synthetic(16, per_class=30, num_classes=4)
    cfg = TrainConfig(norm="bn", n=1, image_size=16, data="synthetic")
    model = build_model(cfg, data)
    model(data.train.images[:32].float() / 255)  # move the running statistics off their start
    plain = evaluate(Runner(model, CPU), data.test, 5)
    padded = Speed("fast", channels_last=True, eval_batch=7)  # 24 test images: 3 full batches and 3 of 7
    fast = evaluate(Runner(model, CPU, padded), data.test, 5)
    assert (fast.predictions == plain.predictions).all()
    assert fast.loss == pytest.approx(plain.loss, rel=1e-5)


def _oracle(norm: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What torch itself computes for ``layer`` (train mode, float64)."""
    w, b = layer.weight, layer.bias
    if isinstance(layer, BatchInstanceNorm2d):
        rho = layer.rho.view(1, -1, 1, 1)
        bn = F.batch_norm(x, None, None, training=True, eps=layer.eps)
        inn = F.instance_norm(x, eps=layer.eps)
        return (rho * bn + (1 - rho) * inn) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    if isinstance(layer, BatchNorm2d):
        return F.batch_norm(x, None, None, w, b, training=True, eps=layer.eps)
    if isinstance(layer, InstanceNorm2d):
        return F.instance_norm(x, weight=w, bias=b, eps=layer.eps)
    if isinstance(layer, LayerNorm2d):
        return F.group_norm(x, 1, w, b, eps=layer.eps)
    assert isinstance(layer, GroupNorm2d)
    return F.group_norm(x, layer.groups, w, b, eps=layer.eps)


@pytest.mark.compile
def test_compiled_hand_written_norms_equal_torch(compile_cache):
    """torch.compile (inductor) of every hand-written norm: outputs, input/affine/gate gradients
    and running statistics equal torch's own in float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 5, 6, generator=g, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for norm in ("bn", "in", "bin", "ln", "gn"):
        layer = get_norm(norm, **norm_options(norm, groups=4))(16).double().train()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=g)
            layer.bias.normal_(generator=g)
            if norm == "bin":
                layer.rho.uniform_(0, 1, generator=g)
        compiled = torch.compile(layer)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = compiled(xa)
        yb = _oracle(norm, layer, xb)
        torch.testing.assert_close(ya, yb, rtol=1e-9, atol=1e-9, msg=norm)
        grads = [p for p in (xa, layer.weight, layer.bias, getattr(layer, "rho", None)) if p is not None]
        got = torch.autograd.grad(ya, grads, upstream)
        want = torch.autograd.grad(yb, [xb, *grads[1:]], upstream)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=norm)
        if isinstance(layer, BatchNorm2d):  # the compiled graph updated the buffers as eager does
            ref = nn.BatchNorm2d(16).double()
            ref(x)
            torch.testing.assert_close(layer.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(layer.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
            assert layer.num_batches_tracked.item() == 1


@pytest.mark.compile
def test_a_fast_run_learns_what_a_plain_run_learns(compile_cache):
    cfg = TrainConfig(norm="bn", epochs=8, image_size=16, n=1, data="digits")
    data = load_data(cfg.data, cfg.image_size)
    plain = train(cfg, data, CPU, resolve_speed("plain", CPU, cfg.batch_size), progress=False)
    fast = train(cfg, data, CPU, resolve_speed("fast", CPU, cfg.batch_size), progress=False)
    assert fast.speed.describe() == "fast (bf16 autocast, channels_last, torch.compile(default))"
    assert fast.compile_fallback is None and fast.compile_seconds > 0
    assert names.COMPILE_SECONDS in fast.timings() and names.COMPILE_SECONDS not in plain.timings()
    a, b = (r.final_metrics()["best_test_accuracy"] for r in (plain, fast))
    assert a > 0.9 and b > 0.9, (a, b)
    assert abs(a - b) <= 0.03, (a, b)  # the same seed and draws; bf16 arithmetic is the only difference
    # The kept model is an ordinary float32 module again, whatever trained it.
    assert next(fast.model.parameters()).dtype == torch.float32
    assert fast.model.conv1.weight.is_contiguous()


@pytest.mark.slow
def test_a_failing_compiler_costs_speed_not_the_run(mlflow_env, tmp_path):
    env = {
        **subprocess_env(mlflow_env),
        "CXX": "/bin/false",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "RESNORM_HOME": str(tmp_path / "home"),
    }
    args = [
        PYTHON,
        str(ROOT / "entrypoints" / "train.py"),
        "--mode",
        "fast",
        "--device",
        "cpu",
        "--data",
        "synthetic",
        "--image-size",
        "8",
        "--n",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "16",
    ]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: torch.compile failed")]
    assert len(warnings) == 1 and "C++ compiler" in warnings[0], proc.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["mode"] == "fast"
    assert run.data.tags[names.TAG_SPEED].startswith("fast (bf16 autocast, channels_last, torch.compile")
    assert "C++ compiler" in run.data.tags[names.TAG_COMPILE_FALLBACK]
    assert [m.step for m in client.get_metric_history(run.info.run_id, names.VAL_ACCURACY)] == [1, 2]


@pytest.mark.slow
def test_bench_measures_both_paths_side_by_side_and_logs_the_table(mlflow_env, tmp_path, capsys):
    """In this process through the command its script runs; --share starts the processes it measures."""
    run_command(
        command("bench"),
        [
            "--image-size",
            "16",
            "--norms",
            "bn,gn",
            "--batch-sizes",
            "8,16",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--classes",
            "3",
            "--n",
            "1",
            "--compile-mode",
            "none",
            "--feed-files",
            "16",
            "--share",
            "1,2",
            "--device",
            "cpu",
        ],
    )
    printed = capsys.readouterr().out
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("resnorm-bench").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "bench-cpu-16px"
    assert run.data.params["norms"] == "bn,gn" and run.data.params["batch_sizes"] == "8,16"
    m = run.data.metrics
    for norm in ("bn", "gn"):
        for bs in (8, 16):
            plain, fast = m[f"plain_{norm}_bs{bs}_img_per_s"], m[f"fast_{norm}_bs{bs}_img_per_s"]
            assert plain > 0 and fast > 0
            assert m[f"fast_over_plain_{norm}_bs{bs}"] == pytest.approx(fast / plain, rel=0.01)
            # ms per step and img/s are the same measurement
            assert m[f"plain_{norm}_bs{bs}_ms_per_step"] == pytest.approx(1000 * bs / plain, rel=1e-6)
    for feed in ("plain", "decode", "fast"):
        assert m[f"feed_{feed}_img_per_s"] > 0
    assert m["share1_img_per_s"] > 0 and m["share2_img_per_s"] > 0  # fast bn at batch 8, one and two processes
    out = tmp_path / "artifacts"
    client.download_artifacts(run.info.run_id, "bench", str(out))
    rows = json.loads((out / "bench" / "train.json").read_text())
    table = dict(zip(rows["columns"], zip(*rows["data"])))
    assert sorted(zip(table["mode"], table["norm"], table["batch_size"])) == sorted(
        (mode, norm, bs) for mode in ("plain", "fast") for norm in ("bn", "gn") for bs in (8, 16)
    )
    assert "| gn bs16 |" in (out / "bench" / "bench.md").read_text()
    share = (out / "bench" / "share.csv").read_text().splitlines()
    assert share[0] == "processes,images_per_second,per_process,over_one" and len(share) == 3
    assert "fast_over_plain" in printed and "uint8 cache -> augmented batch" in printed
