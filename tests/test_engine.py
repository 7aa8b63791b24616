import math

import pytest
import torch

from resnorm import names
from resnorm.config import TrainConfig, resolve_device
from resnorm.data import load_data, synthetic
from resnorm.engine import build_model, evaluate, train
from resnorm.errors import ConfigError, TrainingDiverged
from resnorm.fast import Runner
from resnorm.norms import BatchInstanceNorm2d
from resnorm.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return synthetic(16, per_class=40, num_classes=4)


def quick(**overrides) -> TrainConfig:
    base = dict(data="synthetic", image_size=16, epochs=4, batch_size=16, lr=0.05, n=1)
    return TrainConfig(**{**base, **overrides})


def test_learns_the_synthetic_classes_and_keeps_the_best_epoch(data):
    result = train(quick(epochs=6), data, CPU, progress=False)
    history = result.history
    assert [s.epoch for s in history] == list(range(1, 7))
    assert history[-1].train_loss < history[0].train_loss
    best = max(history, key=lambda s: s.val_accuracy)
    assert result.best_epoch == history.index(best) + 1  # the first epoch reaching the best
    final = result.final_metrics()
    # The returned model is that epoch's, measured again in eval mode.
    assert final[names.final_metric("val", "accuracy")] == pytest.approx(best.val_accuracy)
    assert evaluate(Runner(result.model, CPU), data.val, 7).scores()["accuracy"] == pytest.approx(best.val_accuracy)
    assert final[names.final_metric("test", "accuracy")] >= 0.9
    for split in ("train", "val", "test"):
        for score in names.SCORES:
            assert 0.0 <= final[names.final_metric(split, score)] <= 1.0
    assert all(s.images_per_second > 0 and s.epoch_seconds > 0 for s in history)


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run(data):
    a = train(quick(epochs=2, norm="bin"), data, CPU, progress=False)
    b = train(quick(epochs=2, norm="bin"), data, CPU, progress=False)
    c = train(quick(epochs=2, norm="bin", seed=1), data, CPU, progress=False)
    strip = lambda r: [(s.train_loss, s.val_loss, s.val_accuracy) for s in r.history]  # noqa: E731
    assert strip(a) == strip(b)
    assert a.final_metrics() == b.final_metrics()
    assert strip(a) != strip(c)


@pytest.mark.slow
def test_schedules_set_the_learning_rate_per_epoch(data):
    cosine = [s.lr for s in train(quick(epochs=4, scheduler="cosine"), data, CPU, progress=False).history]
    assert cosine == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    step = [
        s.lr
        for s in train(quick(epochs=6, scheduler="step", optimizer="adam", lr=1e-3), data, CPU, progress=False).history
    ]
    assert step == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert {s.lr for s in train(quick(epochs=2, scheduler="none"), data, CPU, progress=False).history} == {0.05}


def test_weight_decay_spares_biases_norm_affines_and_gates(data):
    model = build_model(quick(norm="bin"), data)
    opt = build_optimizer(quick(norm="bin", weight_decay=0.01), model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == name.endswith(("conv1.weight", "conv2.weight", "fc.weight")), name


def test_batch_instance_gates_stay_in_unit_interval_through_training(data):
    result = train(quick(norm="bin", lr=0.5, epochs=3), data, CPU, progress=False)
    rho = torch.cat([m.rho.detach() for m in result.model.modules() if isinstance(m, BatchInstanceNorm2d)])
    assert rho.min() >= 0 and rho.max() <= 1
    assert (rho < 1).any()  # the gates did move, so the clipping was exercised


def test_a_nan_loss_stops_training_with_the_epoch_and_lr(data):
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) in epoch 1 \(lr=1e\+10, norm=nn\)"):
        train(quick(norm="nn", lr=1e10), data, CPU, progress=False)


def test_batch_larger_than_the_training_split(data):
    with pytest.raises(ConfigError, match=f"batch_size 1000 exceeds the {len(data.train)} training images"):
        train(quick(batch_size=1000), data, CPU, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_an_absent_gpu_is_an_error():
    with pytest.raises(ConfigError, match="device 'cuda' was asked for but no CUDA GPU is available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("norm", "batchnorm", "unknown norm 'batchnorm'; valid: torch_bn, bn, in, bin, ln, gn, nn"),
        ("optimizer", "rmsprop", "unknown optimizer 'rmsprop'; valid: sgd, adam"),
        ("scheduler", "linear", "unknown scheduler 'linear'; valid: cosine, step, none"),
        ("epochs", 0, "epochs must be at least 1, got 0"),
        ("batch_size", -2, "batch_size must be at least 1, got -2"),
        ("lr", -0.1, "lr must be a finite number >= 0, got -0.1"),
        ("lr", float("nan"), "lr must be a finite number >= 0, got nan"),
        ("image_size", 4, "image_size must be at least 8, got 4"),
        ("momentum", 1.5, "momentum must be at most 1, got 1.5"),
    ],
)
def test_config_errors_name_the_value_and_what_is_allowed(field, value, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert str(e.value) == message


def test_groups_are_checked_for_gn_only():
    with pytest.raises(ConfigError, match="groups=12 must divide every stage's channels"):
        TrainConfig(norm="gn", groups=12)
    TrainConfig(norm="bn", groups=12)  # unused by other norms


@pytest.mark.slow
def test_bn_reaches_96_percent_on_digits_within_15_epochs():
    """The study's SGD settings (lr 0.1, momentum 0.9, wd 1e-4, cosine, batch 32, augmentation), on
    the digits at 16 px with a ResNet-8. Seeds 0 to 5 at one thread reached 96.7 to 98.5 % (seed 0:
    96.7 % at one thread, 98.1 % at two: the thread count changes the sums' order, and a few of the
    270 test images move): 96 % is what every one of them reached, not what the best did."""
    cfg = TrainConfig(norm="bn", epochs=15, image_size=16, n=1)
    result = train(cfg, load_data("digits", cfg.image_size), CPU, progress=False)
    assert result.final_metrics()[names.final_metric("test", "accuracy")] >= 0.96
