"""Divergence says the actionable thing in every estimator: which parameter to lower and its value."""

import warnings

import pytest
import torch
from sklearn.datasets import make_blobs

from skicon import ICONClassifier, ICONContrastive
from skicon._training import Trainer


@pytest.mark.parametrize("make", [
    lambda: ICONContrastive(learning_rate=1e12, max_iter=20, random_state=0),
    lambda: ICONClassifier(learning_rate=1e12, max_iter=20, random_state=0),
], ids=["contrastive", "classifier"])
def test_a_diverging_estimator_names_learning_rate_and_its_value(make):
    X, y = make_blobs(200, n_features=5, centers=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match=r"diverged.*Lower learning_rate \(the step in use was 1e\+12"):
            make().fit(X, y)


def test_an_objective_that_rejects_diverged_weights_gets_the_divergence_message():
    # the contrastive blocks validate log_q ("log_q contains NaN"): a deep message when the weights diverged
    lin = torch.nn.Linear(2, 2)

    def objective(module, batch, teacher):
        out = module(torch.ones(3, 2))
        if not torch.isfinite(out).all():
            raise ValueError("log_q contains NaN")
        return (out**2).sum() * 1e30

    trainer = Trainer(lin, objective, n_steps=5, optimizer="sgd", learning_rate=1e30, desc="Probe")
    match = r"Probe diverged: .* Lower learning_rate \(the step in use was 1e\+30"
    with pytest.raises(FloatingPointError, match=match):
        trainer.run()
