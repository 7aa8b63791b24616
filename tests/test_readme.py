"""Every command in the fenced code blocks of README.md and of the manual (docs/, in the order the README's
map lists its pages) runs, as written, in that order; every relative link resolves; no dated figure stands
outside docs/benchmarks.md.

The README and the manual are read when the test runs. Each ```bash block is cut into commands (continuation lines
joined, comments dropped, ``&&`` chains split) and every ```python block is one snippet. Each
command must match exactly one row of RUNNERS or SKIPPED; a command that matches neither fails
the test: a README command without a test is a defect.

The commands run in a copy of the project (``mlflow run .`` there, as a reader would) with no
``MLFLOW_TRACKING_URI`` set, so their runs land in the README's default store, ``./mlflow.db`` of
that copy; the commands about an image folder (``/data/birds``, the study sweep, its analysis and
re-run) share a second store of their own, since a grid of GradCAM needs models of one input.

Substitutions, only where a command would take long or names a place that does not exist here:

| in the README                                | here                                              | why                  |
|----------------------------------------------|---------------------------------------------------|----------------------|
| a ``train`` or ``sweep`` (``mlflow run``)    | ``-P epochs=1 -P image_size=8 -P n=1`` appended   | seconds, not minutes |
| ``-P image_size=256``                        | ``-P image_size=8``                               | the same             |
| ``sweep`` of the quick start                 | ``-P preset=custom -P grid=norm=bn,ln``           | 2 children, not 7    |
| ``-P preset=study``                          | ``-P preset=custom -P grid=norm=bn,gn``           | 2 children, not 27   |
| ``-P preset=study -P seeds=auto``            | ``-P preset=custom -P grid=norm=bn``              | 3 children, not 81+  |
| ``/data/birds``                              | a small split image folder (cat, dog, owl)        | not on this machine  |
| ``/tmp/bird.jpg``                            | an image file in the test's folder                | the same             |
| ``models:/resnorm-gn/3``                     | ``models:/resnorm-gn/2``                          | two gn runs here     |
| ``<parent run id>``, ``<run_id>``            | the sweep's parent; a run killed after epoch 1   | placeholders         |
| ``--port 5000``, ``--port 5001``, ``:5000``  | a free port (``mlflow ui``: ``--port`` added)     | shared machine       |
| ``curl ... -d '{"inputs": [[[[0.0, 0.5, ...`` | a real (1, 1, 8, 8) batch                         | "..." is not JSON   |
| ``bench`` (``mlflow run``, GPU defaults)     | ``-P norms=bn -P batch_sizes=8 -P image_size=8 -P steps=1 -P warmup=1 -P feed_files=0 -P modes=plain`` | a CPU |
| ``bench.py --image-size 32 ... --steps 10 --warmup 3`` | ``--image-size 8 ... --steps 1 --warmup 1 --feed-files 16 --compile-mode none`` | seconds (compiling on the CPU: a minute) |
| ``analyze_store.py --runs 200 --steps 50``   | ``--runs 4 --steps 3``                            | seconds              |
| ``benchmarks/startup.py``                    | ``--no-sweep --repeats 1`` appended               | a minute, not three  |
| ``design.py --sims 2000``                    | ``--sims 5``, one scenario                        | seconds, not minutes |
| ``study_sim.py --sims 300``                  | ``--sims 2``                                      | seconds, not minutes |
| a ``python`` snippet                         | run in this process, in the copy, on its default store; ``images``, ``labels``, ``classes`` defined first (digits test images at 8 px) | the README leaves them to the reader |
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import NO_SERVER_JOBS, ROOT, free_port, make_class_tree, stop_group, write_image

# Commands not run here, each with why. Keep it short.
SKIPPED = {
    r"^pip install": "installs packages: the environment this test runs in is that install",
    r"^python -m pytest": "the test suite itself (this test is part of it)",
    r"^mypy$": "the type check: the test command runs it before this suite",
    r"^bash benchmarks/gpu_check\.sh": "needs a CUDA GPU",
    r"^mlflow server --backend-store-uri sqlite:///mlflow\.db --host 0\.0\.0\.0 |^ray start |"
    r"^MLFLOW_TRACKING_URI=http://<server>:5000 mlflow run \. -e sweep .*-P executor=ray": "the multi-machine recipe: tests/test_distributed.py runs it on one machine (a server, a Ray head and two "
    "workers on loopback, each `ray start` with its own ports) and kills a worker mid-child",
    r"^python entrypoints/analyze\.py --sweep-run-id <parent run id> --out report$": "tests/test_analysis_e2e.py runs it as written on its shared multi-seed sweep",
    r"^python benchmarks/(contention|snapshot_upload)\.py$": "minutes of timed epochs and uploads: tests/test_threads.py runs both end to end with small arguments",
    r"^export MLFLOW_AUTH_|^export MLFLOW_FLASK_|^mlflow server --app-name basic-auth|^export MLFLOW_TRACKING_URI=\S+ "
    r"MLFLOW_TRACKING_USERNAME": "the team server needs a PostgreSQL role and database `mlflow` "
    "(tests/test_bad_input.py runs the same basic-auth server over SQLite)",
}

TRAIN_SMALL = "-P epochs=1 -P image_size=8 -P n=1"
PREAMBLE = """
from resnorm.data import load_data as _load
_data = _load("digits", 8)
images = _data.test.images[:4].float() / 255
labels = _data.test.labels[:4].tolist()
classes = list(_data.classes)
"""


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(kind, command) for every command of the README's bash blocks and every python block."""
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang == "python":
            commands.append(("python", body))
        elif lang == "bash":
            joined = re.sub(r"\\\n\s*", " ", body)
            for line in joined.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line and not line.startswith("#"):
                    commands += [("bash", part.strip()) for part in line.split(" && ")]
    return commands


