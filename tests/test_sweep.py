"""Planning sweeps: presets, grids, seeds, the user's values, and what is rejected."""

import pytest

from resnorm.config import TrainConfig
from resnorm.errors import ConfigError
from resnorm.norms import NORM_NAMES
from resnorm.sweep import child_name, parse_grid, plan
from resnorm.sweep.planner import config_label, varying


def test_study_is_the_27_configurations_behind_the_tables_and_figures():
    configs = plan("study")
    assert len(configs) == len(set(configs)) == 27

    def having(**kv):
        return {c.norm for c in configs if all(getattr(c, k) == v for k, v in kv.items())}

    assert having(optimizer="sgd", lr=0.1, augment=True, batch_size=32, scheduler="cosine") == set(NORM_NAMES)
    assert having(optimizer="adam", lr=1e-4, weight_decay=1e-7) == set(NORM_NAMES)
    assert having(optimizer="sgd", lr=1e-4) == set(NORM_NAMES)
    assert having(augment=False) == {"torch_bn"}
    assert having(batch_size=8) == having(batch_size=128) == {"bn", "gn"}
    assert having(scheduler="step") == {"torch_bn"}
    assert {c.epochs for c in configs} == {50}


def test_quick_is_every_norm_for_a_few_epochs_on_digits():
    configs = plan("quick")
    assert [c.norm for c in configs] == list(NORM_NAMES)
    assert {(c.epochs, c.data, c.image_size, c.n, c.optimizer, c.lr) for c in configs} == {
        (15, "digits", 8, 1, "sgd", 0.1)
    }


def test_user_values_pass_through_but_the_grid_wins():
    configs = plan("study", overrides={"data": "/data/birds", "epochs": "3", "lr": "0.05", "image_size": ""})
    assert {c.data for c in configs} == {"/data/birds"} and {c.epochs for c in configs} == {3}
    assert {c.image_size for c in configs} == {TrainConfig.image_size}  # empty means default
    assert {c.lr for c in configs} == {0.05, 1e-4}  # the points that set lr keep theirs


def test_a_custom_grid_is_the_cartesian_product_and_seeds_repeat_it():
    configs = plan("custom", "norm=bn,gn;batch_size=8,128", seeds=3, overrides={"seed": "10"})
    assert len(configs) == 12
    assert {(c.norm, c.batch_size) for c in configs} == {("bn", 8), ("bn", 128), ("gn", 8), ("gn", 128)}
    assert sorted({c.seed for c in configs}) == [10, 11, 12]
    assert child_name(configs[1], 3) == "bn-sgd-lr0.1-aug-bs8-s11"
    assert child_name(configs[0], 1) == "bn-sgd-lr0.1-aug-bs8"


def test_grid_values_are_typed():
    assert parse_grid("lr=0.1,1e-4; augment=true,false ;n=1,3") == {
        "lr": [0.1, 1e-4],
        "augment": [True, False],
        "n": [1, 3],
    }


def test_a_config_is_recovered_from_its_logged_params():
    cfg = TrainConfig(norm="gn", lr=1e-4, augment=False, batch_size=8, seed=3, data="/x")
    params = {**cfg.as_params(), "num_classes": "10", "device": "cpu"}
    assert TrainConfig.from_params(params) == cfg


@pytest.mark.parametrize(
    "args, message",
    [
        (("everything",), "unknown preset 'everything'; valid: quick, study, custom"),
        (("custom",), "preset 'custom' needs a grid"),
        (("quick", "norm=bn"), "a grid is only used with preset 'custom', not with 'quick'"),
        (("custom", "colour=red"), "unknown parameter 'colour'; valid: norm, optimizer, lr"),
        (("custom", "norm=bn,batchnorm"), "unknown norm 'batchnorm'; valid: torch_bn, bn"),
        (("custom", "batch_size=eight"), "batch_size='eight' is not a valid int"),
        (("custom", "augment=maybe"), "augment='maybe' is not a boolean; use true or false"),
        (("custom", "norm"), "grid entry 'norm' is not name=value[,value...]"),
        (("custom", "norm=bn;norm=gn"), "grid names 'norm' twice"),
        (("custom", "seed=1,1"), "the sweep repeats 1 configuration(s)"),
        (("custom", "norm=gn;groups=3"), "groups=3 must divide every stage's channels"),
    ],
)
def test_bad_sweeps_name_the_value_and_what_is_allowed(args, message):
    with pytest.raises(ConfigError) as e:
        plan(*args)
    assert str(e.value).startswith(message)


def test_no_two_configurations_of_a_sweep_share_a_run_name():
    """The study's step-schedule child was once named as the default configuration: a name now adds
    the settings that vary in the sweep and differ from the defaults."""
    for preset, seeds in (("study", 1), ("study", 3), ("quick", 1)):
        configs = plan(preset, seeds=seeds)
        fields = varying(configs)
        names_ = [child_name(c, seeds, fields) for c in configs]
        assert len(set(names_)) == len(configs), preset
    study = plan("study")
    fields = varying(study)
    step = next(c for c in study if c.scheduler == "step")
    assert child_name(step, 1, fields) == "torch_bn-sgd-lr0.1-aug-bs32-step"
    adam = next(c for c in study if c.optimizer == "adam" and c.norm == "bn")
    assert child_name(adam, 1, fields) == "bn-adam-lr0.0001-aug-bs32-wd1e-07"
    assert child_name(plan("quick")[0], 1, varying(plan("quick"))) == "torch_bn-sgd-lr0.1-aug-bs32"
    assert config_label(step, fields).startswith(
        "norm=torch_bn, optimizer=sgd, lr=0.1, weight_decay=0.0001, scheduler=step"
    )
