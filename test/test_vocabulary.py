"""The loop's vocabulary: each word is its payload string wherever a string is expected."""
import json

from ebmcpilco_ros.core.controllers import (FeedbackPlanController, PolicyController,
                                            RandomController)
from ebmcpilco_ros.core.vocabulary import ControllerKind, Phase, Stage, TrialKind


def test_words_are_their_strings_in_comparisons_dicts_json_and_text():
    wall = {Stage.POLICY: 2.0, "model": 1.0}
    assert wall["policy"] == 2.0 and Stage.POLICY in {"policy": 0}   # hashed as the string
    assert json.dumps({TrialKind.ILQR: [Phase.EXPLORE]}) == '{"ilqr": ["explore"]}'
    assert f"{TrialKind.POLICY:8s}|{Phase.EXPLORE}" == "policy  |explore"
    assert TrialKind("random") is TrialKind.RANDOM and str(ControllerKind.SQUASHED_RBF) == \
        "squashed_rbf"


def test_what_each_request_and_controller_runs():
    assert Phase.EXPLORE.trial_kind is TrialKind.ILQR
    assert Phase.POLICY.trial_kind is TrialKind.POLICY
    runs = {c.kind.trial_kind for c in (RandomController, FeedbackPlanController,
                                        PolicyController)}
    assert runs == set(TrialKind)


def test_the_standalone_policy_file_agrees_with_core():
    """policy_numpy.py travels alone (ebmcpilco export-policy) and so keeps its own copies of
    the state size, the policy's kind and its inputs: they must say what core says."""
    from ebmcpilco_ros.core import cartpole, policy_numpy
    from ebmcpilco_ros.core.model import INPUT_NAMES

    assert policy_numpy.STATE_SIZE == cartpole.STATE_DIM
    assert policy_numpy.POLICY_KIND == ControllerKind.SQUASHED_RBF
    assert policy_numpy.POLICY_INPUTS == INPUT_NAMES[:-1]
