"""Each trial's Ray Train worker placement group, released as soon as the trial ends.

A trial's Train controller reserves a placement group for its workers and removes it when the run
ends normally. When Tune stops a trial (ASHA) or the trial fails, the controller goes away with the
trial and the group stays reserved: Ray Train's own cleaner watches the controller through the State
API, which only answers when Ray runs with its dashboard. A leftover group holds CPUs that the next
trial's evaluation waits for. So the trial reports its group's id with every evaluation it forwards
to Tune (``TrainGroupReporter``), and the sweep driver removes the group of every ended trial
(``ReleaseEndedTrialGroups`` as trials end, ``release_groups`` once more after the sweep). Reads and
removals go through the GCS, which needs no dashboard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

import ray
from ray import tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

log = logging.getLogger(__name__)

GROUP_KEY = "train_placement_group"  # the hex id of the trial's Train worker group, in its reports


class TrainGroupReporter(WorkerGroupCallback):
    """A Train callback (runs in the controller) that puts the worker group's placement-group id into
    ``extra``: the dict the trial's Tune reporter adds to every report it forwards to Tune (both
    callbacks travel to the controller in one ``RunConfig``, so they share it)."""

    def __init__(self, extra: MutableMapping[str, Any]) -> None:
        self.extra = extra

    def after_worker_group_start(self, worker_group: Any) -> None:
        try:
            group = worker_group.get_worker_group_state().placement_group_handle.placement_group
            self.extra[GROUP_KEY] = group.id.hex()
        except Exception as err:  # Ray's internal worker-group API: never fail a trial over it
            log.warning("could not read the Train worker group's placement group: %s", err)


def release_groups(group_ids: Iterable[str | None]) -> list[str]:
    """Remove the placement groups among ``group_ids`` that are still reserved; returns those removed."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    for group_id in sorted({g for g in group_ids if g}):
        # One group's entry, not the whole table: a sweep's table grows with its trials.
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
        entry = ray.util.placement_group_table(group)
        if not entry or entry.get("state") in (None, "REMOVED"):
            continue
        remove_placement_group(group)
        removed.append(group_id)
    return removed


class ReleaseEndedTrialGroups(tune.Callback):
    """Tune callback in the sweep driver: the Train worker group of a trial that ended (finished,
    stopped early or failed) is removed if it is still reserved."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    @staticmethod
    def _release(trial: Any) -> None:
        if removed := release_groups([(trial.last_result or {}).get(GROUP_KEY)]):
            log.info("trial %s ended: released its Train worker group %s", trial.trial_id, removed[0])


__all__ = ["GROUP_KEY", "ReleaseEndedTrialGroups", "TrainGroupReporter", "release_groups"]
