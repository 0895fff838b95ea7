"""Trial records: the payload round trip, and malformed or non-finite records refused with a
ValueError that names the field (such a record is never stored or fitted)."""
import json

import numpy as np
import pytest

from ebmcpilco_ros.core.model import SpeedIntegrationModel, training_data
from ebmcpilco_ros.core.trial import Trial
from ebmcpilco_ros.nodes.codec import to_json

from helpers import random_trials


def _record(**changes):
    trial = random_trials(1, seed=3)[0]
    record = json.loads(to_json(trial.to_dict()))   # as it travels: NaN and inf become null
    record.update(changes)
    return record


def test_a_record_survives_json_unchanged():
    trial = random_trials(1, seed=3)[0]
    back = Trial.from_dict(json.loads(to_json(trial.to_dict())))
    for name in ("states", "inputs", "times", "true_states"):
        np.testing.assert_array_equal(getattr(back, name), getattr(trial, name))
    assert (back.kind, back.index, back.failed) == (trial.kind, trial.index, trial.failed)


def _with_nan(name, where):
    record = _record()
    value = np.array(record[name], dtype=float)
    value[where] = np.nan
    return json.loads(to_json({**record, name: value.tolist()}))


@pytest.mark.parametrize("name, where, message", [
    ("states", (12, 1), r"field 'states'\[12\]\[1\] is not finite"),
    ("inputs", (4,), r"field 'inputs'\[4\] is not finite"),
    ("times", (0,), r"field 'times'\[0\] is not finite"),
    ("true_states", (30, 2), r"field 'true_states'\[30\]\[2\] is not finite"),
])
def test_non_finite_values_are_refused_naming_the_field_and_element(name, where, message):
    record = _with_nan(name, where)
    assert record[name][where[0]] is None or None in record[name][where[0]]  # null on the wire
    with pytest.raises(ValueError, match=message):
        Trial.from_dict(record)
    inf = _record()
    inf[name] = np.where(np.isfinite(np.array(inf[name])), np.array(inf[name]), 0.0).tolist()
    value = np.array(inf[name], dtype=float)
    value[where] = np.inf                                 # in process (no JSON): inf itself
    inf[name] = value
    with pytest.raises(ValueError, match=message):
        Trial.from_dict(inf)


@pytest.mark.parametrize("changes, message", [  # T steps; messages formatted with T, T1 = T + 1
    (lambda T: {"states": [[0.0] * 3] * (T + 1)}, r"field 'states' must be \(T\+1, 4\)"),
    (lambda T: {"states": [0.0] * (T + 1)}, "field 'states' must have 2 dimensions"),
    (lambda T: {"inputs": [0.0] * (T - 1)}, r"field 'inputs' must have shape \({T},\)"),
    (lambda T: {"times": [0.0] * T}, r"field 'times' must have shape \({T1},\)"),
    (lambda T: {"true_states": [[0.0] * 4] * T},
     r"field 'true_states' must have shape \({T1}, 4\)"),
    (lambda T: {"inputs": ["a"] * T}, "field 'inputs' is not an array of numbers"),
    (lambda T: {"states": [[0.0] * 4, [0.0] * 3]}, "field 'states' is not an array of numbers"),
    (lambda T: {"kind": 3}, "field 'kind' must be a string"),
    (lambda T: {"index": -1}, "field 'index' must be an integer >= 0"),
    (lambda T: {"index": 2.5}, "field 'index' must be an integer >= 0"),
    (lambda T: {"failed": "no"}, "field 'failed' must be true or false"),
    (lambda T: {"meta": []}, "field 'meta' must be an object"),
    (lambda T: {"format": "ebmcpilco.trial/0"}, "not a trial record of format"),
])
def test_malformed_records_are_refused_naming_the_field(changes, message):
    record = _record()
    T = len(record["inputs"])
    with pytest.raises(ValueError, match=message.replace("{T1}", str(T + 1))
                       .replace("{T}", str(T))):
        Trial.from_dict({**record, **changes(T)})


def test_a_missing_field_is_named():
    record = _record()
    del record["inputs"]
    with pytest.raises(ValueError, match="missing field 'inputs'"):
        Trial.from_dict(record)


def test_a_trial_with_non_finite_values_is_never_fitted():
    good, bad = random_trials(2, seed=4)
    bad.states[7, 3] = np.nan                       # built in process, not through from_dict
    with pytest.raises(ValueError, match=r"trial 1: states\[7\]\[3\] is not finite"):
        training_data([good, bad])
    with pytest.raises(ValueError, match="not finite"):
        SpeedIntegrationModel.fit([good, bad], 0.05, _model_config())
    bad.failed = True                               # a failed trial is skipped, as before
    X, _Y = training_data([good, bad])
    assert len(X) == good.steps


def _model_config():
    from ebmcpilco_ros.core.config import ModelConfig
    return ModelConfig(fit_iterations=5)
