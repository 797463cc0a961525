"""Teachers answer queries through one asynchronous protocol (:class:`Teacher`: ``submit``,
``collect``); scripted teachers (:class:`Scripted`) answer at once, people and VLMs later.

Every teacher gives one float label per query: 0 (first preferred), 1 (second preferred),
0.5 (equal) or NaN (skip). Swapping teachers is a config change; how long a run waits for
answers is the run's ``wait`` settings (:class:`WaitPolicy`).
"""

from pbrl.teachers.base import Scripted, Teacher, WaitPolicy, ask, wait_for
from pbrl.teachers.scripted import ScriptedTeacher

__all__ = ["Scripted", "ScriptedTeacher", "Teacher", "WaitPolicy", "ask", "wait_for"]
