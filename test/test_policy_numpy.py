"""The numpy policy (core/policy_numpy.py) and its standalone export: the torch policy's u in
evaluation mode to float64 rounding, a file that runs without torch, payloads refused by name.
No timing assertions: `ebmcpilco bench policy-eval` measures the time."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmcpilco_ros.cli import main
from ebmcpilco_ros.core.config import PolicyConfig
from ebmcpilco_ros.core.controllers import (FeedbackPlan, FeedbackPlanController, PolicyController,
                                            RandomController, controller_from_dict)
from ebmcpilco_ros.core.policy import MAX_EXPONENT, SquashedRBFPolicy
from ebmcpilco_ros.core.policy_numpy import (PolicyParameters, export_policy, export_source,
                                             policy_payload)

# float64 rounding of u: the torch policy forms |x - a|^2 as |x|^2 + |a|^2 - 2 x.a (cancellation)
# and sums up to 200 terms; observed differences are ~1e-13 N for u_max 10 N
ATOL = 1e-11


def _policy(seed, basis=200, u_max=10.0, weight_scale=1.0, spread=0.0):
    """A torch policy; weight_scale > 1 drives u into the squash, spread varies the
    lengthscales and moves the centres off their initial box."""
    gen = torch.Generator().manual_seed(seed)
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=basis), u_max, generator=gen)
    with torch.no_grad():
        policy.weights.mul_(weight_scale)
        policy.log_lengthscales.add_(spread * torch.randn(5, generator=gen, dtype=torch.float64))
        policy.centres.add_(spread * torch.randn(basis, 5, generator=gen, dtype=torch.float64))
    return policy.eval()


def _states(seed, n=400):
    """Swing-up states, angles over several turns either way, a few far from every centre."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, [0.7, 2.0, 1.0, 6.0], size=(n, 4))
    x[:, 2] = rng.uniform(-4 * math.pi, 4 * math.pi, n)
    x[:8, [0, 1, 3]] *= 40.0
    return x


def _features(states):
    th = states[:, 2]
    return np.stack([states[:, 0], states[:, 1], states[:, 3], np.sin(th), np.cos(th)], 1)


def _torch_u(policy, states):
    with torch.no_grad():
        return policy(torch.as_tensor(states)).numpy()


