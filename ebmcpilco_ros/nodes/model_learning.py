"""`model_learning`: keeps the dataset of trial records and fits the GP model on request.

Trial records (core.trial.Trial.to_dict) arrive on ebmcpilco/trial_records, from the execution
node and, when this node reports some missing, again from the trial manager; each is kept once,
keyed `<run_id>/<index>/<request_id>`. A fit request names exactly the trials to fit on: missing
ones are reported (event "missing"), otherwise the speed-integration model (core.model) is fitted
in a worker thread and published latched on ebmcpilco/model with a version number.

A long-lived graph runs many runs, so the records held forget (`RunRecords`): a run's go when
the trial manager's status names it while idle (run_done, failed, aborted, a manual trial's end,
and every later idle status: one missed message is made good by the next), and at most
nodes.model_max_runs runs are held, the least recently used forgotten first (a run whose end was
never heard at all). Forgetting too much costs only a resend: a fit request naming forgotten
trials gets "missing" and the trial manager sends them again (a resumed run, from its checkpoint).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Iterable, Sequence

from std_msgs.msg import String

from ..core.cancel import Cancelled
from ..core.dataset import TrialDataset
from ..core.model import SpeedIntegrationModel
from ..core.trial import Trial
from .names import (FIT_REQUEST_FORMAT, FIT_REQUEST_TOPIC, MODEL_EVENTS_TOPIC,
                    MODEL_TOPIC, STATUS_FORMAT, STATUS_TOPIC, TRIAL_RECORDS_TOPIC)
from .qos import latched_qos, reliable_qos
from .codec import decode, encode
from .requests import Answer, RequestServer
from .health import Diagnostics, Heartbeat
from .process import (GraphNode, fit_threads_beside_the_rig, preload_lazy_imports, run_node,
                      set_torch_threads)
from .hygiene import Refusals, received_trial
from .payloads import FitRequest, ModelUpdate, Status
from .params import declare_config

NAME = "model_learning"
IDLE = "idle"  # the trial manager's state when no run is going on
ENDED_REMEMBERED = 100  # run ids remembered as over, so that their late records are not kept


def trial_key(trial: Trial) -> str:
    """A trial's identity across the graph: the run it belongs to, its index there and the
    request that ran it (a resumed run runs an interrupted trial's index again: the first
    attempt's record, stored here already, must not stand for the second)."""
    key = f"{trial.meta.get('run_id', '')}/{trial.index}"
    request = trial.meta.get("request_id")
    return f"{key}/{request}" if request else key


class RunRecords:
    """The trial records held, by run, least recently used run first; not thread-safe (the
    node holds its lock). A run is *used* when a record of it is stored or a fit names it.
    A fit gets the trials it names as a core.dataset.TrialDataset, as the in-process learner
    fits on its own."""

    def __init__(self, max_runs: int, remember_ended: int = ENDED_REMEMBERED) -> None:
        self.max_runs = max_runs
        self.remember_ended = remember_ended
        self.trials: dict[str, Trial] = {}
        self.runs: OrderedDict[str, set[str]] = OrderedDict()  # run id -> its keys
        self.ended: OrderedDict[str, None] = OrderedDict()     # runs reported over, newest last
        self.duplicates = 0
        self.ignored = 0    # records of a run reported over, arrived after it (not kept)
        self.forgotten = 0  # runs whose records were let go

    def __len__(self) -> int:
        return len(self.trials)

    def add(self, trial: Trial) -> tuple[str, list[tuple[str, int]]]:
        """Keep `trial` unless held already or of a run reported over: ("stored", the runs
        forgotten to make room, with their record counts), ("duplicate", []) or ("ended", [])."""
        run, key = str(trial.meta.get("run_id", "")), trial_key(trial)
        if key in self.trials:
            self.duplicates += 1
            return "duplicate", []
        if run in self.ended:
            self.ignored += 1
            return "ended", []
        self.trials[key] = trial
        self.runs.setdefault(run, set()).add(key)
        return "stored", self._use(run)

    def lookup(self, run: str, keys: Iterable[str]) -> tuple[TrialDataset, list[str]]:
        """The dataset of the trials `keys` name (in that order) and the keys not held, for a
        fit of run `run` (which is going on, whatever was heard of it: its records are kept
        again from here)."""
        self.live(run)
        keys = list(keys)
        return (TrialDataset(self.trials[k] for k in keys if k in self.trials),
                [k for k in keys if k not in self.trials])

    def live(self, run: str) -> None:
        """`run` goes on (started, resumed, fitting): no longer over."""
        self.ended.pop(run, None)
        if run in self.runs:
            self.runs.move_to_end(run)

    def end(self, run: str) -> int:
        """`run` is over: its records go (how many), later ones are not kept until it goes on."""
        self.ended[run] = None
        self.ended.move_to_end(run)
        while len(self.ended) > self.remember_ended:
            self.ended.popitem(last=False)
        return self._forget(run)

    def _use(self, run: str) -> list[tuple[str, int]]:
        self.runs.move_to_end(run)
        evicted = []
        while len(self.runs) > self.max_runs:
            oldest = next(iter(self.runs))
            evicted.append((oldest, self._forget(oldest)))
        return evicted

    def _forget(self, run: str) -> int:
        keys = self.runs.pop(run, set())
        for key in keys:
            del self.trials[key]
        self.forgotten += bool(keys)
        return len(keys)


class ModelLearningNode(GraphNode):
    """The dataset and the GP fit; one fit at a time, never on the executor."""

    def __init__(self, **node_options: Any) -> None:
        super().__init__(NAME, **node_options)  # options: an in-process test's context
        config, parts = declare_config(self, ["plant", "model", "optimizer"], ["nodes"])
        config = fit_threads_beside_the_rig(config, self.get_logger().info)
        # this process only fits, between trials
        set_torch_threads(config.optimizer.fit_threads or config.optimizer.threads)
        preload_lazy_imports()
        self.config = config
        self.names = parts["nodes"]
        self.lock = threading.Lock()
        self.records = RunRecords(self.names.model_max_runs)
        self.refusals = Refusals(self.get_logger().warning,
                                 ("records", "fit_requests", "statuses"))
        self.version = 0
        self.last_fit_s = 0.0
        depth = self.names.record_depth
        self.model_pub = self.create_publisher(String, MODEL_TOPIC, latched_qos())
        self.events_pub = self.create_publisher(String, MODEL_EVENTS_TOPIC, reliable_qos(depth))
        self.create_subscription(String, TRIAL_RECORDS_TOPIC, self._on_record,
                                 reliable_qos(depth))
        self.create_subscription(String, FIT_REQUEST_TOPIC, self._on_fit_request,
                                 reliable_qos(depth))
        # Volatile: a status from before this node started names no run it holds.
        self.create_subscription(String, STATUS_TOPIC, self._on_status,
                                 reliable_qos(self.names.status_depth))
        self.requests = RequestServer(NAME, self.events_pub.publish, depth,
                                      lambda busy: f"busy fitting for request {busy}")
        self.heartbeat = Heartbeat(self, NAME, self.names,
                                   lambda: {"busy": self.requests.busy,
                                            "trials": len(self.records),
                                            "model_version": self.version})
        self.diagnostics = Diagnostics(self, self.names, self._report)

    def _on_record(self, msg: String) -> None:
        """Keep a record once; a malformed or non-finite one (Trial.from_dict) is refused:
        counted, logged, never stored, so no fit can use it (a request naming it gets
        "missing")."""
        received = received_trial(self.refusals, msg, TRIAL_RECORDS_TOPIC)
        if received is None:
            return
        _record, trial = received
        key = trial_key(trial)
        with self.lock:
            outcome, evicted = self.records.add(trial)
        log = self.get_logger().info
        if outcome == "stored":
            log(f"trial {key} stored ({trial.steps} steps"
                f"{', failed: not used for fitting' if trial.failed else ''})")
        elif outcome == "ended":
            log(f"trial {key} not kept: the trial manager reported its run over")
        for run, count in evicted:
            log(f"forgot run {run}'s {count} trial records: more than nodes.model_max_runs = "
                f"{self.names.model_max_runs} runs held (the least recently used goes)")

    def _on_status(self, msg: String) -> None:
        """The trial manager idle names a run that is over: its records go. Any other state
        names a run going on (a resumed one after its end: its records are kept again)."""
        try:
            status = Status.from_dict(decode(msg, STATUS_FORMAT))
        except ValueError as exc:
            self.refusals.refuse("statuses", f"a status on {STATUS_TOPIC}", exc)
            return
        if not status.run_id:
            return
        with self.lock:
            if status.state != IDLE:
                self.records.live(status.run_id)
                return
            count = self.records.end(status.run_id)
        if count:
            self.get_logger().info(f"run {status.run_id} over ({status.event}): forgot its "
                                   f"{count} trial records")

    def _on_fit_request(self, msg: String) -> None:
        try:
            req = FitRequest.from_dict(decode(msg, FIT_REQUEST_FORMAT))
            request_id, keys = req.request_id, req.trials
        except ValueError as exc:
            self.refusals.refuse("fit_requests", f"a fit request on {FIT_REQUEST_TOPIC}", exc)
            return
        if self.requests.answer_again(request_id):
            return
        with self.lock:
            dataset, missing = self.records.lookup(req.run_id, keys)

        def check() -> Answer | None:
            if not keys:
                return "refused", {"reason": "the request names no trials"}
            return ("missing", {"missing": missing}) if missing else None
        self.requests.start(request_id, lambda: self._fit(request_id, req, keys, dataset), "fit",
                            check, trials=len(dataset))

    def _fit(self, request_id: str, req: FitRequest, keys: list[str],
             dataset: TrialDataset) -> None:
        try:
            started = time.perf_counter()
            version = self.version + 1
            model = SpeedIntegrationModel.fit(dataset, self.config.plant.control_period,
                                              self.config.model, version=version,
                                              should_stop=self.requests.cancel.is_set)
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
            self.requests.send(request_id, "failed", reason=f"{exc} ({NAME} shutting down)",
                               cancelled=True)
        except Exception as exc:  # noqa: BLE001 - logged here and reported to the requester
            reason = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"fit {request_id} on {len(keys)} trials failed: {reason}")
            self.requests.send(request_id, "failed", reason=reason)

    def _report(self) -> tuple[str, str, dict[str, Any]]:
        busy = self.requests.busy
        with self.lock:
            data = self.records
            values = {"trials": len(data), "runs": len(data.runs),
                      "duplicates_ignored": data.duplicates, "runs_forgotten": data.forgotten,
                      "records_of_ended_runs": data.ignored}
        return "ok", (f"fitting for {busy}" if busy else "idle"), {
            **values, "model_version": self.version, "last_fit_s": round(self.last_fit_s, 3),
            **self.refusals.values()}

    def close(self) -> None:
        """Stop the running fit (it checks the flag at every iteration) and wait for it."""
        self.join_worker(self.requests.close(), "the fit worker")


def main(args: Sequence[str] | None = None) -> int:
    return run_node(ModelLearningNode, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
