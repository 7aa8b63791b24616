"""The MLproject <-> click contract, and the two dependency lists kept in agreement."""

import re
import shlex
import tomllib

import click
import pytest
import yaml

from tests.conftest import ROOT

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]


def load_command(script: str) -> click.Command:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"entry_{script}", ROOT / "entrypoints" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (command,) = [v for v in vars(module).values() if isinstance(v, click.Command)]
    return command


def script_of(entry: dict) -> str:
    return re.search(r"entrypoints/(\w+)\.py", entry["command"]).group(1)


def test_main_is_train():
    assert set(ENTRY_POINTS) >= {"main", "train"}
    assert ENTRY_POINTS["main"] == ENTRY_POINTS["train"]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_reaches_its_command_and_every_option_is_declared(name):
    entry = ENTRY_POINTS[name]
    command = load_command(script_of(entry))
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    params = entry["parameters"]
    assert set(params) == set(options), "MLproject parameters and click options differ"

    # Each parameter is passed as its option, e.g. `--batch-size {batch_size}`.
    tokens = shlex.split(entry["command"])
    passed = {tokens[i]: tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i].startswith("--")}
    for key, option in options.items():
        flag = max(option.opts, key=len)
        assert passed.get(flag) == f"{{{key}}}", f"{flag} does not receive {{{key}}}"

    kinds = {"int": click.INT, "float": click.FLOAT, "string": click.STRING}
    for key, spec in params.items():
        option = options[key]
        base = getattr(option.type, "_number_class", None)
        if isinstance(option.type, click.Choice):
            assert spec["type"] == "string", key
            assert spec["default"] in option.type.choices, key
        elif option.type is click.BOOL:
            assert spec["type"] == "string" and spec["default"] in ("true", "false"), key
        elif isinstance(option.type, click.Path):
            assert spec["type"] in ("string", "path"), key
        elif base is not None:
            assert spec["type"] == {int: "int", float: "float"}[base], key
        else:
            assert kinds[spec["type"]] == option.type, key
        # The MLproject default, converted by click, is the command's own default.
        assert option.type.convert(str(spec["default"]), option, None) == option.default, key


def test_conda_env_and_pyproject_list_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project["dependencies"])
    assert MLPROJECT["conda_env"] == "conda.yaml"
