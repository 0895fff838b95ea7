"""`policy_optimization`: turns a model into the next controller, whatever phase is asked for.

An optimisation request (ebmcpilco/policy_optimization/request) names the model (by the fit
request that produced it; models arrive latched on ebmcpilco/model) and carries the Learner's
OptimizationRequest (phase "policy" for MC-PILCO, "explore" for EB-MC-PILCO's GP-iLQR, ...). A
worker thread runs core.learner.LocalPolicyOptimization.next_controller on it, so any phase the
core knows works here unchanged, and publishes the controller latched on ebmcpilco/controller
with the request id it answers. The torch device is optimizer.device (cpu, cuda, cuda:N).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import numpy as np
import torch
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.cancel import Cancelled
from ..core.checkpoint import rng_state
from ..core.config import SECTIONS, ConfigError, ExperimentConfig
from ..core.learner import LocalPolicyOptimization, OptimizationRequest, policy_step_limit
from ..core.mcpilco import torch_dtype
from ..core.native_rollout import (NativeKernelUnavailable, native_applies, resolve_backend,
                                   unavailable_reason)
from ..core.model import SpeedIntegrationModel
from .names import (CONTROLLER_TOPIC, MODEL_TOPIC, MODEL_UPDATE_FORMAT,
                    OPTIMIZATION_CANCEL_SERVICE, OPTIMIZATION_EVENTS_TOPIC,
                    OPTIMIZATION_REQUEST_FORMAT, OPTIMIZATION_REQUEST_TOPIC)
from .qos import latched_qos, reliable_qos
from .codec import decode, encode
from .requests import RequestServer
from .health import Diagnostics, Heartbeat
from .process import (GraphNode, fit_threads_beside_the_rig, preload_lazy_imports, run_node,
                      set_torch_threads)
from .hygiene import Refusals
from .payloads import (ControllerUpdatePayload, ModelUpdate, OptimizationRequestPayload,
                       request_id_of)
from .params import declare_config

NAME = "policy_optimization"
# Models kept for requests that arrive before or after theirs (the loop uses only the newest).
MODEL_HISTORY = 4


def check_device(config: ExperimentConfig) -> None:
    """optimizer.device must exist on this machine, or the node refuses to start."""
    device = config.optimizer.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"optimizer.device = {device!r}: CUDA is not available here "
                              f"(torch {torch.__version__})")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"optimizer.device = {device!r}: only "
                              f"{torch.cuda.device_count()} CUDA device(s)")


def check_backend(config: ExperimentConfig) -> str:
    """Resolve optimizer.backend at start-up, building the native kernel now, not mid-trial:
    the name of the rollout backend the optimisation will use."""
    opt = config.optimizer
    try:
        return resolve_backend(opt.backend, torch_dtype(opt.dtype), opt.device).name
    except NativeKernelUnavailable as exc:
        raise ConfigError(f"optimizer.backend = {opt.backend!r}: {exc}") from exc


class PolicyOptimizationNode(GraphNode):
    """One optimisation at a time, in a worker thread; the policy persists within a run."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, list(SECTIONS), ["nodes"])
        config = fit_threads_beside_the_rig(config, self.get_logger().info)
        check_device(config)
        self.backend = check_backend(config)
        set_torch_threads(config.optimizer.threads)
        preload_lazy_imports()
        self.config = config
        self.names = parts["nodes"]
        self.models: dict[str, ModelUpdate] = {}  # fit request id -> model update
        self.models_cond = threading.Condition()
        self.refusals = Refusals(self.get_logger().warning, ("models", "requests"))
        self.run_id: str | None = None
        self.optimizer: LocalPolicyOptimization | None = None
        self.version = 0
        self.progress: dict[str, Any] = {}
        self._last_progress = 0.0
        self.step_limit: int | None = None  # MC-PILCO's step limit of the request worked on
        self.iterations = 0  # of the running iLQR or pretraining stage (asked to stop so often)
        depth = self.names.record_depth
        self.controller_pub = self.create_publisher(String, CONTROLLER_TOPIC, latched_qos())
        self.events_pub = self.create_publisher(String, OPTIMIZATION_EVENTS_TOPIC,
                                                reliable_qos(depth))
        self.create_subscription(String, MODEL_TOPIC, self._on_model, latched_qos())
        self.create_subscription(String, OPTIMIZATION_REQUEST_TOPIC, self._on_request,
                                 reliable_qos(depth))
        self.create_service(Trigger, OPTIMIZATION_CANCEL_SERVICE, self._on_cancel)
        self.requests = RequestServer(NAME, self.events_pub.publish, depth,
                                      lambda busy: f"busy with optimisation request {busy}")
        self.cancel = self.requests.cancel   # abort (the trial manager) or shutdown
        self.heartbeat = Heartbeat(self, NAME, self.names,
                                   lambda: {"busy": self.requests.busy,
                                            "device": self.config.optimizer.device,
                                            "backend": self.backend})
        self.diagnostics = Diagnostics(self, self.names, self._report)
        self.get_logger().info(f"optimising on {config.optimizer.device} with the "
                               f"{self.backend} rollout")
        opt = config.optimizer
        if (self.backend == "torch" and opt.backend == "auto"
                and native_applies(torch_dtype(opt.dtype), opt.device)):
            self.get_logger().warning(f"native rollout kernel unavailable, the torch rollout "
                                      f"is 2-3x slower: {unavailable_reason()}")

    def _on_model(self, msg: String) -> None:
        try:
            update = ModelUpdate.from_dict(decode(msg, MODEL_UPDATE_FORMAT))  # malformed or
            key = update.request_id  # not finite: never kept
        except ValueError as exc:
            self.refusals.refuse("models", "a model update", exc)
            return
        with self.models_cond:
            self.models[key] = update
            while len(self.models) > MODEL_HISTORY:
                self.models.pop(next(iter(self.models)))
            self.models_cond.notify_all()

    def _on_request(self, msg: String) -> None:
        try:
            req = decode(msg, OPTIMIZATION_REQUEST_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("requests", "an optimisation request", exc)
            return
        try:
            request_id = request_id_of(req, OPTIMIZATION_REQUEST_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("requests", "an optimisation request", exc)
            return
        if self.requests.answer_again(request_id):
            return
        try:
            req = OptimizationRequestPayload.from_dict(req)
            request = OptimizationRequest(**req.request)
        except (ValueError, KeyError, TypeError) as exc:
            self.refusals.refuse("requests", f"optimisation request {request_id[:80]!r}", exc)
            self.requests.send(request_id, "refused", reason=f"malformed request: {exc}")
            return
        self.requests.start(request_id, lambda: self._optimize(request_id, req, request),
                            "optimize", phase=request.phase)

    def _on_cancel(self, _request: Trigger.Request, response: Trigger.Response
                   ) -> Trigger.Response:
        busy = self.requests.busy
        self.cancel.set()
        response.success = True
        response.message = (f"cancelling optimisation request {busy}" if busy
                            else "no optimisation running")
        return response

    def _wait_model(self, key: str) -> ModelUpdate:
        timeout = self.names.model_wait_timeout
        with self.models_cond:
            if not self.models_cond.wait_for(lambda: key in self.models or self.cancel.is_set(),
                                             timeout):
                raise TimeoutError(f"model of fit request {key} did not arrive within "
                                   f"{timeout} s")
            if self.cancel.is_set():
                raise Cancelled("cancelled while waiting for the model")
            return self.models[key]

    def _optimizer_for(self, run_id: str, seed: int, state: dict[str, Any] | None
                       ) -> LocalPolicyOptimization:
        """The optimiser (policy, plans, rng) of a learning run and session (a resumed run is
        a new session), kept across its trials. Every request after the run's first controller
        carries `optimizer_state`, what the run's last controller update brought: the optimiser
        held here is used only while it is exactly there (same run and session, same version
        and generator state); otherwise (this node restarted, a resumed run) a new one starts
        from the request's state, never from a fresh policy in the middle of a run."""
        held = self.optimizer
        in_sync = (held is not None and run_id == self.run_id
                   and (state is None or (state.get("version") == held.version
                                          and state.get("rng") == rng_state(held.rng))))
        if not in_sync:
            config = self.config.replace(learner={"seed": seed})
            torch.manual_seed(seed)
            optimizer = LocalPolicyOptimization(config, np.random.default_rng([seed, 1]),
                                                on_step=self._on_step,
                                                should_stop=self._should_stop,
                                                on_stage=self._on_stage)
            if state is not None:
                optimizer.load_state_dict(state)
                self.get_logger().info(f"run {run_id}: the optimiser starts from the state "
                                       f"the request carries (controller v{optimizer.version} "
                                       f"of the run)")
            self.optimizer, self.run_id = optimizer, run_id
        return self.optimizer

    def _on_stage(self, stage: str) -> None:
        """Each stage (ilqr, pretrain, policy) as it starts: a progress event at once, with
        the stage's step limit where it has one (pretraining's steps; MC-PILCO's limit, which it
        may stop before)."""
        limit = {"policy": self.step_limit, "pretrain": self.config.pretrain.steps}.get(stage)
        self.progress = {"stage": stage, **({"max_steps": limit} if limit else {})}
        self.iterations = 0
        if self.requests.busy:
            self._last_progress = time.monotonic()
            self.requests.send(self.requests.busy, "progress", **self.progress)

    def _should_stop(self) -> bool:
        """Asked at every iteration of iLQR, pretraining and MC-PILCO. iLQR and pretraining
        report no steps of their own: their progress events (every nodes.progress_period)
        count these questions as steps (MC-PILCO's come from _on_step)."""
        if self.progress.get("stage") in ("ilqr", "pretrain"):
            self.iterations += 1
            now = time.monotonic()
            if now - self._last_progress >= self.names.progress_period and self.requests.busy:
                self._last_progress = now
                self.progress = {**self.progress, "step": self.iterations - 1}
                self.requests.send(self.requests.busy, "progress", **self.progress)
        return self.cancel.is_set()

    def _on_step(self, step: int, grad: Any, monitor: Any) -> None:
        self.progress = {"stage": "policy", "step": step, "cost": float(grad.cost),
                         "lr": monitor.lr, "dropout": monitor.dropout,
                         **({"max_steps": self.step_limit} if self.step_limit else {})}
        now = time.monotonic()
        if now - self._last_progress >= self.names.progress_period and self.requests.busy:
            self._last_progress = now
            self.requests.send(self.requests.busy, "progress", **self.progress)

    def _optimize(self, request_id: str, req: OptimizationRequestPayload,
                  request: OptimizationRequest) -> None:
        try:
            model = SpeedIntegrationModel.from_dict(self._wait_model(req.model_request_id).model)
            optimizer = self._optimizer_for(f"{req.run_id}/{req.session}", req.seed,
                                            req.optimizer_state)
            started = time.perf_counter()
            self.step_limit = policy_step_limit(self.config.optimizer, request.iteration)
            self.progress = {}  # no stage until the optimiser names one (_on_stage)
            update = optimizer.next_controller(model, request)
            self.version += 1
            self.controller_pub.publish(encode(ControllerUpdatePayload(
                request_id=request_id, run_id=req.run_id, version=self.version,
                model_version=model.version, phase=update.phase, opt_steps=update.opt_steps,
                wall_s=update.wall_s, node_wall_s=time.perf_counter() - started,
                costs=update.costs, predicted_states=update.predicted_states, info=update.info,
                optimizer_state=optimizer.state_dict(),
                controller=update.controller.to_dict()).to_dict()))
            self.get_logger().info(f"controller v{self.version} ({update.phase}, "
                                   f"{update.opt_steps} steps) for request {request_id}")
        except Cancelled as exc:
            reason = f"{exc} ({NAME} shutting down)" if self.requests.closing else str(exc)
            self.get_logger().info(f"optimisation {request_id} {reason}")
            self.requests.send(request_id, "failed", reason=reason, cancelled=True)
        except Exception as exc:  # noqa: BLE001 - reported to the requester
            self.get_logger().error(f"optimisation {request_id} failed: {exc!r}")
            self.requests.send(request_id, "failed", reason=f"{type(exc).__name__}: {exc}")

    def _report(self) -> tuple[str, str, dict[str, Any]]:
        busy = self.requests.busy
        return "ok", (f"optimising for {busy}" if busy else "idle"), {
            "device": self.config.optimizer.device, "controller_version": self.version,
            **self.refusals.values(),
            **{f"last_{k}": v for k, v in self.progress.items()}}

    def close(self) -> None:
        """Refuse new requests, cancel the running optimisation (its loops check the flag at
        every iteration) and wait for the worker, so no thread is inside torch at exit."""
        worker = self.requests.close()
        with self.models_cond:
            self.models_cond.notify_all()
        self.join_worker(worker, "the optimisation worker")


def main(args: Sequence[str] | None = None) -> int:
    return run_node(PolicyOptimizationNode, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