@pytest.mark.parametrize("seed, basis, u_max, weight_scale, spread", [
    (0, 200, 10.0, 1.0, 0.0),     # the paper's size, as initialised
    (1, 200, 10.0, 50.0, 0.1),    # saturated: many states at the squash
    (2, 37, 3.5, 4.0, 1.0),       # another size and u_max, uneven lengthscales
    (3, 1, 10.0, 1.0, 0.3),       # one centre
])
def test_numpy_policy_matches_torch_policy_in_evaluation_mode(seed, basis, u_max, weight_scale,
                                                              spread):
    policy = _policy(seed, basis, u_max, weight_scale, spread)
    params = PolicyParameters.from_dict(
        json.loads(json.dumps(policy.parameters_snapshot(version=seed).to_dict())))
    states = _states(seed)
    expected = _torch_u(policy, states)
    one = np.array([params(x) for x in states])
    np.testing.assert_allclose(one, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(params.evaluate(states), one, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(one, [params(list(x)) for x in states])   # any sequence
    assert np.all(np.abs(one) <= u_max)
    if weight_scale > 10:
        assert np.mean(np.abs(one) > 0.999 * u_max) > 0.1   # the squash is exercised
    # bit for bit the arithmetic trials always used (so learning runs reproduce)
    d = (params.centres[None] - _features(states)[:, None]) / params.lengthscales
    np.testing.assert_array_equal(
        one, [u_max * math.tanh(float(np.exp(-np.einsum("bd,bd->b", di, di)) @ params.weights)
                                / u_max) for di in d])
    # the execution node's controller evaluates exactly this
    ctrl = controller_from_dict(json.loads(json.dumps(PolicyController(params).to_dict())))
    np.testing.assert_array_equal([ctrl(k, x) for k, x in enumerate(states)], one)


def test_angle_features_and_the_exponent_clamp_follow_the_torch_policy():
    policy = _policy(4, 50, 10.0, 2.0, 0.5)
    params = policy.parameters_snapshot()
    x = np.array([0.1, -0.3, 0.4, 1.2])
    turns = np.array([x + [0, 0, 2 * math.pi * k, 0] for k in range(-5, 6)])
    u = [params(s) for s in turns]     # whole turns of the pole change nothing but rounding
    np.testing.assert_allclose(u, u[5], rtol=0, atol=ATOL)
    np.testing.assert_allclose(u, _torch_u(policy, turns), rtol=0, atol=ATOL)
    # theta enters through sin and cos only: theta and -theta differ, pi is upright
    assert abs(params(x) - params(x * [1, 1, -1, 1])) > 1e-6
    # far from every centre: the torch policy clamps each exponent at 78 (for float32's sake),
    # this one does not; both stay below exp(-78) sum |w| ~ 1e-33 N
    far = np.array([[500.0, -300.0, 0.0, 800.0]])
    bound = math.exp(-MAX_EXPONENT) * float(np.abs(params.weights).sum()) * (1 + 1e-9)
    assert abs(float(_torch_u(policy, far)[0])) <= bound
    assert abs(params(far[0])) <= bound and abs(params.evaluate(far)[0]) <= bound
    with pytest.raises(ValueError, match=r"a state is \[p, pdot, theta, thetadot\]"):
        params([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"states must have shape \(M, 4\)"):
        params.evaluate(np.zeros((3, 5)))


def test_controller_module_and_execution_node_import_no_torch():
    code = ("import sys\n"
            "import ebmcpilco_ros.core.controllers, ebmcpilco_ros.core.policy_numpy\n"
            "import ebmcpilco_ros.nodes.policy_execution\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


def _payloads(params):
    policy = params.to_dict()
    controller = PolicyController(params).to_dict()
    update = {"request_id": "r", "version": params.version, "controller": controller}
    return {"policy": policy, "controller": controller, "controller_update": update}


# Run in a fresh interpreter (-I: no PYTHONPATH, no user site), sys.path cut to the exported
# file's folder and numpy's site-packages, and torch and this package made unimportable.
_STANDALONE = r"""
import importlib.abc, json, sys
folder, numpy_site, name = sys.argv[1:4]
sys.path[:] = [folder, numpy_site] + [p for p in sys.path if 'site-packages' not in p]

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split('.')[0] in ('torch', 'ebmcpilco_ros'):
            raise ImportError('standalone test: ' + fullname + ' is not available')
        return None

sys.meta_path.insert(0, Refuse())
module = __import__(name)
states = json.loads(sys.stdin.read())
print(json.dumps({'u': [module.policy(x) for x in states],
                  'batch': module.policy.evaluate(states).tolist(),
                  'version': module.policy.version,
                  'modules': sorted(m for m in sys.modules
                                    if m.split('.')[0] in ('torch', 'ebmcpilco_ros'))}))
"""


def _run_standalone(path, states):
    numpy_site = str(Path(np.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-I", "-c", _STANDALONE, str(path.parent), numpy_site, path.stem],
        input=json.dumps(states.tolist()), capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("kind", ["policy", "controller", "controller_update"])
def test_export_runs_without_torch_and_reproduces_the_policy(tmp_path, kind):
    policy = _policy(5, 200, 10.0, 10.0, 0.3)
    params = policy.parameters_snapshot(version=9)
    source = tmp_path / "controller_v009.json"
    source.write_text(json.dumps(_payloads(params)[kind]))
    out = tmp_path / "rig" / "rig_policy.py"
    out.parent.mkdir()
    assert main(["export-policy", str(source), "--out", str(out)]) == 0
    states = _states(5, 64)
    got = _run_standalone(out, states)
    assert got["modules"] == [] and got["version"] == 9
    expected = [params(x) for x in states]
    assert got["u"] == expected                 # the same code and floats: bit for bit
    np.testing.assert_allclose(got["batch"], expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["u"], _torch_u(policy, states), rtol=0, atol=ATOL)
    # as a command, and exported again from itself: the same file
    run = subprocess.run([sys.executable, str(out), *map(str, states[0])], capture_output=True,
                         text=True, timeout=120, check=True)
    assert float(run.stdout) == expected[0]
    namespace = {"__name__": "again", "__file__": str(out)}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    again = namespace["export_source"](namespace["policy"], str(source), "rig_policy")
    assert again == out.read_text() == export_source(params, str(source), "rig_policy")


def test_other_controllers_and_malformed_payloads_are_refused_by_name(tmp_path, capsys):
    plan = FeedbackPlan(np.zeros((3, 4)), np.zeros(2), np.zeros((2, 4)), np.zeros(2), 5.0)
    for ctrl in (FeedbackPlanController(plan), RandomController(5.0, seed=1)):
        with pytest.raises(ValueError, match=f"of kind '{ctrl.kind}', not a policy"):
            policy_payload(ctrl.to_dict())
    with pytest.raises(ValueError, match="no policy of format ebmcpilco.policy/1"):
        policy_payload({"format": "ebmcpilco.model_update/1"})
    source = tmp_path / "plan.json"
    source.write_text(json.dumps(FeedbackPlanController(plan).to_dict()))
    out = tmp_path / "policy.py"
    assert main(["export-policy", str(source), "--out", str(out)]) == 2
    assert "feedback_plan" in capsys.readouterr().err and not out.exists()


def _edit(key, value):
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize("edit, message", [
    (_edit("format", "ebmcpilco.policy/2"), "policy of format ebmcpilco.policy/1"),
    (_edit("kind", "linear"), "field 'kind' must be 'squashed_rbf'"),
    (_edit("inputs", ["p", "pdot", "theta", "thetadot", "u"]), "field 'inputs' must be"),
    (lambda d: d.pop("weights"), "missing field 'weights'"),
    (lambda d: d["weights"].__setitem__(2, None), r"field 'weights'\[2\] is not finite"),
    (lambda d: d["weights"].__setitem__(2, "x"), "field 'weights' is not an array of numbers"),
    (_edit("weights", []), "at least one basis function"),
    (lambda d: d["centres"].pop(), r"field 'centres' must have shape \(6, 5\)"),
    (lambda d: d["centres"][1].__setitem__(3, float("inf")),
     r"field 'centres'\[1\]\[3\] is not finite"),
    (_edit("lengthscales", [1.0, 1.0, 1.0, 1.0]), r"field 'lengthscales' must have shape \(5,\)"),
    (lambda d: d["lengthscales"].__setitem__(4, -1.0), "field 'lengthscales' must be > 0"),
    (_edit("u_max", 0.0), "field 'u_max' must be a finite number > 0"),
    (_edit("u_max", True), "field 'u_max' must be a finite number > 0"),
    (_edit("version", 1.5), "field 'version' must be an integer"),
])
def test_malformed_policy_payload_is_refused_naming_the_field(tmp_path, edit, message):
    data = json.loads(json.dumps(_policy(6, 6).parameters_snapshot().to_dict()))
    PolicyParameters.from_dict(json.loads(json.dumps(data)))    # the unedited payload is fine
    edit(data)
    with pytest.raises(ValueError, match=message):
        PolicyParameters.from_dict(data)
    with pytest.raises(ValueError, match=message):
        export_policy(data, str(tmp_path / "policy.py"))
    assert not list(tmp_path.iterdir())                    # nothing written


def test_bench_policy_eval_writes_figures_and_agreement(tmp_path, capsys):
    out = tmp_path / "policy_eval.json"
    assert main(["bench", "policy-eval", "--calls", "30", "--repeats", "2",
                 "--set", "policy.num_basis=12", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["path"] for r in data["results"]] == ["numpy_export", "controller", "torch"]
    for row in data["results"]:
        assert 0 < row["median_us"] <= row["p99_us"]
        assert len(row["repeat_medians_us"]) == 2
    assert data["results"][0]["max_abs_diff_vs_torch"] < ATOL
    assert data["settings"]["basis"] == 12 and "load_average" in data["machine"]
    assert "numpy_export" in capsys.readouterr().out
