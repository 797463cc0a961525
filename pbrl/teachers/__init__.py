"""Teachers answer queries: ``labels = teacher(queries)`` (:class:`Teacher`), or later
through ``submit``/``collect`` (:class:`AsyncTeacher`: people, remote models).

Every teacher gives one float label per query: 0 (first preferred), 1 (second preferred),
0.5 (equal) or NaN (skip). Swapping teachers is a config change.
"""

from pbrl.teachers.base import AsyncTeacher, Immediate, Teacher, as_async
from pbrl.teachers.scripted import ScriptedTeacher

__all__ = ["AsyncTeacher", "Immediate", "ScriptedTeacher", "Teacher", "as_async"]
