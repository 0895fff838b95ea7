"""JSON written one way everywhere: numpy and torch as plain values, NaN as null, atomically."""
import json
import math

import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.jsonio import plain, to_json, write_json_atomic
from ebmcpilco_ros.core.vocabulary import TrialKind


def test_arrays_tensors_and_non_finite_values_become_json():
    data = {"x": np.arange(3.0), "t": torch.tensor([1.5, 2.5]), "n": np.int64(4),
            "b": np.bool_(True), "kind": TrialKind.ILQR, 3: (1, 2)}
    assert json.loads(to_json(data)) == {"x": [0.0, 1.0, 2.0], "t": [1.5, 2.5], "n": 4,
                                         "b": True, "kind": "ilqr", "3": [1, 2]}
    with_nan = {"a": [1.0, math.nan], "b": np.array([math.inf])}
    assert json.loads(to_json(with_nan)) == {"a": [1.0, None], "b": [None]}
    assert plain(with_nan) == {"a": [1.0, None], "b": [None]}
    with pytest.raises(TypeError):
        to_json({"f": object()})


def test_an_atomic_write_leaves_the_file_and_no_temporary(tmp_path):
    target = tmp_path / "deep" / "figures.json"
    write_json_atomic(target, {"v": np.float32(0.5), "nan": math.nan}, indent=2)
    assert json.loads(target.read_text()) == {"v": 0.5, "nan": None}
    assert target.read_text().startswith("{\n  ")
    assert [p.name for p in target.parent.iterdir()] == ["figures.json"]
