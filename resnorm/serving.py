"""The MLflow model a training run registers: a ``pytorch`` flavor and a classifier ``pyfunc``.

One logged model, two ways to load it:

* ``mlflow.pytorch.load_model(uri)`` returns the exported program (pt2, torch.export) as a
  ``GraphModule``: float32 images (N, C, H, W) in [0, 1] -> logits (N, classes).
* ``mlflow.pyfunc.load_model(uri)`` and ``mlflow models serve`` return, per image, the class
  name, its probability and every class's probability.

MLflow's own pyfunc for a pytorch model returns raw logits, so ``save_model`` writes the pytorch
flavor as usual and then points the ``python_function`` flavor at this file, which it ships
inside the model (``code/resnorm_serving.py``). That is how a serving machine loads the model
without resnorm installed, and why this module imports nothing from ``resnorm``: only torch,
numpy, pandas and mlflow. The shipped loader is plain source, and the weights come from the pt2
archive, which ``mlflow.pytorch.load_model`` checks for pickle payloads before loading it: loading
the model runs no pickled code.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import FLAVOR_NAME as PYFUNC
from mlflow.pyfunc import add_to_model
from mlflow.types.schema import ColSpec, DataType, Map, Schema, TensorSpec

# The module name this file has inside a model, where ``code/`` is on sys.path. It differs from
# ``resnorm.serving`` so that no repository code is needed, or shadowed, where the model loads.
LOADER_MODULE = "resnorm_serving"
CODE_DIR = "code"
CLASSES_KEY = "classes"  # the MLmodel ``metadata`` entry listing the class names in output order

OUTPUT_SCHEMA = Schema(
    [
        ColSpec(DataType.string, "label"),  # the predicted class name
        ColSpec(DataType.double, "probability"),  # its probability
        ColSpec(Map(DataType.double), "probabilities"),  # class name -> probability, every class
    ]
)


def signature(channels: int, image_size: int) -> ModelSignature:
    """float32 images (any batch, C, H, W) in [0, 1] in; one row per image out."""
    images = TensorSpec(np.dtype(np.float32), (-1, channels, image_size, image_size))
    return ModelSignature(inputs=Schema([images]), outputs=OUTPUT_SCHEMA)


def save_model(
    path: str,
    mlflow_model: Model | None = None,
    *,
    pytorch_model: torch.nn.Module,
    classes: Sequence[str],
    input_example: np.ndarray,
    metadata: dict | None = None,
    **kwargs,
) -> None:
    """Save ``pytorch_model`` (eval mode, CPU) as pt2 with the classifier pyfunc at ``path``.

    The MLflow "flavor" protocol: ``mlflow.models.Model.log(flavor=<this module>)`` calls it.
    ``input_example`` is a float32 (N >= 2, C, H, W) batch: a batch of one would fix the
    exported batch size. Other keyword arguments go to ``mlflow.pytorch.save_model``.
    """
    mlflow_model = mlflow_model or Model()
    kwargs.pop("validate_serving_input", None)  # Model.log's own option, which it passes on to every flavor
    _, channels, height, width = input_example.shape
    if height != width:
        raise ValueError(f"input_example must hold square images, got {height}x{width}")
    mlflow.pytorch.save_model(
        pytorch_model,
        path,
        mlflow_model=mlflow_model,
        serialization_format="pt2",
        input_example=input_example,
        signature=signature(channels, height),
        metadata={**(mlflow_model.metadata or {}), **(metadata or {}), CLASSES_KEY: list(classes)},
        **kwargs,
    )
    os.makedirs(os.path.join(path, CODE_DIR))
    shutil.copyfile(os.path.abspath(__file__), os.path.join(path, CODE_DIR, f"{LOADER_MODULE}.py"))
    # Replace the logits pyfunc that mlflow.pytorch wrote; the pytorch flavor stays as it is.
    env = mlflow_model.flavors[PYFUNC]["env"]
    del mlflow_model.flavors[PYFUNC]
    add_to_model(
        mlflow_model,
        loader_module=LOADER_MODULE,
        code=CODE_DIR,
        conda_env=env["conda"],
        python_env=env["virtualenv"],
    )
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def log_model(pytorch_model: torch.nn.Module, name: str, **kwargs) -> mlflow.models.model.ModelInfo:
    """Log (and with ``registered_model_name``, register) the model in the active run; see ``save_model``."""
    return Model.log(artifact_path=None, name=name, flavor=sys.modules[__name__], pytorch_model=pytorch_model, **kwargs)


class ImageClassifier:
    """The pyfunc implementation: images in, class names and probabilities out."""

    def __init__(self, program: torch.nn.Module, classes: Sequence[str]) -> None:
        self.program = program
        self.classes = list(classes)

    def predict(self, data, params: dict | None = None) -> pd.DataFrame:
        x = torch.as_tensor(np.asarray(data, dtype=np.float32))  # (N, C, H, W) in [0, 1]
        check_pixels(x)
        with torch.no_grad():
            probs = torch.softmax(self.program(x).double(), dim=1)  # (N, classes)
        best = probs.argmax(1).tolist()
        rows = probs.tolist()
        return pd.DataFrame(
            {
                "label": [self.classes[i] for i in best],
                "probability": [row[i] for row, i in zip(rows, best)],
                "probabilities": [dict(zip(self.classes, row)) for row in rows],
            }
        )


def check_pixels(x: torch.Tensor) -> None:
    """Refuse NaN, infinite or out-of-range pixels; the scoring server answers HTTP 400 with the message."""
    bad = ~torch.isfinite(x)
    if bad.any():
        raise MlflowException(
            f"{int(bad.sum())} pixel value(s) are NaN or infinite (the first in image {int(bad.nonzero()[0, 0])}); "
            "images must be float32 in [0, 1]",
            error_code=INVALID_PARAMETER_VALUE,
        )
    outside = (x < 0) | (x > 1)
    if outside.any():
        raise MlflowException(
            f"{int(outside.sum())} pixel value(s) are outside [0, 1] (min {x.min().item():g}, max {x.max().item():g}, "
            f"the first in image {int(outside.nonzero()[0, 0])}); images must be float32 in [0, 1]",
            error_code=INVALID_PARAMETER_VALUE,
        )


def _load_pyfunc(path: str, model_config: dict | None = None) -> ImageClassifier:
    """Called by ``mlflow.pyfunc.load_model`` with the model's local folder."""
    metadata = Model.load(os.path.join(path, MLMODEL_FILE_NAME)).metadata or {}
    if CLASSES_KEY not in metadata:
        raise MlflowException(f"the model at {path} names no classes (its MLmodel has no metadata {CLASSES_KEY!r})")
    classes = metadata[CLASSES_KEY]
    return ImageClassifier(mlflow.pytorch.load_model(path), classes)
