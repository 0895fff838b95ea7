"""The trial dataset: what the model is fitted on, in process and in the model-learning node."""
import numpy as np

from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.dataset import TrialDataset
from ebmcpilco_ros.core.learner import LocalModelLearning
from ebmcpilco_ros.core.model import training_data
from ebmcpilco_ros.core.trial import Trial

from helpers import random_trials


def test_failed_and_empty_trials_are_kept_but_not_fitted():
    good = random_trials(2, seed=3)
    failed = Trial(states=good[0].states, inputs=good[0].inputs, times=good[0].times,
                   index=2, failed=True)
    empty = Trial(states=np.zeros((1, 4)), inputs=np.zeros(0), times=np.zeros(1), index=3)
    dataset = TrialDataset([good[0], failed, good[1], empty])
    assert len(dataset) == 4 and dataset.usable() == [good[0], good[1]]
    assert dataset.transitions == good[0].steps + good[1].steps
    X, Y = training_data(dataset)
    X_list, Y_list = training_data(good)      # a plain sequence of trials fits the same
    assert np.array_equal(X, X_list) and np.array_equal(Y, Y_list)
    assert len(X) == dataset.transitions


def test_the_in_process_learner_checkpoints_its_dataset_as_trial_records():
    models = LocalModelLearning(ExperimentConfig())
    for trial in random_trials(2, seed=4):
        models.add_trial(trial)
    models.fit()
    state = models.state_dict()
    assert set(state) == {"trials", "version"} and state["version"] == 1
    again = LocalModelLearning(ExperimentConfig())
    again.load_state_dict(state)
    assert [t.to_dict() for t in again.dataset] == state["trials"] and again.version == 1
