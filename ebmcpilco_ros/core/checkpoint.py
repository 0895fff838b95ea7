"""Checkpoints of a learning run at a trial boundary, so a crashed run resumes where it was.

A checkpoint (format `ebmcpilco.checkpoint/1`, plain JSON) holds everything the Learner's loop
carries from one trial to the next: the trial summaries, the optimisation costs, the trials of the
dataset, the persistent policy and the last iLQR plan, the model and controller versions, and the
state of every random generator (numpy `bit_generator.state`, torch generator states). Restoring
it and running on gives the same trials as a run that was never interrupted (same seed).

The encoders here turn that state into JSON-ready values (core/jsonio.py) and back, exactly:
floats round-trip through `repr`, float32 tensors through float64 lists.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig
from .jsonio import plain

CHECKPOINT_FORMAT = "ebmcpilco.checkpoint/1"
CHECKPOINT_FILE = "checkpoint.json"
# Settings a resumed run may change: where and how fast it computes, not what it computes.
RESUME_MAY_DIFFER = frozenset({"optimizer.device", "optimizer.threads", "optimizer.fit_threads",
                               "optimizer.particle_workers"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: another format, another configuration, unreadable."""


# -- random generators ---------------------------------------------------------------------------
def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return plain(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    kind = rng.bit_generator.__class__.__name__
    if state.get("bit_generator") != kind:
        raise CheckpointError(f"checkpoint rng is {state.get('bit_generator')!r}, this run's "
                              f"is {kind}")
    rng.bit_generator.state = state


def torch_rng_state(state: torch.Tensor | None = None) -> str:
    """torch's global generator state (or `state`), base64 of its bytes."""
    raw = torch.get_rng_state() if state is None else state
    return base64.b64encode(raw.cpu().numpy().tobytes()).decode("ascii")


def torch_rng_from(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# -- tensors and plans ---------------------------------------------------------------------------
def module_state(module: torch.nn.Module) -> dict[str, Any]:
    return {name: plain(t) for name, t in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, state: dict[str, Any], what: str) -> None:
    """Exactly the saved values, in the module's own dtype; CheckpointError on a shape that
    differs (a checkpoint of another policy size)."""
    current = module.state_dict()
    if set(state) != set(current):
        raise CheckpointError(f"{what}: checkpoint has {sorted(state)}, expected "
                              f"{sorted(current)}")
    loaded = {}
    for name, tensor in current.items():
        value = torch.tensor(state[name], dtype=torch.float64).to(tensor.dtype)
        if value.shape != tensor.shape:
            raise CheckpointError(f"{what}: {name} has shape {tuple(value.shape)} in the "
                                  f"checkpoint, {tuple(tensor.shape)} in this run")
        loaded[name] = value
    module.load_state_dict(loaded)


def plan_to_dict(plan: Any) -> dict[str, Any] | None:
    """An ilqr.ILQRPlan as JSON-ready values (None stays None)."""
    return None if plan is None else plain({f.name: getattr(plan, f.name) for f in fields(plan)})


def plan_from_dict(data: dict[str, Any] | None) -> Any:
    from .ilqr import ILQRPlan

    if data is None:
        return None
    arrays = {k: np.asarray(data[k], dtype=float) for k in ("X", "U", "k", "K", "cost_history")}
    return ILQRPlan(**arrays, cost=float(data["cost"]), iterations=int(data["iterations"]),
                    converged=bool(data["converged"]), u_max=float(data["u_max"]),
                    mu=float(data["mu"]), message=str(data["message"]),
                    stages=tuple(tuple(s) for s in data.get("stages", ())))


# -- the checkpoint ------------------------------------------------------------------------------
def config_differences(saved: dict[str, Any], config: ExperimentConfig) -> list[str]:
    """`section.key: saved -> now` for each setting of `config` that differs from a checkpoint's
    (those in RESUME_MAY_DIFFER aside)."""
    now = plain(config.to_dict())
    saved = plain(saved)
    out = []
    for section in sorted(set(now) | set(saved)):
        a, b = saved.get(section) or {}, now.get(section) or {}
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name not in RESUME_MAY_DIFFER and a.get(key) != b.get(key):
                out.append(f"{name}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now")
    return out


def check_checkpoint(data: Any, config: ExperimentConfig | None = None,
                     source: str = "checkpoint") -> dict[str, Any]:
    """`data` if it is a checkpoint this run can resume; CheckpointError naming what is wrong."""
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{source} is not of format {CHECKPOINT_FORMAT}: {got!r}")
    for key, kind in (("learner", dict), ("config", dict), ("trials_completed", int)):
        _need(data, key, kind, source)
    for key, kind in (("summaries", list), ("opt_costs", list), ("totals", dict),
                      ("rng", dict)):
        _need(data["learner"], key, kind, source, "learner.")
    for key in ("system", "models", "optimizer"):  # a component's state, null where stateless
        if key not in data or not (data[key] is None or isinstance(data[key], dict)):
            raise CheckpointError(f"{source} ({CHECKPOINT_FORMAT}): field {key!r} missing or "
                                  f"not an object or null")
    if config is not None:
        differ = config_differences(data["config"], config)
        if differ:
            raise CheckpointError(f"{source} is of another configuration: " + "; ".join(differ))
    return data


def _need(obj: dict[str, Any], key: str, kind: type, source: str, where: str = "") -> None:
    """CheckpointError naming the field unless obj[key] is a `kind` (an int: >= 0)."""
    value = obj.get(key)
    if key not in obj or not isinstance(value, kind) or (
            kind is int and (isinstance(value, bool) or value < 0)):
        what = "an integer >= 0" if kind is int else f"a {kind.__name__}"
        raise CheckpointError(f"{source} ({CHECKPOINT_FORMAT}): field {where}{key!r} missing "
                              f"or not {what}")


def load_checkpoint(path: str | Path, config: ExperimentConfig | None = None
                    ) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from exc
    return check_checkpoint(data, config, source=str(path))


def summary_to_dict(summary: Any) -> dict[str, Any]:
    return plain(asdict(summary))
