"""B-Pref scripted teachers (Lee et al. 2021): a simulated human with tunable irrationality.

Given true segment returns R1, R2 (with myopia, R = sum_t gamma**(T-1-t) r_t):

* ``beta`` (rationality): P(second preferred) = sigmoid(beta * (R2 - R1)); ``inf`` is the
  oracle (the larger return wins, exact ties are 0.5).
* ``gamma`` (myopia): weights later steps more; 1.0 means none.
* ``eps_mistake``: flip a 0/1 label with this probability.
* ``eps_skip``: skip ("can't tell", NaN) when both undiscounted returns are below
  ``eps_skip * margin``.
* ``eps_equal``: label 0.5 when ``|R1 - R2| < eps_equal * margin``.

``margin`` is the mean undiscounted return of the segments in the batch — B-Pref's
"mean episode return x T / H", i.e. the expected segment return. B-Pref's code multiplies
its thresholds by epsilon a second time after the first round; here epsilon enters once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pbrl.data import Queries
from pbrl.data.preferences import sigmoid
from pbrl.errors import ConfigError
from pbrl.teachers.base import Scripted


class TeacherConfigError(ConfigError):
    """An invalid teacher parameter (raised when the teacher is built)."""


@dataclass
class ScriptedTeacher(Scripted):
    beta: float = math.inf
    gamma: float = 1.0
    eps_mistake: float = 0.0
    eps_skip: float = 0.0
    eps_equal: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        self.beta = math.inf if self.beta is None else float(self.beta)
        if not self.beta > 0:
            raise TeacherConfigError(
                f"teacher.beta={self.beta} is invalid: use a rationality > 0, or inf for the oracle"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise TeacherConfigError(f"teacher.gamma={self.gamma} is invalid: use 0 < gamma <= 1")
        for name in ("eps_mistake", "eps_skip", "eps_equal"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TeacherConfigError(f"teacher.{name}={value} is invalid: use 0 <= {name} <= 1")

    @property
    def is_oracle(self) -> bool:
        return (
            math.isinf(self.beta)
            and self.gamma == 1.0
            and self.eps_mistake == self.eps_skip == self.eps_equal == 0.0
        )

    def __call__(self, queries: Queries) -> np.ndarray:
        r1, r2 = queries.first.returns(), queries.second.returns()
        d1, d2 = queries.first.returns(self.gamma), queries.second.returns(self.gamma)
        n = len(r1)

        if math.isinf(self.beta):
            labels = np.where(d2 > d1, 1.0, np.where(d1 > d2, 0.0, 0.5))
        else:
            p_second = sigmoid(self.beta * (d2 - d1))
            labels = (self.rng.random(n) < p_second).astype(np.float64)

        if self.eps_mistake > 0:
            flip = (self.rng.random(n) < self.eps_mistake) & (labels != 0.5)
            labels = np.where(flip, 1.0 - labels, labels)

        margin = float(np.mean(np.concatenate([r1, r2]))) if n else 0.0
        if self.eps_equal > 0:
            labels = np.where(np.abs(r1 - r2) < self.eps_equal * abs(margin), 0.5, labels)
        if self.eps_skip > 0:
            labels = np.where(np.maximum(r1, r2) < self.eps_skip * margin, np.nan, labels)
        return labels
