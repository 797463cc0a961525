import math

import numpy as np
import pytest
from conftest import segments_with_returns

from pbrl.data import Queries
from pbrl.teachers import ScriptedTeacher
from pbrl.teachers.scripted import TeacherConfigError


def pairs(r1, r2):
    return Queries(
        segments_with_returns(np.asarray(r1, float)), segments_with_returns(np.asarray(r2, float))
    )


def test_oracle_prefers_larger_return_and_ties_half():
    labels = ScriptedTeacher()(pairs([1, 5, 3], [2, 4, 3]))
    assert labels.tolist() == [1.0, 0.0, 0.5]
    assert ScriptedTeacher().is_oracle


def test_rationality_matches_sigmoid_over_many_draws():
    n = 20000
    q = pairs(np.zeros(n), np.full(n, 0.7))
    labels = ScriptedTeacher(beta=2.0, rng=np.random.default_rng(1))(q)
    expected = 1 / (1 + math.exp(-2.0 * 0.7))  # P(second preferred) = sigmoid(beta * dR)
    assert labels.mean() == pytest.approx(expected, abs=0.01)


def test_mistake_rate_over_many_draws():
    n = 20000
    labels = ScriptedTeacher(eps_mistake=0.1, rng=np.random.default_rng(2))(
        pairs(np.zeros(n), np.ones(n))
    )
    assert (labels == 0).mean() == pytest.approx(0.1, abs=0.01)


def test_myopia_weights_later_steps():
    q = pairs([0.0], [0.0])
    q.first.true_reward[0] = [10, 0, 0, 0]  # early reward
    q.second.true_reward[0] = [0, 0, 0, 2]  # late reward
    assert ScriptedTeacher()(q)[0] == 0.0  # undiscounted: 10 > 2
    # gamma = 0.5: first = 10 * 0.5^3 = 1.25 < 2
    assert ScriptedTeacher(gamma=0.5)(q)[0] == 1.0


def test_equal_and_skip_thresholds_scale_with_mean_return():
    # mean segment return over the batch = (10+10.5+1+2+20+30)/6 = 12.25
    q = pairs([10, 1, 20], [10.5, 2, 30])
    labels = ScriptedTeacher(eps_equal=0.1)(q)  # threshold 1.225: |dR| = 0.5, 1, 10
    assert labels.tolist() == [0.5, 0.5, 1.0]
    labels = ScriptedTeacher(eps_skip=0.2)(q)  # skip if max < 2.45: only the (1, 2) pair
    assert np.isnan(labels[1]) and labels[0] == 1.0 and labels[2] == 1.0


def test_threshold_applies_epsilon_once_across_rounds():
    # B-Pref's bug multiplied by epsilon again after the first round; here rounds are identical.
    teacher = ScriptedTeacher(eps_equal=0.1)
    q = pairs([10, 1, 20], [10.5, 2, 30])
    assert teacher(q).tolist() == teacher(q).tolist()


def test_seeded_generator_reproducible():
    q = pairs(np.zeros(100), np.ones(100) * 0.1)
    a = ScriptedTeacher(beta=1.0, eps_mistake=0.2, rng=np.random.default_rng(7))(q)
    b = ScriptedTeacher(beta=1.0, eps_mistake=0.2, rng=np.random.default_rng(7))(q)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"beta": 0}, "beta"), ({"gamma": 1.5}, "gamma"), ({"eps_mistake": -0.1}, "eps_mistake")],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(TeacherConfigError, match=match):
        ScriptedTeacher(**kwargs)
