"""`model_learning`: keeps the dataset of trial records and fits the GP model on request.

Trial records (core.trial.Trial.to_dict) arrive on ebmcpilco/trial_records, from the execution
node and, when this node reports some missing, again from the trial manager; each is kept once,
keyed `<run_id>/<index>/<request_id>`. A fit request names exactly the trials to fit on: missing
ones are reported (event "missing"), otherwise the speed-integration model (core.model) is fitted
in a worker thread and published latched on ebmcpilco/model with a version number.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from std_msgs.msg import String

from ..core.cancel import Cancelled
from ..core.model import SpeedIntegrationModel
from ..core.trial import TRIAL_FORMAT, Trial
from .common import (ANSWER_EVENTS, FIT_REQUEST_FORMAT, FIT_REQUEST_TOPIC, MODEL_EVENTS_TOPIC,
                     MODEL_TOPIC, TRIAL_RECORDS_TOPIC, Answers, Diagnostics,
                     GraphNode, Heartbeat, decode, encode, event, latched_qos,
                     preload_lazy_imports, reliable_qos, run_node, set_torch_threads)
from .hygiene import Refusals, record_label
from .payloads import FitRequest, ModelUpdate
from .params import declare_config

NAME = "model_learning"


def trial_key(trial: Trial) -> str:
    """A trial's identity across the graph: the run it belongs to, its index there and the
    request that ran it (a resumed run runs an interrupted trial's index again: the first
    attempt's record, stored here already, must not stand for the second)."""
    key = f"{trial.meta.get('run_id', '')}/{trial.index}"
    request = trial.meta.get("request_id")
    return f"{key}/{request}" if request else key


class ModelLearningNode(GraphNode):
    """The dataset and the GP fit; one fit at a time, never on the executor."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, ["plant", "model", "optimizer"], ["nodes"])
        set_torch_threads(config.optimizer.threads)
        preload_lazy_imports()
        self.config = config
        self.names = parts["nodes"]
        self.lock = threading.Lock()
        self.trials: dict[str, Trial] = {}
        self.duplicates = 0
        self.refusals = Refusals(self.get_logger().warning, ("records", "fit_requests"))
        self.version = 0
        self.busy: str | None = None
        self.stopping = threading.Event()  # shutdown: the fit checks it every iteration
        self.worker: threading.Thread | None = None
        self.last_fit_s = 0.0
        depth = self.names.record_depth
        self.model_pub = self.create_publisher(String, MODEL_TOPIC, latched_qos())
        self.events_pub = self.create_publisher(String, MODEL_EVENTS_TOPIC, reliable_qos(depth))
        self.create_subscription(String, TRIAL_RECORDS_TOPIC, self._on_record,
                                 reliable_qos(depth))
        self.create_subscription(String, FIT_REQUEST_TOPIC, self._on_fit_request,
                                 reliable_qos(depth))
        self.answers = Answers(depth)
        self.heartbeat = Heartbeat(self, NAME, self.names,
                                   lambda: {"busy": self.busy, "trials": len(self.trials),
                                            "model_version": self.version})
        self.diagnostics = Diagnostics(self, self.names, self._report)

    def _send_event(self, request_id: str, kind: str, **fields: Any) -> None:
        payload = event(NAME, request_id, kind, **fields)
        if kind in ANSWER_EVENTS:
            self.answers.record(request_id, payload)
        self.events_pub.publish(encode(payload))

    def _on_record(self, msg: String) -> None:
        """Keep a record once; a malformed or non-finite one (Trial.from_dict) is refused:
        counted, logged, never stored, so no fit can use it (a request naming it gets
        "missing")."""
        try:
            record = decode(msg, TRIAL_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("records", f"a trial record on {TRIAL_RECORDS_TOPIC}", exc)
            return
        try:
            trial = Trial.from_dict(record)
        except (ValueError, KeyError, TypeError) as exc:
            self.refusals.refuse("records", f"trial record {record_label(record)} on "
                                            f"{TRIAL_RECORDS_TOPIC}", exc)
            return
        key = trial_key(trial)
        with self.lock:
            if key in self.trials:
                self.duplicates += 1
                return
            self.trials[key] = trial
        self.get_logger().info(f"trial {key} stored ({trial.steps} steps"
                               f"{', failed: not used for fitting' if trial.failed else ''})")

    def _on_fit_request(self, msg: String) -> None:
        try:
            req = FitRequest.from_dict(decode(msg, FIT_REQUEST_FORMAT))
            request_id, keys = req.request_id, req.trials
        except ValueError as exc:
            self.refusals.refuse("fit_requests", f"a fit request on {FIT_REQUEST_TOPIC}", exc)
            return
        answered = self.answers.get(request_id)
        if answered is not None:  # the same request again: the same answer
            self.events_pub.publish(encode(answered))
            return
        with self.lock:
            if self.stopping.is_set():
                reason = f"{NAME} is shutting down"
            elif self.busy is not None:
                reason = f"busy fitting for request {self.busy}"
            elif not keys:
                reason = "the request names no trials"
            else:
                reason = None
            missing = [k for k in keys if k not in self.trials]
            if reason is None and not missing:
                self.busy = request_id
                trials = [self.trials[k] for k in keys]
        if reason is not None:
            self._send_event(request_id, "refused", reason=reason)
        elif missing:
            self._send_event(request_id, "missing", missing=missing)
        else:
            with self.lock:  # started under the lock: close() joins whatever runs
                if self.stopping.is_set():
                    self.busy = None
                else:
                    self._send_event(request_id, "accepted", trials=len(trials))
                    self.worker = threading.Thread(target=self._fit,
                                                   args=(request_id, req, keys, trials),
                                                   name="fit", daemon=True)
                    self.worker.start()
                    return
            self._send_event(request_id, "refused", reason=f"{NAME} is shutting down")

    def _fit(self, request_id: str, req: FitRequest, keys: list[str],
             trials: list[Trial]) -> None:
        try:
            started = time.perf_counter()
            version = self.version + 1
            model = SpeedIntegrationModel.fit(trials, self.config.plant.control_period,
                                              self.config.model, version=version,
                                              should_stop=self.stopping.is_set)
            self.last_fit_s = time.perf_counter() - started
            self.version = version
            self.model_pub.publish(encode(ModelUpdate(
                request_id=request_id, run_id=req.run_id, version=version, trials=keys,
                points=[gp.size for gp in model.gps], fit_s=self.last_fit_s,
                model=model.to_dict()).to_dict()))
            self.get_logger().info(f"model v{version} fitted on {len(keys)} trials in "
                                   f"{self.last_fit_s:.1f} s")
        except Cancelled as exc:
            self.get_logger().info(f"fit {request_id} {exc} ({NAME} shutting down)")
            self._send_event(request_id, "failed", reason=f"{exc} ({NAME} shutting down)",
                             cancelled=True)
        except Exception as exc:  # noqa: BLE001 - logged here and reported to the requester
            reason = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"fit {request_id} on {len(keys)} trials failed: {reason}")
            self._send_event(request_id, "failed", reason=reason)
        finally:
            with self.lock:
                self.busy = None

    def _report(self) -> tuple[str, str, dict[str, Any]]:
        with self.lock:
            stored, busy = len(self.trials), self.busy
        return "ok", (f"fitting for {busy}" if busy else "idle"), {
            "trials": stored, "duplicates_ignored": self.duplicates,
            "model_version": self.version, "last_fit_s": round(self.last_fit_s, 3),
            **self.refusals.values()}

    def close(self) -> None:
        """Stop the running fit (it checks the flag at every iteration) and wait for it."""
        with self.lock:
            self.stopping.set()
            worker = self.worker
        self.join_worker(worker, "the fit worker")


def main(args: Sequence[str] | None = None) -> int:
    return run_node(ModelLearningNode, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
