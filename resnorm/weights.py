"""A run's kept weights: logged beside its model, and the trained ResNet (the ``nn.Module`` itself)
rebuilt from them.

The registered model is an exported program (pt2): it predicts, but it has no modules to hook,
so GradCAM cannot look inside it. Every training run therefore also logs the kept weights as a
state dict (``weights/state_dict.pt``) and what rebuilds the ResNet around them
(``weights/model.json``); ``load_trained`` finds the run behind a model URI, rebuilds the ResNet
and loads the weights with ``torch.load(weights_only=True)``, which unpickles no code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.bundle import DataBundle
from resnorm.config import TrainConfig
from resnorm.errors import ModelError
from resnorm.model import ResNet, resnet
from resnorm.norms import NORM_NAMES
from resnorm.registry import read_run

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def log_weights(client: MlflowClient, run_id: str, cfg: TrainConfig, data: DataBundle, model: ResNet) -> None:
    """The kept model's state dict and what rebuilds the ResNet around it, as run artifacts."""
    config = {
        "n": cfg.n,
        "num_classes": data.num_classes,
        "norm": cfg.norm,
        "in_channels": data.channels,
        "groups": cfg.groups,
        "classes": list(data.classes),
        "image_size": cfg.image_size,
        "data": cfg.data,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(names.WEIGHTS_STATE))
        torch.save(model.state_dict(), path)
        client.log_artifact(run_id, path, os.path.dirname(names.WEIGHTS_STATE))
    client.log_dict(run_id, config, names.WEIGHTS_CONFIG)


@dataclass(frozen=True)
class TrainedModel:
    """A trained ResNet (CPU, eval mode) and what it was trained on."""

    model: ResNet
    uri: str  # as the user gave it
    run_id: str
    label: str  # a short column title: "bn v3" for a registered version, "bn 1a2b3c4d" for a run
    norm: str
    classes: tuple[str, ...]
    in_channels: int
    image_size: int  # the size it was trained at
    data: str  # the training run's `data` param: "digits", "synthetic" or a folder


def resolve(uri: str, client: MlflowClient | None = None) -> tuple[str, str | None]:
    """The run id behind ``models:/name@alias``, ``models:/name/version``, ``runs:/id[/...]`` or a
    bare run id, and the registered version (None for a run)."""
    client = client or MlflowClient()
    if m := _MODELS_URI.match(uri):
        name = m["name"]
        try:
            registered = client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code not in _MISSING:
                raise
            raise ModelError(f"no registered model named {name!r} (in {uri!r}); {_known_models(client)}") from None
        if m["alias"]:
            version = registered.aliases.get(m["alias"])
            if version is None:
                held = ", ".join(sorted(registered.aliases)) or "none"
                raise ModelError(
                    f"no version of {name!r} holds the alias {m['alias']!r} (in {uri!r}); aliases held: {held}"
                )
        else:
            version = m["version"]
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException as e:
            if e.error_code not in _MISSING:
                raise
            raise ModelError(f"model {name!r} has no version {version!r} (in {uri!r})") from None
        gone = "not recorded (a version made outside a run)" if mv.run_id is None else read_run(client, mv.run_id)[1]
        if gone is not None:
            raise ModelError(
                f"{uri!r} is version {mv.version} of {name!r}, whose run {mv.run_id} is {gone}; "
                + _instead(name, m["alias"])
            )
        return str(mv.run_id), str(mv.version)
    if uri.startswith("models:/"):
        raise ModelError(f"cannot read model URI {uri!r}; use models:/<name>@<alias> or models:/<name>/<version>")
    run_id = m["run_id"] if (m := _RUNS_URI.match(uri)) else uri
    try:
        client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in _MISSING:
            raise
        raise ModelError(
            f"no run with id {run_id!r} (from {uri!r}); give models:/<name>@<alias>, models:/<name>/<version>, "
            "runs:/<run_id> or a run id"
        ) from None
    return run_id, None


def _instead(name: str, alias: str | None) -> str:
    """What to explain instead of a registered version whose run is gone."""
    norm = next((n for n in NORM_NAMES if names.registered_model(n) == name), None)
    if alias == names.CHAMPION and norm is not None:
        # The next version registered takes the alias from a version whose run is gone (resnorm.registry).
        return f"train {norm} again (python entrypoints/train.py --norm {norm}): its new version becomes the champion"
    return "give another version, or a run id"


def _known_models(client: MlflowClient) -> str:
    found = sorted(rm.name for rm in client.search_registered_models())
    return f"registered: {', '.join(found)}" if found else "no model is registered in this tracking store"


def load_trained(uri: str, client: MlflowClient | None = None) -> TrainedModel:
    """Rebuild the ResNet of the run behind ``uri`` (see ``resolve``) from its logged weights."""
    client = client or MlflowClient()
    run_id, version = resolve(uri, client)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config_path = client.download_artifacts(run_id, names.WEIGHTS_CONFIG, tmp)
            weights_path = client.download_artifacts(run_id, names.WEIGHTS_STATE, tmp)
        except MlflowException:
            raise ModelError(
                f"run {run_id} (from {uri!r}) has no {names.WEIGHTS_CONFIG} and {names.WEIGHTS_STATE}; "
                "it was not logged by resnorm's train (or by an older one): train it again"
            ) from None
        config = json.loads(Path(config_path).read_text())
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = resnet(config["n"], config["num_classes"], config["norm"], config["in_channels"], config["groups"])
    model.load_state_dict(state)  # the input mean and std are buffers: they come with the weights
    model.eval()
    norm = config["norm"]
    return TrainedModel(
        model=model,
        uri=uri,
        run_id=run_id,
        label=f"{norm} v{version}" if version else f"{norm} {run_id[:8]}",
        norm=norm,
        classes=tuple(config["classes"]),
        in_channels=config["in_channels"],
        image_size=config["image_size"],
        data=config["data"],
    )


def load_module(uri: str, client: MlflowClient | None = None) -> ResNet:
    """The trained ``ResNet`` (CPU, eval mode) behind a model URI or run id."""
    return load_trained(uri, client).model


def champion_uris(client: MlflowClient | None = None) -> list[str]:
    """``models:/resnorm-{norm}@champion`` for every norm whose registered model has a champion."""
    client = client or MlflowClient()
    uris = []
    for norm in NORM_NAMES:
        name = names.registered_model(norm)
        try:
            aliases = client.get_registered_model(name).aliases
        except MlflowException as e:
            if e.error_code not in _MISSING:
                raise
            continue
        if names.CHAMPION in aliases:
            uris.append(f"models:/{name}@{names.CHAMPION}")
    return uris
