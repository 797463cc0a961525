"""RL-VLM-F's two prompts and the answer parser.

Stage 1, *analysis* (both segments' images and the task's goal text): what each image shows,
and whether they differ in how well they achieve the goal. Stage 2, *label* (text only: the
goal and the analysis): one line, ``0`` (goal better achieved in Image 1), ``1`` (in Image 2)
or ``-1`` (unsure / no difference). The first line of the label reply, stripped, must be
exactly one of those numbers; anything else is read as unsure.

Worded after RL-VLM-F's two prompts (what is in each image, then a difference in terms of the
goal; then a single-line 0 / 1 / -1 answer), not copied from them. docs/vlm.md prints both.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Literal, TypedDict

from pbrl.teachers.vlm.images import ImageSpec

ANALYSIS, LABEL = "analysis", "label"  # the two stages (part of every cache key)


class ImageURL(TypedDict):
    url: str  # a data: URL of a PNG


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(TypedDict):
    """One message of a chat-completions request body (OpenAI's format)."""

    role: Literal["user"]
    content: str | list[TextPart | ImagePart]


def _image_heading(n: int, spec: ImageSpec) -> str:
    if spec.frames == "strip":
        return (
            f"Image {n} ({spec.num_frames} frames of one clip side by side, "
            "time running left to right):"
        )
    if spec.frames == "k":
        return f"Image {n} ({spec.num_frames} frames of one clip, in time order):"
    return f"Image {n}:"


def analysis_texts(goal: str, spec: ImageSpec) -> tuple[str, str, str]:
    """Stage 1's text: before the first image(s), between the two, after the second."""
    first = "Look at these two images of the same robot task.\n" + _image_heading(1, spec)
    between = _image_heading(2, spec)
    after = (
        "Answer these questions:\n"
        "1. What does Image 1 show?\n"
        "2. What does Image 2 show?\n"
        f"3. The goal is: {goal}. Do Image 1 and Image 2 differ in how well the goal is "
        "achieved? Describe the difference, if there is one."
    )
    return first, between, after


def label_text(goal: str, analysis: str) -> str:
    """Stage 2's text-only prompt: the goal, the questions, the stage-1 answer."""
    return (
        "Two images of the same robot task were compared. These questions were asked:\n"
        "1. What does Image 1 show?\n"
        "2. What does Image 2 show?\n"
        f"3. The goal is: {goal}. Do Image 1 and Image 2 differ in how well the goal is "
        "achieved?\n"
        f"The answers were:\n{analysis.strip()}\n\n"
        "Based on these answers, in which image is the goal better achieved? Reply with a "
        "single line holding one number and nothing else: 0 if the goal is better achieved "
        "in Image 1, 1 if it is better achieved in Image 2, -1 if you are unsure or there is "
        "no difference."
    )


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def analysis_messages(
    goal: str, images_1: list[bytes], images_2: list[bytes], spec: ImageSpec
) -> list[ChatMessage]:
    """Stage 1's chat messages: one user message, the texts around the PNG data URLs."""
    first, between, after = analysis_texts(goal, spec)
    parts: list[TextPart | ImagePart] = [TextPart(type="text", text=first)]
    parts += [ImagePart(type="image_url", image_url={"url": _data_url(b)}) for b in images_1]
    parts.append(TextPart(type="text", text=between))
    parts += [ImagePart(type="image_url", image_url={"url": _data_url(b)}) for b in images_2]
    parts.append(TextPart(type="text", text=after))
    return [{"role": "user", "content": parts}]


def label_messages(goal: str, analysis: str) -> list[ChatMessage]:
    """Stage 2's chat messages: one text-only user message."""
    return [{"role": "user", "content": label_text(goal, analysis)}]


_ANSWER = re.compile(r"(0|1|-1)")


def parse_answer(reply: str | None) -> int:
    """The label reply's first line, stripped, as 0, 1 or -1; anything else is -1 (unsure)."""
    lines = (reply or "").strip().splitlines()
    first = lines[0].strip() if lines else ""
    return int(first) if _ANSWER.fullmatch(first) else -1


def answer_label(answer: int) -> float:
    """0 -> 0.0 (first preferred), 1 -> 1.0 (second), -1 -> NaN (skip)."""
    return {0: 0.0, 1: 1.0}.get(answer, math.nan)


__all__ = [
    "ANALYSIS",
    "LABEL",
    "analysis_messages",
    "analysis_texts",
    "answer_label",
    "label_messages",
    "label_text",
    "parse_answer",
]
