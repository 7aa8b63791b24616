"""The model registry's ``champion`` alias: on the version with the best validation accuracy, moved
only when a new version beats it, also when runs of one norm finish at the same moment."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm import names


def champion_val_accuracy(client: MlflowClient, name: str) -> float | None:
    """``best_val_accuracy`` of the run behind ``name@champion``; None when no version holds it."""
    try:
        current = client.get_model_version_by_alias(name, names.CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    value = client.get_run(current.run_id).data.metrics.get(names.final_metric("val", "accuracy"))
    return None if value is None else float(value)


def promote_if_better(client: MlflowClient, name: str, version: int, val_accuracy: float) -> bool:
    """Point ``champion`` at ``version`` when no version holds it or its val accuracy is lower."""
    current = champion_val_accuracy(client, name)
    if current is not None and val_accuracy <= current:
        return False
    _set_champion(client, name, version)
    # Runs of one norm finishing together (a parallel sweep) can both read the old champion and
    # both move the alias, the worse one last. Every mover re-reads the versions after its move and
    # settles on the best of them, so the last one to do so leaves the alias on the best version.
    best = best_version(client, name)
    if best is not None and best != version:
        _set_champion(client, name, version=best)
    return best in (None, version)


def _set_champion(client: MlflowClient, name: str, version: int) -> None:
    """Point ``champion`` at ``version``. Runs that set it on a model without one at the same moment
    all insert the alias, and the store's unique key refuses all but the first (SQLite and
    PostgreSQL alike); once the alias exists, setting it again is an update."""
    try:
        client.set_registered_model_alias(name, names.CHAMPION, str(version))
    except MlflowException:
        if not _has_champion(client, name):
            raise
        client.set_registered_model_alias(name, names.CHAMPION, str(version))


def _has_champion(client: MlflowClient, name: str) -> bool:
    try:
        client.get_model_version_by_alias(name, names.CHAMPION)
    except MlflowException:
        return False
    return True


def best_version(client: MlflowClient, name: str) -> int | None:
    """The version with the highest recorded val accuracy (the earliest of equals), or None."""
    key = names.final_metric("val", "accuracy")
    scored = [
        (-float(v.tags[key]), int(v.version)) for v in client.search_model_versions(f"name = '{name}'") if key in v.tags
    ]
    return min(scored)[1] if scored else None
