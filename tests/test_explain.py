"""GradCAM: that it points at the evidence, the logged weights it needs, the grid, and the `gradcam`
entry point against a real MLflow store: in this process through the command its script runs, and
once through `mlflow run . -e gradcam` (the MLproject's declared defaults) as a real process."""

import json
import subprocess

import mlflow
import pytest
import torch
from click.testing import CliRunner
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from PIL import Image

from resnorm import names
from resnorm.bundle import DataBundle, Split
from resnorm.config import TrainConfig
from resnorm.data import load_data
from resnorm.engine import train
from resnorm.errors import DataError, ModelError
from resnorm.explain import GRID_ARTIFACT, GRID_SUMMARY, RUN_NAME, gradcam, gradcam_grid, load_module, read_images
from resnorm.model import ResNet, resnet
from resnorm.norms import NORM_NAMES
from resnorm.weights import champion_uris, load_trained, log_weights, resolve
from tests.conftest import command, mlflow_run_args, run_command, subprocess_env, tracking_store
from tests.trained import CPU, train_and_register

COLOURS = ("red", "green", "blue")


# --- GradCAM means something ---------------------------------------------------------------------


def coloured_squares(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise with one square per image, in a random quadrant; the square's colour is the class.

    The quadrant is drawn independently of the class, so only the square tells the class and a
    model cannot score by looking at a fixed place. Returns uint8 images (N, 3, H, W), labels (N,)
    and each image's quadrant as a mask (N, H, W): the region that decides its class.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(COLOURS)).repeat(n // len(COLOURS))
    images = torch.rand(len(labels), 3, size, size, generator=g) * 0.5
    quadrant = torch.randint(0, 4, (len(labels),), generator=g)
    regions = torch.zeros(len(labels), size, size, dtype=torch.bool)
    half, margin = size // 2, size // 16
    for i, (c, q) in enumerate(zip(labels.tolist(), quadrant.tolist())):
        y, x = (q // 2) * half, (q % 2) * half
        images[i, c, y + margin : y + half - margin, x + margin : x + half - margin] += 0.5
        regions[i, y : y + half, x : x + half] = True
    return (images * 255).round().to(torch.uint8), labels, regions


@pytest.fixture
def one_thread():
    """These tensors are tiny: a second intra-op thread buys nothing here, and on a busy 2-core
    machine its spin-waiting made a 1-second training take 7 to 100 seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_gradcam_heat_falls_on_the_square_that_decides_the_class(norm, one_thread):
    size = 24  # layer3 maps are 6x6: a quadrant is 3x3 of them
    splits = {
        name: coloured_squares(n, size, seed) for name, n, seed in (("train", 300, 1), ("val", 60, 2), ("test", 60, 3))
    }
    data = DataBundle("squares", "squares", COLOURS, **{k: Split(x, y) for k, (x, y, _) in splits.items()})
    cfg = TrainConfig(norm=norm, n=1, epochs=3, batch_size=16, lr=0.05, augment=False, image_size=size, data="squares")
    model = train(cfg, data, CPU, progress=False).model
    images, labels, regions = splits["test"]
    explained = gradcam(model, images.float() / 255)

    assert explained.heat.shape == (len(images), size, size)
    assert (explained.predictions == labels).float().mean() >= 0.9  # it learned the task
    # Most of the heat lies in the decisive quadrant (a quarter of the image: 0.25 by chance)...
    mass = (explained.heat * regions).sum((1, 2)) / explained.heat.sum((1, 2))
    assert mass.mean() > 0.5, f"mean share of heat in the decisive quadrant {mass.mean():.2f}"
    # ...and the hottest pixel is in it (the "pointing game", Zhang et al., 2016).
    hottest = explained.heat.flatten(1).argmax(1)
    hits = regions.flatten(1)[torch.arange(len(images)), hottest]
    assert hits.float().mean() >= 0.9


def test_gradcam_grid_has_a_row_per_image_and_a_column_per_model():
    torch.manual_seed(0)
    models = {"bn": resnet(1, 3, "bn", 3).eval(), "gn": resnet(1, 3, "gn", 3, groups=4).eval()}
    images, labels, _ = coloured_squares(3, 16, seed=0)
    fig = gradcam_grid(models, images, [0, None, 2], COLOURS, title="t")
    assert isinstance(fig, Figure)
    cells = [ax for ax in fig.axes if ax.get_images()]
    assert len(cells) == 3 * 2
    grid = [cells[i : i + 2] for i in range(0, 6, 2)]  # row-major, as subplots made them
    # The models' names head the columns; every cell says what its model predicted.
    assert grid[0][0].get_title().startswith("bn\npred ") and grid[0][1].get_title().startswith("gn\npred ")
    assert all(row[j].get_title().startswith("pred ") for row in grid[1:] for j in range(2))
    assert [row[0].get_ylabel() for row in grid] == ["true red", "true ?", "true blue"]
    with pytest.raises(ModelError, match=r"bn takes 3-channel images, got 1 channels"):
        gradcam_grid(models, images[:, :1], labels, COLOURS)


# --- logged weights and the CLI against a real store ---------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """bn and gn trained on the digits at 8 px (registered, champions), and a run whose weights
    take 12 px images (not registered)."""
    folder = tmp_path_factory.mktemp("explain")
    with tracking_store(folder) as uri:
        data = load_data("digits", 8)
        trained = {}
        for norm in ("bn", "gn"):
            cfg = TrainConfig(norm=norm, epochs=1, image_size=8, n=1)
            trained[norm] = train_and_register(cfg, data)
        with mlflow.start_run(run_name="twelve") as run:
            cfg = TrainConfig(norm="ln", image_size=12, n=1)
            log_weights(MlflowClient(), run.info.run_id, cfg, load_data("digits", 12), resnet(1, 10, "ln", 1))
        yield {"uri": uri, "folder": folder, "data": data, "trained": trained, "twelve": run.info.run_id}


@pytest.mark.slow
def test_load_module_rebuilds_the_trained_resnet_from_any_uri(store):
    run_id, result, version = store["trained"]["bn"]
    x = store["data"].test.images[:16].float() / 255
    with torch.no_grad():
        expected = result.model(x)
    for uri in ("models:/resnorm-bn@champion", f"models:/resnorm-bn/{version}", f"runs:/{run_id}/model", run_id):
        model = load_module(uri)
        assert isinstance(model, ResNet) and not model.training, uri
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    trained = load_trained("models:/resnorm-bn@champion")
    assert (trained.run_id, trained.norm, trained.image_size, trained.in_channels) == (run_id, "bn", 8, 1)
    assert trained.classes == store["data"].classes and trained.label == f"bn v{version}"
    assert champion_uris() == ["models:/resnorm-bn@champion", "models:/resnorm-gn@champion"]
    # What the run holds: a state dict that loads without unpickling code, and the config as JSON.
    client = MlflowClient()
    config = json.load(open(client.download_artifacts(run_id, names.WEIGHTS_CONFIG, str(store["folder"]))))
    assert config == {
        "n": 1,
        "num_classes": 10,
        "norm": "bn",
        "in_channels": 1,
        "groups": 8,
        "classes": list("0123456789"),
        "image_size": 8,
        "data": "digits",
    }
    state = torch.load(client.download_artifacts(run_id, names.WEIGHTS_STATE, str(store["folder"])), weights_only=True)
    assert state.keys() == result.model.state_dict().keys()


@pytest.mark.slow
def test_lookups_that_fail_name_the_value(store):
    with pytest.raises(ModelError, match=r"model 'resnorm-bn' has no version '9'"):
        resolve("models:/resnorm-bn/9")
    with pytest.raises(ModelError, match=r"cannot read model URI 'models:/resnorm-bn'"):
        resolve("models:/resnorm-bn")
    with mlflow.start_run(run_name="no weights") as empty:
        pass
    run_id = empty.info.run_id
    with pytest.raises(ModelError, match=rf"run {run_id} \(from '{run_id}'\) has no weights/model.json"):
        load_trained(run_id)
    with pytest.raises(DataError, match=r"image '/no/such.png' does not exist"):
        read_images(["/no/such.png"], 8, 1, ())


@pytest.mark.slow
def test_gradcam_cli_logs_a_grid_of_every_champion(store, tmp_path, capsys):
    output = tmp_path / "grid.png"
    run_command(command("gradcam"), ["--samples", "3", "--output", str(output)])
    client = MlflowClient()
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    (run,) = client.search_runs(
        [exp.experiment_id], f"attributes.run_name = '{RUN_NAME}'", order_by=["start_time DESC"], max_results=1
    )
    assert run.info.run_id in capsys.readouterr().out and run.info.status == "FINISHED"
    with Image.open(client.download_artifacts(run.info.run_id, GRID_ARTIFACT, str(tmp_path))) as grid:
        assert grid.format == "PNG" and grid.height > grid.width  # 3 rows of 2 columns
    with Image.open(output) as local:
        assert local.format == "PNG"
    summary = json.load(open(client.download_artifacts(run.info.run_id, GRID_SUMMARY, str(tmp_path))))
    assert [m["uri"] for m in summary["models"]] == ["models:/resnorm-bn@champion", "models:/resnorm-gn@champion"]
    # The fixed sample: the first test image of each class in turn.
    assert [i["label"] for i in summary["images"]] == ["0", "1", "2"]
    test = store["data"].test
    first = [int(torch.nonzero(test.labels == c)[0]) for c in range(3)]
    assert [i["source"] for i in summary["images"]] == [f"digits test[{k}]" for k in first]
    x = test.images[first].float() / 255
    for m in summary["models"]:
        _, result, _ = store["trained"][m["norm"]]
        with torch.no_grad():
            assert m["predictions"] == [str(k) for k in result.model(x).argmax(1).tolist()]


@pytest.mark.slow
def test_gradcam_cli_explains_image_files_with_labels_from_their_folders(store, tmp_path, capsys):
    test = store["data"].test
    files = []
    for k in range(4):  # real PNG files, larger than the model's input: they are resized to it
        label = str(int(test.labels[k]))
        path = tmp_path / "images" / (label if k < 3 else "unlabelled") / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[k, 0].numpy()).resize((32, 32), Image.Resampling.NEAREST).save(path)
        files.append((path, label if k < 3 else None))
    capsys.readouterr()
    run_command(command("gradcam"), ["--models", "models:/resnorm-gn@champion", "--images", str(tmp_path / "images")])
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    summary = json.load(open(MlflowClient().download_artifacts(run_id, GRID_SUMMARY, str(tmp_path))))
    expected = {str(p): label for p, label in files}
    assert {i["source"]: i["label"] for i in summary["images"]} == expected
    images, _, sources = read_images([str(tmp_path / "images")], 8, 1, store["data"].classes)
    with torch.no_grad():
        predicted = store["trained"]["gn"][1].model(images.float() / 255).argmax(1).tolist()
    assert summary["models"][0]["predictions"] == [str(k) for k in predicted]


@pytest.mark.slow
def test_mlflow_run_gradcam_with_the_declared_defaults(store, tmp_path):
    cmd = mlflow_run_args("gradcam", samples=2)
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(store["uri"]), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id], "tags.`mlflow.project.entryPoint` = 'gradcam'")
    assert run.info.status == "FINISHED" and run.info.run_name == RUN_NAME
    summary = json.load(open(client.download_artifacts(run.info.run_id, GRID_SUMMARY, str(tmp_path))))
    assert len(summary["images"]) == 2 and len(summary["models"]) == 2
    assert GRID_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}


def bad_inputs(store, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    return [
        (["--models", "models:/resnorm-nope@champion"], ["no registered model named 'resnorm-nope'", "resnorm-bn"]),
        (["--models", "models:/resnorm-bn@best"], ["no version of 'resnorm-bn' holds the alias 'best'", "champion"]),
        (["--models", "runs:/0123456789abcdef0123456789abcdef"], ["no run with id '0123456789abcdef0123456789abcdef'"]),
        (["--images", str(not_an_image)], [f"cannot read image {not_an_image}: cannot identify image file"]),
        (
            ["--models", f"models:/resnorm-bn@champion,{store['twelve']}"],
            [f"model '{store['twelve']}' takes 1x12x12 images but 'models:/resnorm-bn@champion' takes 1x8x8"],
        ),
    ]


@pytest.mark.slow
def test_bad_input_ends_in_one_line_naming_the_value(store, tmp_path, capsys):
    client = MlflowClient()
    before = len(client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id]))
    for args, fragments in bad_inputs(store, tmp_path):
        with pytest.raises(SystemExit) as exit_:
            run_command(command("gradcam"), args)
        assert exit_.value.code == 1, args
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and all(f in errors[0] for f in fragments), (args, errors)
    after = len(client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id]))
    assert after == before, "no gradcam run for a rejected command"


# Without any champion: the catalogue's case (tests/test_bad_input.py, "gradcam").


def test_help_states_every_default():
    result = CliRunner().invoke(command("gradcam"), ["--help"])
    assert result.exit_code == 0
    for option in ("--models", "--images", "--samples", "--output"):
        assert option in result.output