class Readme:
    """The project copy, the two stores and what earlier commands left (ids, ports, processes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.project = folder / "project"
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in files:
            if (ROOT / name).is_file():
                (self.project / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, self.project / name)
        self.birds = folder / "birds"
        for split, k in (("train", 12), ("val", 3), ("test", 3)):  # 36 training images: batch 32 fits
            make_class_tree(self.birds / split, per_class=k, seed=len(split))
        self.bird = folder / "bird.jpg"
        write_image(self.bird, (50, 60, 230), fmt="JPEG")
        self.birds_store = f"sqlite:///{folder / 'birds.db'}"
        self.store = None  # the last sweep's store: its analysis and re-run follow it
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.env.update(
            PYTHONPATH=str(self.project), RESNORM_HOME=str(folder / "home"), PYTHONUNBUFFERED="1", **NO_SERVER_JOBS
        )

    def run(self, command: str, store: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(self.env, **({"MLFLOW_TRACKING_URI": store} if store else {}))
        proc = subprocess.run(
            ["bash", "-c", command], cwd=self.project, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    def start(self, command: str, log: str) -> subprocess.Popen:
        out = open(self.folder / log, "w")
        return subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.project,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def client(self, store: str | None = None):
        from mlflow.tracking import MlflowClient

        return MlflowClient(store or f"sqlite:///{self.project / 'mlflow.db'}")


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc)


def wait_until_it_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {log.read_text()[-3000:]}")


def birds(r: Readme, cmd: str) -> str:
    return cmd.replace("/data/birds", str(r.birds)).replace("/tmp/bird.jpg", str(r.bird))


def small(cmd: str) -> str:
    return re.sub(r" -P (image_size|epochs|n)=\d+", "", cmd) + " " + TRAIN_SMALL


def run_train(r: Readme, cmd: str) -> None:
    store = r.birds_store if "/data/birds" in cmd else None
    r.run(small(birds(r, cmd)), store)


def run_sweep(r: Readme, cmd: str) -> None:
    r.store = r.birds_store if "/data/birds" in cmd else None
    grid = "-P preset=custom -P grid=norm=bn,gn" if "preset=study" in cmd else "-P preset=custom -P grid=norm=bn,ln"
    if "seeds=auto" in cmd:  # its first round trains 3 seeds of each configuration
        grid = "-P preset=custom -P grid=norm=bn"
    cmd = re.sub(r"-P preset=study ?", "", cmd)
    if "--run-id <parent run id>" in cmd:
        client = r.client(r.store)
        (parent,) = client.search_runs(
            [client.get_experiment_by_name("resnorm").experiment_id], filter_string="tags.`resnorm.sweep` = 'true'"
        )
        before = len(client.search_runs([parent.info.experiment_id]))
        cmd = cmd.replace("<parent run id>", parent.info.run_id)
        r.run(small(birds(r, cmd)) + " " + grid, r.store)
        assert len(client.search_runs([parent.info.experiment_id])) == before, "the re-run trained its children again"
        return
    r.run(small(birds(r, cmd)) + " " + grid, r.store)


def run_analyze(r: Readme, cmd: str) -> None:
    proc = r.run(cmd, r.store)
    assert "report:" in proc.stdout and (r.project / "report" / "report.html").is_file()


def run_gradcam(r: Readme, cmd: str) -> None:
    store = r.birds_store if "/data/birds" in cmd else None
    r.run(birds(r, cmd).replace("models:/resnorm-gn/3", "models:/resnorm-gn/2"), store)
    if "--output grid.png" in cmd:
        assert (r.project / "grid.png").stat().st_size > 0


def run_python(r: Readme, snippet: str) -> None:
    """The snippet as written, in this process (a new interpreter would spend its time importing), in
    the project copy with the README's default store, as a reader's Python there would be."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(r.project)
        for var in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(var)
        mp.setenv("RESNORM_HOME", r.env["RESNORM_HOME"])
        mlflow.set_tracking_uri(None)  # MLflow's default: ./mlflow.db of the working directory
        try:
            exec(compile(PREAMBLE + "\n" + snippet, "README.md", "exec"), {})
        finally:
            mlflow.set_tracking_uri(None)


