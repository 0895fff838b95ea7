"""Small shared builders for tests: real models fitted on real simulated trials."""
from __future__ import annotations

import numpy as np

from ebmcpilco_ros.core.config import ExperimentConfig, ModelConfig
from ebmcpilco_ros.core.model import SpeedIntegrationModel
from ebmcpilco_ros.core.controllers import RandomController
from ebmcpilco_ros.core.systems import SimulatedCartPole


def random_trials(count: int = 2, seed: int = 0, config: ExperimentConfig | None = None):
    cfg = config or ExperimentConfig()
    sim = SimulatedCartPole(cfg.plant, np.random.default_rng(seed))
    ctrl = RandomController(cfg.plant.u_max, seed=seed + 100)
    return [sim.run(ctrl, kind="random", index=i) for i in range(count)]


def fitted_model(count: int = 2, seed: int = 0, **model_overrides) -> SpeedIntegrationModel:
    cfg = ExperimentConfig()
    return SpeedIntegrationModel.fit(random_trials(count, seed), cfg.plant.control_period,
                                     ModelConfig(**model_overrides), version=1)
