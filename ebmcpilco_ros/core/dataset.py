"""The trial dataset: every trial a run has recorded, the data the GP model is fitted on.

mbrl-lib's replay buffer -> model -> agent, with whole trials as the unit: the in-process
learner (learner.LocalModelLearning) keeps one per run, and the model-learning node builds one
for each fit from the records the fit request names. The model turns it into its training data
(model.training_data: the speed-integration GP's inputs and velocity increments); trials cut
short by a fault, or with no transition, stay in the dataset (they happened) and are not fitted.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from .trial import Trial


class TrialDataset:
    """Trials in the order they were recorded."""

    def __init__(self, trials: Iterable[Trial] = ()) -> None:
        self._trials = list(trials)

    def add(self, trial: Trial) -> None:
        self._trials.append(trial)

    def __len__(self) -> int:
        return len(self._trials)

    def __iter__(self) -> Iterator[Trial]:
        return iter(self._trials)

    @property
    def trials(self) -> tuple[Trial, ...]:
        return tuple(self._trials)

    def usable(self) -> list[Trial]:
        """The trials a model is fitted on: not failed, at least one transition."""
        return [t for t in self._trials if not t.failed and t.steps > 0]

    @property
    def transitions(self) -> int:
        """Transitions (x_t, u_t, x_{t+1}) of the usable trials: the model's data points."""
        return sum(t.steps for t in self.usable())

    def state_dict(self) -> dict[str, Any]:
        """The trials as their records (checkpoints)."""
        return {"trials": [t.to_dict() for t in self._trials]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._trials = [Trial.from_dict(t) for t in state["trials"]]
