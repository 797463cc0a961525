"""A vision-language model as the teacher: RL-VLM-F (Wang et al. 2024) over any
OpenAI-compatible chat-completions endpoint (``teacher=vlm``, :class:`VLMTeacher`).

For each query pair the teacher renders what it shows (:mod:`~pbrl.teachers.vlm.images`: the
last frame of each segment by default) and asks two questions
(:mod:`~pbrl.teachers.vlm.prompts`):

1. *analysis* (both images and the task's goal text): what each image shows, and whether they
   differ in how well they achieve the goal;
2. *label* (text only: the goal and the analysis): one line, ``0`` (goal better achieved in
   Image 1), ``1`` (in Image 2) or ``-1`` (unsure / no difference).

The first line of the label reply, stripped, must be exactly one of those numbers; anything
else is read as unsure. Unsure pairs and pairs whose two images are identical (no request is
made for them) are skipped (NaN). Labels follow pbrl's convention: 0 first preferred, 1 second.
Temperature 0.

A :class:`~pbrl.teachers.base.Teacher` (answers later): ``submit`` hands a round to a
background render thread and a pool of ``max_concurrency`` request threads
(:mod:`~pbrl.teachers.vlm.pipeline`) and returns at once; ``collect`` returns whatever pairs
were answered since its last call (annotator ``"vlm"``). Requests obey a requests-per-second
limit and a per-request timeout; 429, 408, 409, 5xx, timeouts and connection errors are
retried with exponential backoff (:mod:`~pbrl.teachers.vlm.client`; the ``openai`` client's
own retries are off); a pair that still fails is skipped and counted (``vlm_failed``), never
a crash. Every answer is committed to an on-disk SQLite cache
(:mod:`~pbrl.teachers.vlm.cache`) keyed by sha256 of the image bytes, the prompt text, the
model and the stage, so a rerun of the same queries makes no request at all.

Construction sends a probe (``GET /models``, or a one-token chat request where the endpoint
has no model list): an unreachable endpoint, a rejected key or an unknown model is one
:class:`~pbrl.teachers.scripted.TeacherConfigError` before training starts.

No key or model at hand: ``python -m pbrl.teachers.vlm.mock`` serves a stand-in
(:mod:`~pbrl.teachers.vlm.mock`) and prints the overrides to train against it.

Modules: ``teacher`` (:class:`VLMTeacher`), ``pipeline`` (rendering and asking in the
background), ``client`` (the endpoint), ``prompts``, ``cache``, ``figures``
(``preferences/vlm_*``), ``images`` (what the model is shown), ``mock`` (the stand-in server).
docs/vlm.md has the prompts, the cache, cost figures and how to point it at vLLM or OpenAI.
"""

from pbrl.teachers.vlm.cache import DEFAULT_CACHE, AnswerCache, cache_key
from pbrl.teachers.vlm.prompts import (
    ANALYSIS,
    LABEL,
    analysis_messages,
    analysis_texts,
    answer_label,
    label_messages,
    label_text,
    parse_answer,
)
from pbrl.teachers.vlm.teacher import ANNOTATOR, VLMTeacher

__all__ = [
    "ANALYSIS",
    "ANNOTATOR",
    "DEFAULT_CACHE",
    "LABEL",
    "AnswerCache",
    "VLMTeacher",
    "analysis_messages",
    "analysis_texts",
    "answer_label",
    "cache_key",
    "label_messages",
    "label_text",
    "parse_answer",
]
