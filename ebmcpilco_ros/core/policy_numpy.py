"""The squashed RBF policy with numpy alone: what a trial evaluates, and its payload.

    u     = u_max tanh( sum_i w_i phi_i(x^) / u_max )
    phi_i = exp( -sum_d (x^_d - a_i,d)^2 / l_d^2 )
    x^    = [p, pdot, thetadot, sin theta, cos theta]   of the state x = [p, pdot, theta, thetadot]

the policy of core/policy.py (SquashedRBFPolicy, in torch) in evaluation mode (no dropout), to
float64 rounding. The torch policy clamps each exponent at 78 (for float32's sake); this one
does not, so where every centre is that far the two give different u, both below
exp(-78) sum_i |w_i| ~ 1e-33 N. The arithmetic is the one trials always used (bit for bit, so a
learning run reproduces). The payload is `ebmcpilco.policy/1` (PolicyParameters.to_dict), the
JSON the optimisation node publishes inside each controller.

This file imports only numpy and the standard library and nothing else of the package, so that it
can travel alone: `ebmcpilco export-policy CONTROLLER_JSON --out policy.py` writes this source
with one policy's payload appended, a single file a rig PC without torch runs
(`from policy import policy; u = policy([p, pdot, theta, thetadot])`, or
`python policy.py P PDOT THETA THETADOT`). core/policy.py re-exports PolicyParameters.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

import numpy as np

POLICY_FORMAT = "ebmcpilco.policy/1"
POLICY_KIND = "squashed_rbf"
POLICY_INPUTS = ("p", "pdot", "thetadot", "sin_theta", "cos_theta")
STATE_SIZE = 4       # [p, pdot, theta, thetadot]
_CHUNK = 256         # states per block in evaluate(): (256, B, 5) temporaries


class PolicyParameters:
    """A squashed RBF policy as numpy arrays: evaluated here, sent as its payload over ROS.

    weights (B,), centres (B, 5), lengthscales (5,), u_max, version; the arrays are copied
    (float64) at construction. (A plain class, not a dataclass: the exported file must also load
    through exec or a loader that does not register it in sys.modules.)
    """

    __slots__ = ("weights", "centres", "lengthscales", "u_max", "version")

    def __init__(self, weights: Any, centres: Any, lengthscales: Any, u_max: float,
                 version: int = 0) -> None:
        n_in = len(POLICY_INPUTS)
        self.weights = np.array(weights, dtype=np.float64).reshape(-1)
        self.centres = np.array(centres, dtype=np.float64).reshape(len(self.weights), n_in)
        self.lengthscales = np.array(lengthscales, dtype=np.float64).reshape(n_in)
        self.u_max = float(u_max)
        self.version = int(version)

    def __repr__(self) -> str:
        return (f"PolicyParameters(version={self.version}, basis={self.num_basis}, "
                f"u_max={self.u_max:g})")

    @property
    def num_basis(self) -> int:
        return len(self.weights)

    def __call__(self, state: Sequence[float]) -> float:
        """u for one measured state [p, pdot, theta, thetadot] (~15 us for 200 centres)."""
        if len(state) != STATE_SIZE:
            raise ValueError(f"a state is [p, pdot, theta, thetadot], got {len(state)} values")
        th = float(state[2])
        x = np.array((state[0], state[1], state[3], math.sin(th), math.cos(th)))
        d = (self.centres - x) / self.lengthscales
        phi = np.exp(-np.einsum("bd,bd->b", d, d))
        return float(self.u_max * math.tanh(float(phi @ self.weights) / self.u_max))

    def evaluate(self, states: Any) -> np.ndarray:
        """u (M,) for states (M, 4): __call__ row by row, to rounding (sums in another order)."""
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != STATE_SIZE:
            raise ValueError(f"states must have shape (M, {STATE_SIZE}), got {states.shape}")
        th = states[:, 2]
        x = np.stack([states[:, 0], states[:, 1], states[:, 3], np.sin(th), np.cos(th)], 1)
        out = np.empty(len(states))
        for k in range(0, len(states), _CHUNK):
            d = (self.centres - x[k:k + _CHUNK, None, :]) / self.lengthscales
            out[k:k + _CHUNK] = np.exp(-np.einsum("mbd,mbd->mb", d, d)) @ self.weights
        return self.u_max * np.tanh(out / self.u_max)

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "kind": POLICY_KIND, "version": self.version,
                "u_max": self.u_max, "inputs": list(POLICY_INPUTS),
                "weights": self.weights.tolist(), "centres": self.centres.tolist(),
                "lengthscales": self.lengthscales.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyParameters":
        """ValueError naming the field where the payload is malformed or not finite."""
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a policy of format {POLICY_FORMAT}: {got!r}")
        if data.get("kind", POLICY_KIND) != POLICY_KIND:
            raise ValueError(f"policy field 'kind' must be {POLICY_KIND!r}, got "
                             f"{data['kind']!r}")
        if list(data.get("inputs", POLICY_INPUTS)) != list(POLICY_INPUTS):
            raise ValueError(f"policy field 'inputs' must be {list(POLICY_INPUTS)}, got "
                             f"{data['inputs']!r}")
        weights = _finite_array(data, "weights", ndim=1)
        if len(weights) < 1:
            raise ValueError("policy field 'weights' must hold at least one basis function")
        n_in = len(POLICY_INPUTS)
        centres = _finite_array(data, "centres", shape=(len(weights), n_in))
        lengthscales = _finite_array(data, "lengthscales", shape=(n_in,))
        if np.any(lengthscales <= 0):
            raise ValueError("policy field 'lengthscales' must be > 0")
        u_max = data.get("u_max")
        if not _is_number(u_max) or not math.isfinite(u_max) or u_max <= 0:
            raise ValueError(f"field 'u_max' must be a finite number > 0, got {u_max!r}")
        version = data.get("version", 0)
        if not (isinstance(version, (int, np.integer)) and not isinstance(version, bool)):
            raise ValueError(f"policy field 'version' must be an integer, got {version!r}")
        return cls(weights, centres, lengthscales, float(u_max), int(version))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool))


def _finite_array(data: dict, name: str, ndim: int | None = None,
                  shape: tuple[int, ...] | None = None) -> np.ndarray:
    """data[name] as a finite float array of the shape; the messages of core/validate.py."""
    if name not in data:
        raise ValueError(f"missing field {name!r}")
    try:
        value = np.asarray(data[name], dtype=float)  # null (a NaN in JSON) becomes nan
    except (TypeError, ValueError) as exc:
        raise ValueError(f"field {name!r} is not an array of numbers: {exc}") from None
    if shape is not None and value.shape != shape:
        raise ValueError(f"field {name!r} must have shape {shape}, got {value.shape}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"field {name!r} must have {ndim} dimensions, got shape {value.shape}")
    bad = np.argwhere(~np.isfinite(value))
    if len(bad):
        where = "".join(f"[{int(i)}]" for i in bad[0])
        raise ValueError(f"field {name!r}{where} is not finite ({value[tuple(bad[0])]}; "
                         f"{len(bad)} such value{'s' if len(bad) > 1 else ''})")
    return value


def policy_payload(data: Any) -> dict:
    """The policy payload in what a run writes or the optimiser publishes: a policy payload
    itself, a controller payload (`ebmcpilco.controller/1`, kind squashed_rbf), or a controller
    update (a run directory's controllers/controller_vNNN.json). ValueError saying what the data
    is where it holds no policy (an iLQR plan, random exploration, another format)."""
    if isinstance(data, dict) and isinstance(data.get("controller"), dict):
        data = data["controller"]          # a controller update
    if isinstance(data, dict) and data.get("format") == "ebmcpilco.controller/1":
        if data.get("kind") != POLICY_KIND:
            raise ValueError(f"the controller is of kind {str(data.get('kind'))!r}, not a policy "
                             f"({POLICY_KIND!r}): only a learned policy can be exported")
        data = data.get("policy")
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"no policy of format {POLICY_FORMAT} (nor a controller or controller "
                         f"update holding one): got {got!r}")
    return data


# -- the standalone export ------------------------------------------------------------------------

EXPORT_MARKER = "# -- exported policy "


def export_source(params: PolicyParameters, origin: str = "", module: str = "policy") -> str:
    """This module's source with `params` appended as PAYLOAD and `policy`: one file, numpy and
    the standard library only. Floats are written by repr, so they load back bit for bit."""
    with open(__file__, encoding="utf-8") as f:
        lines = f.read().split("\n" + EXPORT_MARKER)[0].rstrip("\n").split("\n")
    while lines and lines[0].startswith("#"):  # an export's header (exporting an export)
        lines.pop(0)
    source = "\n".join(lines)
    header = (f"# Policy version {params.version}, exported by `ebmcpilco export-policy`"
              + (f" from {origin}" if origin else "") + ";\n"
              "# the code is ebmcpilco_ros/core/policy_numpy.py. Needs numpy only. Use:\n"
              f"#     from {module} import policy; u = policy([p, pdot, theta, thetadot])\n"
              f"#     python {module}.py P PDOT THETA THETADOT\n")
    return (header + source + "\n\n\n" + EXPORT_MARKER + "-" * (99 - len(EXPORT_MARKER)) + "\n"
            + "PAYLOAD = " + _literal(params.to_dict()) + "\n"
            + "policy = PolicyParameters.from_dict(PAYLOAD)\n\n"
            + 'if __name__ == "__main__":\n    sys.exit(main(policy))\n')


def export_policy(data: Any, out: str, origin: str = "") -> str:
    """Write the policy in `data` (see policy_payload) as the standalone file `out`, load the
    written file back and check that it gives the payload's u on a few states; the line to
    print. ValueError for data without a valid policy, OSError for the file."""
    import os
    import pathlib

    params = PolicyParameters.from_dict(policy_payload(data))
    path = pathlib.Path(out)
    source = export_source(params, origin, path.stem)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(source, encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "exported_policy"}
    exec(compile(source, str(path), "exec"), namespace)
    states = np.random.default_rng(0).normal(0.0, [0.5, 1.5, 4.0, 6.0], size=(16, 4))
    if [namespace["policy"](x) for x in states] != [params(x) for x in states]:
        tmp.unlink()
        raise ValueError("the written file does not reproduce the policy")  # never expected
    os.replace(tmp, path)
    return (f"wrote {path}: policy version {params.version}, {params.num_basis} centres, "
            f"u_max {params.u_max:g} N (numpy only; checked against the payload)")


def _literal(payload: dict) -> str:
    """The payload as a Python literal, a row of centres per line."""
    def num(x: float) -> str:
        return repr(float(x))

    lines = ["{"]
    for key, value in payload.items():
        if key == "weights":
            lines.append('    "weights": [')
            for k in range(0, len(value), 4):
                lines.append("        " + ", ".join(num(x) for x in value[k:k + 4]) + ",")
            lines.append("    ],")
        elif key == "centres":
            lines.append('    "centres": [')
            lines += ["        [" + ", ".join(num(x) for x in row) + "]," for row in value]
            lines.append("    ],")
        else:
            lines.append(f"    {json.dumps(key)}: {json.dumps(value)},")
    return "\n".join(lines + ["}"])


def main(policy: PolicyParameters, argv: Sequence[str] | None = None) -> int:
    """The exported file as a command: u for the state given as four numbers, or for each line
    of four numbers on stdin with `-`; no arguments: what the policy is."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"squashed RBF policy version {policy.version}: {policy.num_basis} centres, "
              f"u_max {policy.u_max:g} N, state [p, pdot, theta, thetadot]")
        return 0
    lines = sys.stdin if args == ["-"] else [" ".join(args)]
    for line in lines:
        if line.strip():
            state = [float(v) for v in line.replace(",", " ").split()]
            print(repr(policy(state)))
    return 0
