"""GradCAM (Selvaraju et al., 2017) of trained ResNets, with captum, as one grid of heat maps.

GradCAM weighs the feature maps of a layer by the spatially averaged gradient of a class score
and keeps the positive part: where the layer saw evidence for that class. We explain the
predicted class at the last residual stage (``model.layer3``, H/4 x W/4), as the paper does at
the last convolutional layer: its features are the most class-specific that still have a place
in the image. The map is upsampled to the image.

The same images explained by several models make a grid: rows are images, columns are models.
``gradcam_grid`` draws it from modules already in memory; ``explain`` builds it from model URIs
(the runs' kept weights, see ``resnorm.weights``) and ``log_gradcam`` logs it to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import mlflow
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from torch import nn

from resnorm.data import load_data
from resnorm.errors import DataError, ModelError
from resnorm.images import decode_image, image_extensions
from resnorm.plots import plain
from resnorm.tracking import use_default_experiment
from resnorm.weights import TrainedModel, champion_uris, load_module, load_trained  # noqa: F401 (load_module: API)

GRID_ARTIFACT = "gradcam.png"
GRID_SUMMARY = "gradcam.json"  # which models and images the grid shows, and every prediction
RUN_NAME = "gradcam"
DEFAULT_SAMPLES = 10


@dataclass(frozen=True)
class Explanation:
    heat: torch.Tensor  # (N, H, W) GradCAM of the predicted class, upsampled, each map scaled to max 1
    probabilities: torch.Tensor  # (N, classes)

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(1)


def check_images(model: nn.Module, images: torch.Tensor, name: str = "the model") -> None:
    """Images must be a float (N, C, H, W) batch with the channels ``model`` takes."""
    if images.ndim != 4:
        raise ModelError(f"images must be a (N, C, H, W) batch, got shape {tuple(images.shape)}")
    channels = getattr(model, "in_channels", None)
    if channels is not None and images.shape[1] != channels:
        raise ModelError(
            f"{name} takes {channels}-channel images, got {images.shape[1]} channels (shape {tuple(images.shape)})"
        )


def gradcam(model: nn.Module, images: torch.Tensor, layer: nn.Module | None = None) -> Explanation:
    """GradCAM of each image's predicted class at ``layer`` (default ``model.layer3``).

    ``images``: float32 (N, C, H, W) in [0, 1], as the model takes them (it standardises itself).
    """
    check_images(model, images)
    model.eval()  # batch statistics would mix the images, and eval is how the model predicts
    layer = layer if layer is not None else cast(nn.Module, model.layer3)
    with torch.no_grad():
        probabilities = torch.softmax(model(images), dim=1)
    predicted = probabilities.argmax(1)
    cam = LayerGradCam(model, layer).attribute(images, target=predicted, relu_attributions=True)  # (N, 1, h, w)
    heat = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    heat = heat.detach()
    # Scaled per image: GradCAM's magnitude differs between models and images; its shape is the message.
    heat = heat / heat.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return Explanation(heat, probabilities)


def gradcam_grid(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: Sequence[int | None] | torch.Tensor | None,
    classes: Sequence[str],
    title: str | None = None,
) -> Figure:
    """A grid of GradCAM heat maps: one row per image, one column per model (the mapping's keys
    are the column titles). Each cell shows the heat map over the image, the predicted class and
    its probability (green when it is the true label, red when not) and the true label.

    ``images``: float (N, C, H, W) in [0, 1] or uint8; ``labels``: the true class indices, None
    where unknown (or None for all); ``classes``: the class names of every model's outputs.
    """
    if not models or len(images) == 0:
        raise ValueError(f"a grid needs at least one model and one image, got {len(models)} and {len(images)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255
    labels = [None] * len(images) if labels is None else [None if t is None else int(t) for t in labels]
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    explained = {}
    for name, model in models.items():
        check_images(model, images, name)
        explained[name] = gradcam(model, images)

    rows, cols = len(images), len(models)
    height = 2.0 * rows + 1.0  # inches
    width = max(1.9 * cols + 0.6, 4.0)  # room for the title and the colorbar's label
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    pictures = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) for imshow
    shown = None
    for j, (name, ex) in enumerate(explained.items()):
        for i in range(rows):
            ax = axes[i, j]
            picture = pictures[i]
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(picture.clip(0, 1))
            shown = ax.imshow(ex.heat[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            predicted = int(ex.predictions[i])
            truth = labels[i]
            colour = "black" if truth is None else ("tab:green" if predicted == truth else "tab:red")
            text = f"pred {classes[predicted]} ({ex.probabilities[i, predicted]:.0%})"
            ax.set_title(plain(f"{name}\n{text}" if i == 0 else text), fontsize=8, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(plain("true ?" if truth is None else f"true {classes[truth]}"), fontsize=9)
    # Colorbar room is a fraction of the grid's height; about 0.5 inch whatever the rows.
    assert shown is not None  # a grid has a cell at least (images and models are checked non-empty)
    fig.colorbar(
        shown,
        ax=axes,
        location="bottom",
        shrink=0.8,
        aspect=40,
        fraction=0.5 / height,
        pad=0.1 / height,
        label="GradCAM (each map scaled to max 1)",
    )
    if title:
        fig.suptitle(plain(title))
    return fig


def sample_test_indices(labels: torch.Tensor, samples: int = DEFAULT_SAMPLES) -> list[int]:
    """A fixed sample of a split: its first image of each class in turn, ``samples`` in all."""
    seen: dict[int, int] = {}
    rank = []  # (how many of its class came before it, class, index)
    for k, c in enumerate(labels.tolist()):
        rank.append((seen.get(c, 0), c, k))
        seen[c] = seen.get(c, 0) + 1
    return [k for _, _, k in sorted(rank)[:samples]]


def image_files(paths: Sequence[str]) -> list[Path]:
    """The given files, and the image files under the given folders (sorted)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            readable = image_extensions()
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in readable
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise DataError(f"image folder {str(p)!r} holds no image file Pillow opens (such as .jpg, .png, .gif)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image {str(p)!r} does not exist")
    return files


