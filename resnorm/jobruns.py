"""The run a job is handed: a run id checked before MLflow sees it, the run a resume continues, and
whether the run named by ``MLFLOW_RUN_ID`` - which `mlflow run` sets for the job it starts, and which a
notebook's or a parent script's active run leaks into every process started from it (MLflow issue 15713) -
is one made for this job. A job takes and ends only a run made for it; when it fails before opening its
run, that run is ended with the reason (``fail_pending_run``)."""

from __future__ import annotations

import re
import traceback

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from resnorm import names
from resnorm.config import FIELD_TYPES, TrainConfig
from resnorm.errors import ConfigError
from resnorm.tracking import FAILED, FINISHED, KILLED, RUNNING, server_answers, unquote_param

# MLflow's own rule for a run id (mlflow.utils.validation): checked here so that a malformed one is
# one line naming it, not MLflow's raw error.
RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")


def check_run_id(run_id: str, what: str) -> None:
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"{what} {run_id!r} is not a run id (letters, digits, _ and -, such as 0123456789abcdef0123456789abcdef)"
        )


def check_resumable_run(run_id: str) -> Run:
    """The run to resume, which must exist, not deleted, in this store."""
    check_run_id(run_id, "resume")
    uri = mlflow.get_tracking_uri()
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"resume {run_id!r}: the tracking store {uri!r} has no such run; set MLFLOW_TRACKING_URI to the store "
            "it was started in"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(
            f"resume {run_id!r}: the run is deleted in {uri!r}; restore it first (`mlflow runs restore --run-id "
            f"{run_id}`) or start a new run"
        )
    return run


TRAIN_ENTRY_POINTS = ("train", "main")  # the MLproject's names of the train entry point


def check_own_run(run_id: str, cfg: TrainConfig | None) -> None:
    """Refuse a run made for this training (``MLFLOW_RUN_ID``) that is not one: FINISHED, made for
    another entry point or by hand (a variable inherited from a parent process, MLflow issue
    15713), or holding the params of another configuration than ``cfg`` (None: not compared). Training
    into it would rewrite a finished run, or make one run two configurations."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    entry = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    unset = "unset MLFLOW_RUN_ID (it is inherited from the process that started this one) to train into a new run"
    if run.info.status == FINISHED:
        raise ConfigError(f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, which has FINISHED; {unset}")
    if entry not in TRAIN_ENTRY_POINTS:
        made = f"for the {entry!r} entry point" if entry else "outside `mlflow run` and sweeps"
        raise ConfigError(
            f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, made {made}, not for a training; {unset}"
        )
    params = {k: unquote_param(v) for k, v in run.data.params.items()}
    if cfg is not None and set(FIELD_TYPES) <= set(params):
        try:
            theirs = TrainConfig.from_params(params)
        except ConfigError:
            theirs = None
        if theirs != cfg:
            raise ConfigError(
                f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r}, whose params describe another "
                f"configuration than {cfg.run_name()!r}; {unset}"
            )


def check_own_sweep_run(run_id: str) -> None:
    """Refuse a run made for this sweep (``MLFLOW_RUN_ID``) that is not one: a sweep's parent (a
    re-run continues it) or a fresh run that `mlflow run -e sweep` made. A training run, finished or
    not, or a run of another entry point would become a sweep's parent."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    if run.data.tags.get(names.TAG_SWEEP) == "true":
        return
    entry = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    if entry == "sweep" and run.info.status == RUNNING and names.TAG_DEVICE not in run.data.tags:
        return
    made = f"for the {entry!r} entry point" if entry else "outside `mlflow run`"
    raise ConfigError(
        f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r} ({run.info.status}, made {made}), "
        "which is not a sweep; unset MLFLOW_RUN_ID (it is inherited from the process that started this "
        "one) to start a new sweep, or name a sweep's parent run to continue it"
    )


# What a job writes on the run it takes (a training's device, a sweep's mark, an analysis's sweep): a run that
# carries one was taken by a job already, whatever made it.
TAKEN = (names.TAG_DEVICE, names.TAG_SWEEP, names.TAG_ANALYSIS_OF)


def made_for(run: Run, entry: str) -> bool:
    """Whether ``run`` is one made for a job of the entry point ``entry`` and not yet taken: RUNNING, tagged
    with that entry point (as `mlflow run -e ENTRY` and a sweep tag theirs) and carrying nothing a job
    writes on its run. A notebook's run, another entry point's, or one a job has taken is not."""
    entries = TRAIN_ENTRY_POINTS if entry in TRAIN_ENTRY_POINTS else (entry,)
    return (
        run.info.status == RUNNING
        and run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT) in entries
        and not any(t in run.data.tags for t in TAKEN)
    )


def check_own_job_run(run_id: str, entry: str) -> None:
    """Refuse a run made for this job (``MLFLOW_RUN_ID``) that is not one made for the ``entry`` entry point
    (``made_for``): a notebook's run or a sweep's parent inherited from the process that started this one
    would otherwise be renamed, written into and ended by it."""
    run = _existing_run(run_id, "MLFLOW_RUN_ID")
    if made_for(run, entry):
        return
    made = run.data.tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    what = f"made for the {made!r} entry point" if made else "made outside `mlflow run`"
    raise ConfigError(
        f"MLFLOW_RUN_ID={run_id} names run {run.info.run_name!r} ({run.info.status}, {what}), which is not a "
        f"run made for this {entry}; unset MLFLOW_RUN_ID (it is inherited from the process that started this "
        f"one) to let {entry} make its own run"
    )


def _existing_run(run_id: str, what: str) -> Run:
    check_run_id(run_id, what)
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(f"{what}={run_id} names no run in the tracking store {mlflow.get_tracking_uri()!r}") from None


def record_failure(client: MlflowClient, run_id: str, reason: str, error: BaseException | None = None) -> None:
    """The one-line ``reason`` in the run's ``resnorm.error`` tag and, for an error (not an
    interrupt), its full traceback as the ``error/traceback.txt`` artifact."""
    client.set_tag(run_id, names.TAG_ERROR, reason)
    if error is None or isinstance(error, (KeyboardInterrupt, SystemExit)):
        return
    try:
        client.log_text(run_id, "".join(traceback.format_exception(error)), names.TRACEBACK_ARTIFACT)
    except Exception:  # noqa: BLE001 - the reason is in the tag already; the traceback is a bonus
        pass


def fail_pending_run(
    run_id: str,
    reason: str,
    error: BaseException | None = None,
    interrupted: bool = False,
    entry: str | None = None,
) -> None:
    """End ``run_id``, made for this process, FAILED (KILLED when ``interrupted``) with ``reason``, if it is
    still RUNNING. ``entry``: the job's entry point when the run is only named by ``MLFLOW_RUN_ID``, which
    may be inherited: then it is ended only if it was made for that entry point and not yet taken
    (``made_for``); None when the caller made the run for this job (a sweep's worker).

    For errors found before the job opens its run (bad parameters, bad data), so the run made for
    it is not left RUNNING without a word of why; a run the job did not make is never ended.
    """
    if server_answers(mlflow.get_tracking_uri()) is not None:
        return
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status != RUNNING or (entry is not None and not made_for(run, entry)):
        return
    record_failure(client, run_id, reason, error)
    client.set_terminated(run_id, KILLED if interrupted else FAILED)
