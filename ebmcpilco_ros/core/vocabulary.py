"""The learning loop's vocabulary, in one place: what made a trial, what the optimiser is asked,
what a controller is, and the long stages of the computation.

Each is a string enum whose values are the strings the payloads carry (docs/NODES.md: they do
not change), so a member equals its string, `json.dumps` writes it as that string, and a
received string converts with `TrialKind(text)`. How they relate is written here, as
properties, rather than in lookup tables where they are used:

    Phase.EXPLORE  -> a ControllerKind.FEEDBACK_PLAN -> a TrialKind.ILQR trial
    Phase.POLICY   -> a ControllerKind.SQUASHED_RBF  -> a TrialKind.POLICY trial
    (the Learner)  -> a ControllerKind.RANDOM        -> a TrialKind.RANDOM trial
"""
from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A string enum that is its value wherever a string is: printed, formatted, compared and
    hashed (Enum hashes its members by name: `"policy" in {TrialKind.POLICY: ...}` would be
    False, and the wall-time dicts mix both), in every Python version."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __hash__(self) -> int:
        return str.__hash__(self)


class TrialKind(_Word):
    """What produced a trial: a trial record's and a trial summary's `kind`. An optimisation's
    result (a controller update's `phase`) is named by the kind of trial it runs."""

    RANDOM = "random"   # u ~ U(-u_max, u_max): the first trials
    ILQR = "ilqr"       # a GP-iLQR plan with feedback and exploration noise (EB-MC-PILCO)
    POLICY = "policy"   # the learned squashed RBF policy


class Phase(_Word):
    """What the Learner asks the optimiser for (an optimisation request's `phase`)."""

    EXPLORE = "explore"  # a GP-iLQR plan with exploration noise
    POLICY = "policy"    # MC-PILCO, pretrained on an iLQR plan first where asked

    @property
    def trial_kind(self) -> TrialKind:
        """The kind of trial the answer runs."""
        return TrialKind.ILQR if self is Phase.EXPLORE else TrialKind.POLICY


class ControllerKind(_Word):
    """A controller payload's `kind` (core/controllers.py)."""

    RANDOM = "random"
    FEEDBACK_PLAN = "feedback_plan"
    SQUASHED_RBF = "squashed_rbf"

    @property
    def trial_kind(self) -> TrialKind:
        """The kind of trial this controller runs."""
        return {ControllerKind.RANDOM: TrialKind.RANDOM,
                ControllerKind.FEEDBACK_PLAN: TrialKind.ILQR,
                ControllerKind.SQUASHED_RBF: TrialKind.POLICY}[self]


class Stage(_Word):
    """The long computations of a round, in order: progress events' `stage`, and the keys of a
    trial summary's wall times (with `model` for the fit as the Learner times it)."""

    FIT = "fit"            # the GP hyperparameter fit (model_learning)
    ILQR = "ilqr"          # GP-iLQR through the posterior mean
    PRETRAIN = "pretrain"  # the policy fitted to an iLQR plan
    POLICY = "policy"      # MC-PILCO's Monte Carlo policy gradient


class WarmStart(_Word):
    """Which policy an EB-MC-PILCO policy trial's optimisation started from (a trial's
    info.warm_start)."""

    PRETRAINED = "pretrained"  # the candidate pretrained on this trial's iLQR plan
    KEPT = "kept"              # the policy of the trial before


class StopReason(_Word):
    """Why a policy optimisation ended (OptimizationResult.stop_reason, a trial's
    info.stop_reason)."""

    MONITOR = "monitor"                       # the monitor's schedule ran out (MC-PILCO)
    PREDICTED_SUCCESS = "predicted_success"   # optimizer.success_stop: the model predicts success
    STALLED = "stalled"                       # optimizer.success_stalls: stalled, no success
    NO_BETTER_CHECK = "no_better_check"       # optimizer.success_patience: checks stopped rising
    DIVERGED = "diverged"                     # the divergence guard's restore after the last stage
    MAX_STEPS = "max_steps"                   # the step limit
