"""Config validation: bad values are refused with a message naming the parameter and range."""
import pytest

from ebmcpilco_ros.core.config import (ConfigError, ExperimentConfig, config_from_dict,
                                       find_config, load_config)


def test_paper_config_loads_with_benchmark_values():
    cfg = load_config(find_config("paper_cartpole"))
    assert cfg.plant.cart_mass == 0.5 and cfg.plant.pole_mass == 0.5
    assert cfg.plant.pole_length == 0.5 and cfg.plant.friction == 0.1
    assert cfg.plant.u_max == 10.0 and cfg.plant.control_period == 0.05
    assert cfg.plant.steps == 60
    assert cfg.optimizer.particles == 400 and cfg.optimizer.horizon == 60
    assert cfg.policy.num_basis == 200


@pytest.mark.parametrize("section, name, value, fragment", [
    ("plant", "cart_mass", -0.5, "plant.cart_mass = -0.5: must be in (0.0, inf]"),
    ("plant", "pole_mass", 0.0, "plant.pole_mass"),
    ("plant", "u_max", 0.0, "plant.u_max = 0.0: must be in (0.0, inf]"),
    ("plant", "u_max", -3, "plant.u_max"),
    ("optimizer", "horizon", 0, "optimizer.horizon = 0: must be in [1, 100000]"),
    ("optimizer", "particles", 0, "optimizer.particles"),
    ("optimizer", "dtype", "float16", "optimizer.dtype = 'float16': must be one of"),
    ("learner", "algorithm", "pilco", "learner.algorithm = 'pilco'"),
    ("optimizer", "backend", "gpu", "optimizer.backend = 'gpu': must be one of"),
    ("plant", "friction", float("nan"), "plant.friction"),
])
def test_bad_values_are_rejected_naming_the_parameter(section, name, value, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {name: value}})
    assert fragment in str(err.value)


def test_unknown_parameter_and_section_and_type_errors():
    with pytest.raises(ConfigError, match="plant.mass: unknown parameter"):
        config_from_dict({"plant": {"mass": 1.0}})
    with pytest.raises(ConfigError, match="unknown config section 'plnat'"):
        config_from_dict({"plnat": {}})
    with pytest.raises(ConfigError, match="optimizer.particles = 'many': must be a number"):
        config_from_dict({"optimizer": {"particles": "many"}})
    with pytest.raises(ConfigError, match="optimizer.particles = 1.5: must be an integer"):
        config_from_dict({"optimizer": {"particles": 1.5}})


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="optimizer.lr_min"):
        config_from_dict({"optimizer": {"lr": 0.001, "lr_min": 0.01}})
    with pytest.raises(ConfigError, match="plant.trial_duration"):
        config_from_dict({"plant": {"trial_duration": 0.01, "control_period": 0.05}})
    with pytest.raises(ConfigError, match="optimizer.device"):
        config_from_dict({"optimizer": {"device": "tpu"}})
    with pytest.raises(ConfigError, match="optimizer.backend = 'native': 'native' runs float32"):
        config_from_dict({"optimizer": {"backend": "native", "dtype": "float64"}})
    with pytest.raises(ConfigError, match="optimizer.backend = 'native'"):
        config_from_dict({"optimizer": {"backend": "native", "device": "cuda"}})
    # a rollout longer than the trial is the whole trial (a shorter trial_duration override
    # must not break a config that sets it)
    long = config_from_dict({"exploration": {"rollout_duration": 3.5}})
    assert long.exploration.rollout_steps(long.plant) == long.plant.steps
    with pytest.raises(ConfigError, match="exploration.rollout_duration = -1.0"):
        config_from_dict({"exploration": {"rollout_duration": -1.0}})
    with pytest.raises(ConfigError, match=r"exploration.max_deviation = -0.5.*in \[0.0, inf\]"):
        config_from_dict({"exploration": {"max_deviation": -0.5}})


def test_ros_parameter_file_layout_and_overrides():
    data = {"/**": {"ros__parameters": {"plant": {"u_max": 5}, "hardware": {"port": "x"}}}}
    cfg = config_from_dict(data)
    assert cfg.plant.u_max == 5.0 and isinstance(cfg.plant.u_max, float)
    cfg2 = cfg.replace(learner={"seed": 7})
    assert cfg2.learner.seed == 7 and cfg.learner.seed == 1
    with pytest.raises(ConfigError, match="learner.seed"):
        ExperimentConfig().replace(learner={"seed": -1})
