"""The model registry's ``champion`` alias: on the version with the best validation accuracy, moved
only when a new version beats it, also when runs of one norm finish at the same moment.

A version whose run is gone - deleted, or removed for good by ``mlflow gc`` - is no champion: the
next version registered takes the alias from it (saying so), and it is never the best version."""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.errors import warn

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def read_run(client: MlflowClient, run_id: str) -> tuple[Run | None, str | None]:
    """The run and None; or None and why it is gone, in words that say how to get it back, if one can."""
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in _MISSING:
            raise
        return None, "no longer in the tracking store (deleted for good, as `mlflow gc` does)"
    if run.info.lifecycle_stage == "deleted":
        return None, f"deleted (`mlflow runs restore --run-id {run_id}` brings it back)"
    return run, None


def _champion(client: MlflowClient, name: str):
    """The version ``name@champion`` points at, or None (no model, no alias, or its version deleted)."""
    try:
        return client.get_model_version_by_alias(name, names.CHAMPION)
    except MlflowException as e:
        if e.error_code in _MISSING:
            return None
        raise


def promote_if_better(client: MlflowClient, name: str, version: int, val_accuracy: float) -> bool:
    """Point ``champion`` at ``version`` when no version holds it, its val accuracy is lower, or its
    run is gone (one ``warning:`` line then names the version and run it replaces)."""
    current, gone = _champion(client, name), None
    if current is not None:
        run, gone = read_run(client, current.run_id)
        value = None if run is None else run.data.metrics.get(names.final_metric("val", "accuracy"))
        if value is not None and val_accuracy <= float(value):
            return False
    _set_champion(client, name, version)
    # Runs of one norm finishing together (a parallel sweep) can both read the old champion and
    # both move the alias, the worse one last. Every mover re-reads the versions after its move and
    # settles on the best of them, so the last one to do so leaves the alias on the best version.
    best = best_version(client, name)
    if best is not None and best != version:
        _set_champion(client, name, version=best)
    if gone is not None:
        warn(
            f"{name}'s champion was version {current.version}, whose run {current.run_id} is {gone}: it is no "
            f"champion any more; version {best or version} is the champion now"
        )
    return best in (None, version)


def withdraw(client: MlflowClient, name: str, version: int) -> None:
    """Delete ``version`` of ``name`` (its run did not finish: a run that is not FINISHED keeps no
    registered version). If it held ``champion``, which goes with it, the best version left takes it."""
    current = _champion(client, name)
    client.delete_model_version(name, str(version))
    if current is not None and int(current.version) == version and (best := best_version(client, name)) is not None:
        _set_champion(client, name, best)


def _set_champion(client: MlflowClient, name: str, version: int) -> None:
    """Point ``champion`` at ``version``. Runs that set it on a model without one at the same moment
    all insert the alias, and the store's unique key refuses all but the first (SQLite and
    PostgreSQL alike); once the alias exists, setting it again is an update."""
    try:
        client.set_registered_model_alias(name, names.CHAMPION, str(version))
    except MlflowException:
        if _champion(client, name) is None:
            raise
        client.set_registered_model_alias(name, names.CHAMPION, str(version))


def best_version(client: MlflowClient, name: str) -> int | None:
    """The version with the highest recorded val accuracy (the earliest of equals) whose run is not
    gone, or None. Only the runs of versions that score above the one found are read."""
    key = names.final_metric("val", "accuracy")
    scored = sorted(
        (-float(v.tags[key]), int(v.version), v.run_id)
        for v in client.search_model_versions(f"name = '{name}'")
        if key in v.tags and v.run_id is not None
    )
    for _, version, run_id in scored:
        if read_run(client, run_id)[0] is not None:
            return version
    return None