def run_ui(r: Readme, cmd: str) -> None:
    port = free_port()
    proc = r.start(f"{cmd} --port {port}", "ui.log")
    try:
        wait_until_it_answers(f"http://127.0.0.1:{port}/", proc, r.folder / "ui.log")
    finally:
        stop(proc)


def run_download(r: Readme, cmd: str) -> None:
    r.run(cmd)
    assert (r.project / "resnorm-bn" / "MLmodel").is_file()
    assert (r.project / "resnorm-bn" / "code" / "resnorm_serving.py").is_file()


def run_serve(r: Readme, cmd: str) -> None:
    r.serve_port = free_port()
    r.serving = r.start(cmd.rstrip("& ").replace("--port 5001", f"--port {r.serve_port}"), "serve.log")
    wait_until_it_answers(f"http://127.0.0.1:{r.serve_port}/ping", r.serving, r.folder / "serve.log")


def run_curl(r: Readme, cmd: str) -> None:
    try:
        batch = json.dumps({"inputs": [[[[0.5] * 8] * 8]]})
        cmd = re.sub(r"-d '.*'", f"-d '{batch}'", cmd).replace(":5001/", f":{r.serve_port}/")
        answer = json.loads(r.run(cmd).stdout)
        (prediction,) = answer["predictions"]
        assert prediction["label"] in prediction["probabilities"]
    finally:
        stop(r.serving)


def run_server(r: Readme, cmd: str) -> None:
    r.server_port = free_port()
    r.server = r.start(cmd.rstrip("& ").replace("--port 5000", f"--port {r.server_port}"), "server.log")
    wait_until_it_answers(f"http://127.0.0.1:{r.server_port}/health", r.server, r.folder / "server.log")


def run_train_on_server(r: Readme, cmd: str) -> None:
    try:
        r.run(small(cmd.replace("127.0.0.1:5000", f"127.0.0.1:{r.server_port}")))
    finally:
        stop(r.server)


