"""Prompts as a chat model saw them: the question as the user turn and the response as the assistant turn, rendered
with the tokenizer's own chat template, the reasoning (``thought``) inside the model's reasoning markers when asked,
and the character spans of question, thought and response in the rendered text. `train` and `viz` both render
through :func:`render_row`, so they read the same text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from container_src.config import ConfigError

FORMATS = ("auto", "chat", "plain")
# Stand-ins the template renders where the texts go: templates trim, split on reasoning markers and escape, but
# leave a plain word alone; the texts are put in afterwards, so their spans are exact.
_QUESTION, _ANSWER = "QQsaequestionQQ", "AAsaeanswerAA"


@dataclass(frozen=True)
class Rendering:
    """How prompt rows become text: ``chat`` (with the tokenizer's template) or ``plain``; the thought inside
    ``markers`` (opening, closing) when ``thought``."""

    format: str
    thought: bool = False
    markers: tuple[str, str] = ("<think>", "</think>")

    def record(self) -> dict[str, Any]:
        """What the SAE's metadata keeps, so viz renders as train did."""
        return {"format": self.format, "thought": self.thought, "markers": list(self.markers)}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Rendering:
        if not record:
            return cls("plain")  # an SAE from before chat rendering
        opening, closing = record.get("markers") or ("<think>", "</think>")
        return cls(str(record["format"]), bool(record.get("thought")), (opening, closing))


def choose(prompt_format: str, thought: bool, markers: str, tokenizer: Any) -> Rendering:
    """The rendering a run asked for, checked against the tokenizer: ``auto`` is chat where it has a template."""
    parts = [m.strip() for m in markers.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"reasoning_markers={markers!r}: give the opening and closing marker, as <think>,</think>")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise ConfigError("prompt_format='chat': the model's tokenizer has no chat template; use auto or plain")
    chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
    if thought and not chat:
        raise ConfigError("chat_thought=true: the thought is rendered only in chat format; the prompts are plain")
    return Rendering("chat" if chat else "plain", thought, (parts[0], parts[1]))


def _template(tokenizer: Any) -> tuple[str, str, str]:
    """The template's text before the question, between question and response, and after the response."""
    messages = [{"role": "user", "content": _QUESTION}, {"role": "assistant", "content": _ANSWER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):  # the model's BOS is added as a token where rows start, not as text
        text = text[len(bos) :]
    q_at, a_at = text.find(_QUESTION), text.find(_ANSWER)
    if q_at < 0 or a_at < q_at:
        raise ConfigError("the tokenizer's chat template does not render a user turn then an assistant turn")
    return text[:q_at], text[q_at + len(_QUESTION) : a_at], text[a_at + len(_ANSWER) :]


def _with_thought(between: str, thought: str, markers: tuple[str, str]) -> tuple[str, str, int]:
    """``between`` with the thought inside the reasoning block: the template's own empty block where it writes one
    right before the response, else a new one. Returns the text before the thought, after it, and where it lies."""
    opening, closing = markers
    close_at = between.rfind(closing)
    open_at = between.rfind(opening, 0, max(close_at, 0))
    own_block = (
        close_at >= 0
        and open_at >= 0
        and not between[close_at + len(closing) :].strip()
        and not between[open_at + len(opening) : close_at].strip()
    )
    if own_block:
        before, after = between[: open_at + len(opening)] + "\n", "\n" + between[close_at:]
    else:
        before, after = between + opening + "\n", "\n" + closing + "\n\n"
    return before, after, len(before)


def render_row(row: dict[str, Any], rendering: Rendering, tokenizer: Any, template: Any = None) -> dict[str, Any]:
    """``text`` and the spans (``question_start`` …, ``thought_start`` …, end exclusive, -1 where absent) of a
    prompt row in chat format. ``template``: ``_template``'s parts, computed once per run by :class:`Renderer`."""
    head, between, tail = template or _template(tokenizer)
    question = (row.get("question") or "").strip()
    response = (row.get("response") or "").strip()
    thought = (row.get("thought") or "").strip() if rendering.thought else ""
    spans = {"thought_start": -1, "thought_end": -1}
    text = head
    spans["question_start"], spans["question_end"] = len(text), len(text) + len(question)
    text += question
    if thought:
        before, after, _ = _with_thought(between, thought, rendering.markers)
        text += before
        spans["thought_start"], spans["thought_end"] = len(text), len(text) + len(thought)
        text += thought + after
    else:
        text += between
    spans["response_start"], spans["response_end"] = len(text), len(text) + len(response)
    return {"text": text + response + tail, **spans}


class Renderer:
    """:func:`render_row` with the template rendered once."""

    def __init__(self, rendering: Rendering, tokenizer: Any) -> None:
        self.rendering, self.tokenizer = rendering, tokenizer
        self.template = _template(tokenizer)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return render_row(row, self.rendering, self.tokenizer, self.template)
