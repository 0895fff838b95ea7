"""The plant: energy conservation, friction dissipation, trial recording and success."""
import numpy as np
import pytest

from ebmcpilco_ros.core import cartpole
from ebmcpilco_ros.core.config import PlantConfig, SuccessConfig
from ebmcpilco_ros.core.controllers import RandomController
from ebmcpilco_ros.core.systems import SimulatedCartPole
from ebmcpilco_ros.core.trial import Trial, final_window_extremes, swing_up_success


def test_energy_is_conserved_without_friction_and_input():
    plant = PlantConfig(friction=0.0)
    x = np.array([0.0, 0.5, 2.5, -1.0])  # a large swing with the cart moving
    e0 = cartpole.energy(x, plant)
    for _ in range(200):  # 10 s
        x = cartpole.step(x, 0.0, plant)
    assert abs(cartpole.energy(x, plant) - e0) < 1e-6 * max(1.0, abs(e0))


def test_friction_dissipates_energy_and_force_adds_it():
    plant = PlantConfig()
    x0 = np.array([0.0, 1.0, 1.0, 0.0])
    x = x0
    for _ in range(40):
        x = cartpole.step(x, 0.0, plant)
    assert cartpole.energy(x, plant) < cartpole.energy(x0, plant) - 1e-3
    x = np.zeros(4)
    for _ in range(10):
        x = cartpole.step(x, 10.0, plant)
    assert x[0] > 0.05 and cartpole.energy(x, plant) > cartpole.energy(np.zeros(4), plant)


def test_batched_step_matches_single():
    """One state takes a float path (the real-time plants' speed); it is the batched RK4
    operation for operation, so the two agree to the bit, at any step size and substep count."""
    plant = PlantConfig()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)) * [1.0, 2.0, 3.0, 8.0]
    U = rng.uniform(-10, 10, size=500)
    for dt, substeps in ((None, None), (0.002, 2), (0.001, 1), (0.05, 3)):
        batched = cartpole.step(X, U, plant, dt=dt, substeps=substeps)
        single = np.array([cartpole.step(X[i], U[i], plant, dt=dt, substeps=substeps)
                           for i in range(len(X))])
        np.testing.assert_array_equal(single, batched)
        assert single.shape == batched.shape and single.dtype == np.float64


def test_simulated_trial_shape_noise_and_limits():
    plant = PlantConfig()
    sim = SimulatedCartPole(plant, np.random.default_rng(1))

    class Pushy:
        def reset(self): pass
        def finished(self, step, state): return False
        def __call__(self, step, state): return 1e3  # far beyond u_max
    trial = sim.run(Pushy(), kind="policy", index=3)
    assert trial.states.shape == (61, 4) and trial.inputs.shape == (60,)
    assert np.allclose(np.diff(trial.times), plant.control_period)
    assert np.all(trial.inputs == plant.u_max)
    noise = trial.states - trial.true_states
    assert 0.005 < noise.std() < 0.02
    random = sim.run(RandomController(plant.u_max, seed=2), kind="random")
    assert np.all(np.abs(random.inputs) <= plant.u_max) and random.inputs.std() > 3


def test_success_criterion_last_second_either_direction():
    crit = SuccessConfig()
    times = np.arange(61) * 0.05
    up = np.zeros((61, 4))
    up[:, 2] = np.linspace(0, np.pi, 61)
    up[40:, 2] = np.pi + 0.05
    trial = Trial(states=up, inputs=np.zeros(60), times=times, true_states=up)
    assert swing_up_success(trial, crit)
    mirrored = Trial(states=-up, inputs=np.zeros(60), times=times, true_states=-up)
    assert swing_up_success(mirrored, crit)
    late = up.copy()
    late[45, 2] = np.pi - 0.2  # one sample in the window out of tolerance
    assert not swing_up_success(Trial(states=late, inputs=np.zeros(60), times=times,
                                      true_states=late), crit)
    off_track = up.copy()
    off_track[50:, 0] = 0.15
    assert not swing_up_success(Trial(states=off_track, inputs=np.zeros(60), times=times,
                                      true_states=off_track), crit)
    # the final window's extremes say which tolerance a miss missed (times >= 2 s: 40-60)
    assert final_window_extremes(Trial(states=off_track, inputs=np.zeros(60), times=times,
                                       true_states=off_track), crit) == pytest.approx(
        {"max_abs_p": 0.15, "max_angle_error": 0.05})
    assert final_window_extremes(Trial(states=late, inputs=np.zeros(60), times=times,
                                       true_states=late), crit) == pytest.approx(
        {"max_abs_p": 0.0, "max_angle_error": 0.2})


def test_trial_round_trips_through_dict():
    rng = np.random.default_rng(0)
    t = Trial(states=rng.normal(size=(4, 4)), inputs=rng.normal(size=3), times=np.arange(4.0),
              kind="random", index=2, true_states=rng.normal(size=(4, 4)), meta={"a": 1})
    back = Trial.from_dict(t.to_dict())
    np.testing.assert_array_equal(back.states, t.states)
    np.testing.assert_array_equal(back.true_states, t.true_states)
    assert (back.kind, back.index, back.meta) == ("random", 2, {"a": 1})


def test_hanging_turns_is_the_nearest_multiple_of_two_pi():
    two_pi = 2 * np.pi
    for turns in (-3, -1, 0, 1, 12):
        for offset in (-3.0, -0.01, 0.0, 0.01, 3.0):
            assert cartpole.hanging_turns(turns * two_pi + offset) == pytest.approx(turns * two_pi)