def interrupted_run(r: Readme) -> str:
    """A training killed (SIGKILL) after its first snapshot: the id of a run to resume."""
    home = Path(r.env["RESNORM_HOME"]) / "runs"
    before = set(home.glob("*")) if home.exists() else set()
    proc = r.start(f"{sys.executable} entrypoints/train.py --norm bn --epochs 8 --image-size 8 --n 1", "killed.log")
    deadline = time.monotonic() + 300
    while not [p for p in home.glob("*/*.pt") if p.parent not in before]:
        assert proc.poll() is None and time.monotonic() < deadline, (r.folder / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (folder,) = [p.parent for p in home.glob("*/*.pt") if p.parent not in before]
    return folder.name


def run_resume(r: Readme, cmd: str) -> None:
    run_id = interrupted_run(r)
    r.run(cmd.replace("<run_id>", run_id))
    assert r.client().get_run(run_id).info.status == "FINISHED"


def run_bench(r: Readme, cmd: str) -> None:
    if cmd.startswith("mlflow run"):
        cmd += " -P norms=bn -P batch_sizes=8 -P image_size=8 -P steps=1 -P warmup=1 -P feed_files=0 -P modes=plain"
    else:
        cmd = (
            cmd.replace("--image-size 32", "--image-size 8")
            .replace("--steps 10", "--steps 1")
            .replace("--warmup 3", "--warmup 1")
        ) + " --feed-files 16 --compile-mode none"
    assert "logged to run" in r.run(cmd).stdout


def run_analyze_store(r: Readme, cmd: str) -> None:
    r.run(cmd.replace("--runs 200", "--runs 4").replace("--steps 50", "--steps 3"))


def run_ruff(r: Readme, cmd: str) -> None:
    r.run(cmd)  # the lint and the format check of the test command, on the copy of the project


def run_design(r: Readme, cmd: str) -> None:
    table = r.run(cmd.replace("--sims 2000", "--sims 5") + " --only 'claim 6, cosine'").stdout
    assert "claim 6, cosine 0.3 points better" in table and "trainings to decide, mean" in table


def run_study_sim(r: Readme, cmd: str) -> None:
    table = r.run(cmd.replace("--sims 300", "--sims 2")).stdout
    assert "trainings, mean" in table and "claims 1, 2, 3, 6 all decided %" in table


def run_startup(r: Readme, cmd: str) -> None:
    table = r.run(cmd + " --no-sweep --repeats 1").stdout
    assert "| pt2 export (torch.export) |" in table and "x the floor |" in table


# (pattern of a command as the README writes it, how it is run here); the first match runs it.
RUNNERS = [
    (r"^mlflow run \. -e train -P resume=<run_id> ", run_resume),
    (r"^python entrypoints/train\.py --resume <run_id>$", run_resume),
    (r"^MLFLOW_TRACKING_URI=http://127\.0\.0\.1:5000 mlflow run \. -e train ", run_train_on_server),
    (r"^mlflow run \. -e train ", run_train),
    (r"^mlflow run \. -e sweep ", run_sweep),
    (r"^mlflow run \. -e analyze ", run_analyze),
    (r"^mlflow run \. -e gradcam |^python entrypoints/gradcam\.py ", run_gradcam),
    (r"^mlflow ui --backend-store-uri sqlite:///mlflow\.db$", run_ui),
    (r"^mlflow artifacts download -u models:/resnorm-bn@champion -d resnorm-bn$", run_download),
    (r"^mlflow models serve .*&$", run_serve),
    (r"^curl -s http://127\.0\.0\.1:5001/invocations ", run_curl),
    (r"^mlflow server --backend-store-uri sqlite:///mlflow\.db .*&$", run_server),
    (r"^mlflow run \. -e bench |^python entrypoints/bench\.py ", run_bench),
    (r"^python benchmarks/analyze_store\.py ", run_analyze_store),
    (r"^python benchmarks/startup\.py$", run_startup),
    (r"^python benchmarks/design\.py ", run_design),
    (r"^python benchmarks/study_sim\.py ", run_study_sim),
    (r"^ruff (check|format --check) \.$", run_ruff),
]


def how_to_run(kind: str, command: str):
    """The runner of a command, None when SKIPPED says why not, or a failure naming it."""
    if kind == "python":
        return run_python
    if any(re.search(pattern, command) for pattern in SKIPPED):
        return None
    for pattern, runner in RUNNERS:
        if re.search(pattern, command):
            return runner
    pytest.fail(f"README.md has a command this test does not know how to run; add it to RUNNERS or SKIPPED: {command}")


def manual() -> list[Path]:
    """README.md, then the manual's pages in the order its table lists them."""
    readme = (ROOT / "README.md").read_text()
    pages = re.findall(r"\]\((docs/[\w-]+\.md)\)", readme.split("## The manual", 1)[1])
    return [ROOT / "README.md", *(ROOT / p for p in dict.fromkeys(pages))]


def manual_text() -> str:
    return "\n".join(path.read_text() for path in manual())


def test_every_readme_command_is_known_to_this_test():
    """Cheap and first: every command of the README and the manual has a runner or a reason to skip it."""
    assert {p.name for p in manual()[1:]} == {p.name for p in (ROOT / "docs").glob("*.md")}, "a page not in the map"
    commands = readme_commands(manual_text())
    assert any(kind == "python" for kind, _ in commands) and len(commands) > 10
    for kind, command in commands:
        how_to_run(kind, command)


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    r = Readme(tmp_path)
    ran = []
    for kind, command in readme_commands(manual_text()):
        runner = how_to_run(kind, command)
        if runner is not None:
            runner(r, command)
            ran.append(command)
    assert len(ran) >= 20, ran


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_of_the_manual_resolves():
    broken = []
    for path in manual():
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.is_file():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and anchor not in anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken


def test_no_dated_figure_stands_outside_the_benchmarks_page():
    """A figure in prose goes stale: measured figures live in docs/benchmarks.md, with their date."""
    dated = [
        f"{path.name}: {line.strip()[:100]}"
        for path in manual()
        if path.name != "benchmarks.md"
        for line in path.read_text().splitlines()
        if re.search(r"\b20\d\d-\d\d\b", line)
    ]
    assert not dated, dated


def test_the_readme_and_every_page_keep_their_size():
    assert len((ROOT / "README.md").read_text().splitlines()) < 220
    for page in (ROOT / "docs").glob("*.md"):
        assert len(page.read_text().splitlines()) < 300, page.name
