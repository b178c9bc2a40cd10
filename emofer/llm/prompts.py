"""Conversation templates: how a question and its visual tokens become one LLM prompt.

A template renders the user turn with an ``<image>`` marker where the visual
tokens are spliced in as embeddings, and closes the answer turn with its end
marker. ``vicuna_v1`` is LLaVA / LLaMA-VID's ``conv_vicuna_v1`` (separators
``" "`` and ``"</s>"``); ``llama3`` is LLaVA-NeXT's LLaMA-3 template;
``chatml`` is Qwen's; ``plain`` has no roles.

Example:
    >>> t = get_template("vicuna_v1")
    >>> t.render("What is the facial expression?").endswith("<image>\\nWhat is the facial expression? ASSISTANT:")
    True
    >>> t.answer("happiness")
    ' happiness</s>'
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from emofer.registry import Registry

IMAGE_MARKER = "<image>"
"""Where the visual tokens go in a rendered prompt."""


@dataclass(frozen=True)
class PromptTemplate:
    """A conversation template.

    Attributes:
        name: the id it is registered under.
        system: the default system prompt.
        user: format string of everything before the answer, with ``{system}``
            and ``{question}``; contains :data:`IMAGE_MARKER` once.
        answer_format: format string of the answer turn with ``{answer}``,
            including the separator before it and the end-of-turn marker after.
        stop: strings that end a generated answer (the end-of-turn marker).
    """

    name: str
    system: str
    user: str
    answer_format: str
    stop: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.user.count(IMAGE_MARKER) != 1 or "{question}" not in self.user:
            raise ValueError(
                f"prompt template {self.name!r}: 'user' needs one {IMAGE_MARKER} and a {{question}} field"
            )
        if "{answer}" not in self.answer_format:
            raise ValueError(f"prompt template {self.name!r}: 'answer_format' needs an {{answer}} field")

    def render(self, question: str, system: str | None = None) -> str:
        """The prompt up to where the answer starts, with the ``<image>`` marker."""
        return self.user.format(system=self.system if system is None else system, question=question)

    def split(self, question: str, system: str | None = None) -> tuple[str, str]:
        """The rendered prompt as (text before ``<image>``, text after it)."""
        before, after = self.render(question, system).split(IMAGE_MARKER)
        return before, after

    @property
    def anchor(self) -> str:
        """The constant text right before the answer (e.g. ``" ASSISTANT:"``).

        Answers are tokenized after this anchor so their tokens are the ones
        the LLM sees inside a whole conversation.
        """
        return self.user.rsplit("{question}", 1)[1]

    def answer(self, answer: str) -> str:
        """The answer turn as it follows :attr:`anchor` (separator, text, end marker)."""
        return self.answer_format.format(answer=answer)

    def clean(self, generated: str) -> str:
        """A generated continuation cut at the first stop string and stripped."""
        for stop in self.stop:
            generated = generated.split(stop, 1)[0]
        return generated.strip()


PROMPT_TEMPLATES = Registry(
    "prompt template", "emofer.prompt_templates", public_name="PROMPT_TEMPLATES"
)
"""Every registered template: each entry is a function returning its :class:`PromptTemplate`.

Add one with ``@PROMPT_TEMPLATES.register("my-template")`` on such a function,
with :func:`register_template`, or with an entry point in the group
``emofer.prompt_templates``.
"""


def register_template(template: PromptTemplate, force: bool = False) -> PromptTemplate:
    """Registers a ready-made template under its ``name`` (a duplicate name needs ``force=True``)."""

    def factory() -> PromptTemplate:
        return template

    factory.__doc__ = f"Prompt template {template.name!r} (added with register_template)."
    factory.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    PROMPT_TEMPLATES.add(template.name, factory, force=force)
    return template


def get_template(name: str) -> PromptTemplate:
    """The registered template called ``name``; unknown names suggest close ones."""
    template = PROMPT_TEMPLATES.get(name)()
    if not isinstance(template, PromptTemplate):
        raise TypeError(f"prompt template {name!r}: its factory returned {type(template).__name__}, not a PromptTemplate")
    return template


@PROMPT_TEMPLATES.register("vicuna_v1")
def vicuna_v1() -> PromptTemplate:
    """LLaVA / LLaMA-VID's conv_vicuna_v1 (separators " " and "</s>")."""
    return PromptTemplate(
        name="vicuna_v1",
        system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        user="{system} USER: <image>\n{question} ASSISTANT:",
        answer_format=" {answer}</s>",
        stop=("</s>",),
    )


@PROMPT_TEMPLATES.register("llama3")
def llama3() -> PromptTemplate:
    """LLaVA-NeXT's LLaMA-3 template."""
    return PromptTemplate(
        name="llama3",
        system=(
            "You are a helpful language and vision assistant. You are able to understand the visual "
            "content that the user provides, and assist the user with a variety of tasks using "
            "natural language."
        ),
        user=(
            "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n<image>\n{question}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        answer_format="{answer}<|eot_id|>",
        stop=("<|eot_id|>",),
    )


@PROMPT_TEMPLATES.register("chatml")
def chatml() -> PromptTemplate:
    """Qwen's ChatML template."""
    return PromptTemplate(
        name="chatml",
        system="You are a helpful assistant.",
        user=(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        answer_format="{answer}<|im_end|>",
        stop=("<|im_end|>",),
    )


@PROMPT_TEMPLATES.register("plain")
def plain() -> PromptTemplate:
    """No roles: the question, then the answer."""
    return PromptTemplate(
        name="plain",
        system="",
        user="{system}<image>\n{question}\n",
        answer_format="{answer}</s>",
        stop=("</s>", "\n"),
    )
