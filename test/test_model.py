"""Speed-integration model: learns the plant, analytic A and B, payload round trip."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core import cartpole
from ebmcpilco_ros.core.config import PlantConfig
from ebmcpilco_ros.core.model import SpeedIntegrationModel, check_model_dict, gp_inputs

from helpers import fitted_model, random_trials


def test_model_predicts_held_out_transitions():
    model = fitted_model(count=3, seed=0)
    test = random_trials(1, seed=42)[0]
    x, u = test.true_states[:-1], test.inputs
    pred = model.mean_step(x, u)
    true_next = cartpole.step(x, u, PlantConfig())
    err = np.abs(pred - true_next)
    scale = np.abs(true_next - x).mean(0)
    # velocity increments are learned to well under their typical size
    assert err[:, 1].mean() < 0.3 * scale[1] and err[:, 3].mean() < 0.3 * scale[3]
    assert model.num_data == 180 and all(gp.size <= 180 for gp in model.gps)


def test_linearization_matches_finite_differences_and_autodiff():
    model = fitted_model(count=2, seed=1)
    rng = np.random.default_rng(3)
    X = rng.normal(0, [0.3, 1.0, 2.0, 2.0], size=(6, 4))
    U = rng.uniform(-8, 8, size=(6, 1))
    A, B = model.linearize(X, U)
    h = 1e-6
    for t in range(len(X)):
        fd_A = np.stack([(model.mean_step(X[t] + h * e, U[t, 0])
                          - model.mean_step(X[t] - h * e, U[t, 0])) / (2 * h)
                         for e in np.eye(4)], axis=1)
        fd_B = (model.mean_step(X[t], U[t, 0] + h) - model.mean_step(X[t], U[t, 0] - h)) / (2 * h)
        np.testing.assert_allclose(A[t], fd_A, atol=1e-6)
        np.testing.assert_allclose(B[t, :, 0], fd_B, atol=1e-6)

    # autograd through an independent torch transcription of f(x, u): agreement to 1e-8
    def f_torch(xu):
        x, u = xu[:4], xu[4]
        th = x[2]
        xin = torch.stack([x[0], x[1], x[3], torch.sin(th), torch.cos(th), u])
        deltas = []
        for gp in model.gps:
            d = (xin - torch.as_tensor(gp.support)) / torch.as_tensor(gp.kernel.lengthscales)
            k = gp.kernel.signal_std**2 * torch.exp(-0.5 * (d * d).sum(-1))
            deltas.append(k @ torch.as_tensor(gp.alpha))
        dt = model.dt
        return torch.stack([x[0] + dt * x[1] + 0.5 * dt * deltas[0], x[1] + deltas[0],
                            x[2] + dt * x[3] + 0.5 * dt * deltas[1], x[3] + deltas[1]])
    for t in range(len(X)):
        J = torch.autograd.functional.jacobian(
            f_torch, torch.as_tensor(np.concatenate([X[t], U[t]]))).numpy()
        np.testing.assert_allclose(A[t], J[:, :4], atol=1e-8, rtol=0)
        np.testing.assert_allclose(B[t, :, 0], J[:, 4], atol=1e-8, rtol=0)


def test_single_state_step_is_the_batched_mean_step():
    """iLQR's step (one state, written without the batch axis for speed) is mean_step's maths:
    each state of a batch, angles of every quadrant and inputs at the limits included."""
    model = fitted_model(count=2, seed=4)
    rng = np.random.default_rng(5)
    X = rng.normal(0, [0.3, 1.0, 4.0, 3.0], size=(40, 4))
    U = rng.uniform(-10, 10, size=40)
    U[:2] = [-10.0, 10.0]
    batched = model.mean_step(X, U)
    for x, u, want in zip(X, U, batched):
        got = model.step(x, np.array([u]))
        assert got.shape == (4,)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        for i, gp in enumerate(model.gps):
            xin = gp_inputs(x, u)
            assert gp.mean_at(xin) == pytest.approx(float(gp.mean(xin[None, :])[0]), abs=1e-12)


def test_gp_inputs_layout():
    x = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(gp_inputs(x, np.array([5.0]))[0],
                               [0.1, 0.2, 0.4, np.sin(0.3), np.cos(0.3), 5.0])


def test_model_payload_round_trip_rebuilds_identical_predictions():
    model = fitted_model(count=1, seed=2)
    back = SpeedIntegrationModel.from_dict(model.to_dict())
    x = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_allclose(back.mean_step(x, np.ones(5)), model.mean_step(x, np.ones(5)),
                               rtol=1e-10)
    assert back.version == model.version
    var = model.predictive_variance(x, np.ones(5))
    assert var.shape == (5, 2) and np.all(var >= 0)


def _payload(edit):
    import json

    from ebmcpilco_ros.nodes.codec import to_json

    data = json.loads(to_json(fitted_model(count=1, seed=2).to_dict()))
    edit(data)
    return json.loads(to_json(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["gps"][0]["support"][3].__setitem__(2, float("nan")),
     r"gps\[0\]: field 'support'\[3\]\[2\] is not finite"),
    (lambda d: d["gps"][1]["targets"].__setitem__(0, float("inf")),
     r"gps\[1\]: field 'targets'\[0\] is not finite"),
    (lambda d: d["gps"][1]["hyperparameters"].__setitem__("noise_std", float("nan")),
     r"gps\[1\]: field 'noise_std' must be a finite number > 0"),
    (lambda d: d["gps"][0]["hyperparameters"]["lengthscales"].__setitem__(0, -1.0),
     r"gps\[0\]: field 'lengthscales' must be > 0"),
    (lambda d: d["gps"][0]["hyperparameters"].__setitem__("lengthscales", [1.0] * 5),
     r"gps\[0\]: field 'lengthscales' must have shape \(6,\)"),
    (lambda d: d["gps"][0].__setitem__("targets", d["gps"][0]["targets"][:-1]),
     r"gps\[0\]: field 'targets' must have shape"),
    (lambda d: d["gps"][0].__setitem__("support", [row[:5] for row in d["gps"][0]["support"]]),
     r"gps\[0\]: field 'support' must be \(N >= 1, 6\)"),
    (lambda d: d.__setitem__("gps", d["gps"][:1]), "must list 2 GPs"),
    (lambda d: d.__setitem__("dt", float("nan")), "field 'dt' must be a finite number > 0"),
    (lambda d: d.__setitem__("version", "1"), "field 'version' must be an integer"),
    (lambda d: d.__setitem__("format", "ebmcpilco.model/0"), "not a model of format"),
])
def test_model_payloads_that_are_malformed_or_not_finite_are_refused(edit, message):
    data = _payload(edit)
    with pytest.raises(ValueError, match=message):
        check_model_dict(data)
    with pytest.raises(ValueError, match=message):
        SpeedIntegrationModel.from_dict(data)