def read_images(
    paths: Sequence[str], image_size: int, channels: int, classes: Sequence[str]
) -> tuple[torch.Tensor, list[int | None], list[str]]:
    """Image files (or folders of them) as a uint8 batch; the true label is the name of an
    image's folder when that is a class (the image-folder layout training reads), else None."""
    files = image_files(paths)
    index = {c: k for k, c in enumerate(classes)}
    images = torch.stack([decode_image(f, image_size, channels) for f in files])
    return images, [index.get(f.parent.name) for f in files], [str(f) for f in files]


@dataclass
class GradcamResult:
    figure: Figure
    models: list[TrainedModel]
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: list[int | None]
    sources: list[str]  # where each image came from

    def summary(self) -> dict:
        """What the grid shows, as JSON: the models, the images and every model's predictions."""
        x = self.images.float() / 255
        classes = self.models[0].classes
        images = [{"source": s, "label": None if t is None else classes[t]} for s, t in zip(self.sources, self.labels)]
        models = []
        for c in self.models:
            with torch.no_grad():
                probabilities = torch.softmax(c.model(x), dim=1)
            best = probabilities.max(1)
            models.append(
                {
                    "uri": c.uri,
                    "run_id": c.run_id,
                    "label": c.label,
                    "norm": c.norm,
                    "predictions": [classes[k] for k in best.indices.tolist()],
                    "probabilities": best.values.tolist(),  # of each prediction
                }
            )
        return {"models": models, "images": images}


def explain(
    model_uris: Sequence[str] = (), images: Sequence[str] = (), samples: int = DEFAULT_SAMPLES
) -> GradcamResult:
    """The GradCAM grid of ``model_uris`` (default: every norm's champion) on image files or
    folders (default: ``samples`` test images of the first model's data)."""
    uris = list(dict.fromkeys(model_uris)) or champion_uris()
    if not uris:
        raise ModelError(
            "no registered resnorm-{norm} model has a 'champion' alias in this tracking store; "
            "train one first, or give model URIs"
        )
    trained = [load_trained(u) for u in uris]
    first = trained[0]
    for c in trained[1:]:
        if (c.in_channels, c.image_size) != (first.in_channels, first.image_size):
            raise ModelError(
                f"model {c.uri!r} takes {_shape(c)} images but {first.uri!r} takes {_shape(first)}; "
                "one grid shows the same images to every model: give models trained at one image size and channels"
            )
        if c.classes != first.classes:
            raise ModelError(
                f"model {c.uri!r} predicts classes ({', '.join(c.classes)}) unlike {first.uri!r} "
                f"({', '.join(first.classes)}); give models trained on the same data"
            )
    if images:
        batch, labels, sources = read_images(images, first.image_size, first.in_channels, first.classes)
    else:
        try:
            data = load_data(first.data, first.image_size)
        except DataError as e:
            raise DataError(
                f"cannot load the test images of {first.uri!r} (data {first.data!r}): {e}; give image files instead"
            ) from None
        chosen = sample_test_indices(data.test.labels, samples)
        batch, labels = data.test.images[chosen], data.test.labels[chosen].tolist()
        sources = [f"{first.data} test[{k}]" for k in chosen]
    columns: dict[str, nn.Module] = {}
    for c in trained:  # two runs of one norm share a label; the URI tells them apart
        columns[c.label if c.label not in columns else f"{c.label}\n{c.uri}"] = c.model
    figure = gradcam_grid(columns, batch, labels, first.classes, title="GradCAM at layer3, predicted class")
    return GradcamResult(figure, trained, batch, labels, sources)


def _shape(c: TrainedModel) -> str:
    return f"{c.in_channels}x{c.image_size}x{c.image_size}"


def log_gradcam(result: GradcamResult) -> str:
    """Log the grid and its summary to a run named ``gradcam`` (or to the run ``mlflow run`` made);
    returns the run id."""
    use_default_experiment()
    with mlflow.start_run(run_name=RUN_NAME) as run:
        client = MlflowClient()
        client.log_figure(run.info.run_id, result.figure, GRID_ARTIFACT)
        client.log_dict(run.info.run_id, result.summary(), GRID_SUMMARY)
        return run.info.run_id
