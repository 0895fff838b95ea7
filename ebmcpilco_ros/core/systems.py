"""The `System` protocol the Learner runs trials on, and the in-process simulated cart-pole."""
from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from . import cartpole
from .cartpole import STATE_DIM
from .config import PlantConfig
from .controllers import Controller, trial_steps
from .trial import Trial
from .vocabulary import TrialKind


class System(Protocol):
    """Something trials run on: the simulated plant here, the node graph or a rig elsewhere."""

    def run(self, controller: Controller, kind: str, index: int) -> Trial: ...


class SimulatedCartPole:
    """The benchmark cart-pole integrated in-process: ZOH input, Gaussian sensor noise.

    Starts each trial from x0 ~ N(0, initial_state_std^2 I) (pole down) and runs it for
    controllers.trial_steps, or until the controller has `finished`. The controller sees the
    noisy measurement; the trial keeps the noise-free trajectory for evaluation only.
    """

    def __init__(self, plant: PlantConfig, rng: np.random.Generator) -> None:
        self.plant = plant
        self.rng = rng

    def run(self, controller: Controller, kind: str = TrialKind.POLICY, index: int = 0) -> Trial:
        plant, rng = self.plant, self.rng
        steps = trial_steps(controller, plant.steps)
        x = rng.normal(0.0, plant.initial_state_std, size=STATE_DIM)
        true = np.empty((steps + 1, STATE_DIM))
        measured = np.empty((steps + 1, STATE_DIM))
        inputs = np.empty(steps)
        controller.reset()
        started = time.perf_counter()
        for t in range(steps + 1):
            true[t] = x
            measured[t] = x + rng.normal(0.0, plant.sensor_noise_std, size=STATE_DIM)
            if t == steps:
                break
            if controller.finished(t, measured[t]):
                steps = t
                break
            u = float(np.clip(controller(t, measured[t]), -plant.u_max, plant.u_max))
            inputs[t] = u
            x = cartpole.step(x, u, plant)
        times = np.arange(steps + 1) * plant.control_period
        return Trial(states=measured[:steps + 1], inputs=inputs[:steps], times=times, kind=kind,
                     index=index, true_states=true[:steps + 1],
                     meta={"system": "simulated", "wall_s": time.perf_counter() - started})
