"""``S3LocalLLM``: the local causal LM of an S3 index as a LlamaIndex LLM (offline).

Generation is greedy and goes through the model's chat template
(:func:`s3_retriever.generate_text`), holding the model's lock so it never overlaps a
scan or a search on the same model.

Example:
    >>> from llama_index.retrievers.s3 import S3LocalLLM
    >>> llm = S3LocalLLM("smollm2-135m", max_new_tokens=16)
    >>> reply = llm.complete("What is the capital of France?").text
    >>> isinstance(reply, str) and len(reply.strip()) > 0  # greedy text differs by dtype
    True
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from s3_retriever import DEFAULT_MODEL, MAX_NEW_TOKENS, LoadedModel, generate_text, load_model

# Roles the chat template knows; the rest are mapped onto them.
_ROLE_MAP = {
    MessageRole.DEVELOPER: "system",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.FUNCTION: "user",
    MessageRole.TOOL: "user",
}


def to_template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages as ``{"role", "content"}`` dicts for a chat template.

    Example:
        >>> to_template_messages([ChatMessage(role="developer", content="Be brief."),
        ...                       ChatMessage(role="user", content="Hi")])
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    out = []
    for m in messages:
        role = MessageRole(m.role)
        out.append({"role": _ROLE_MAP.get(role, role.value), "content": m.content or ""})
    return out


class S3LocalLLM(CustomLLM):
    """A local, offline LlamaIndex LLM around a :class:`~s3_retriever.LoadedModel`.

    Args:
        model: a loaded model (e.g. ``retriever.index.lm``, shared with the index) or a
            name/path for :func:`~s3_retriever.load_model` (default: the embedded
            ``"smollm2-135m"``).
        max_new_tokens: the most tokens generated per call (also ``metadata.num_output``).
        device, dtype: used only when ``model`` is a name.
        **kwargs: other LlamaIndex LLM fields (``system_prompt``, ``callback_manager``, ...).

    ``metadata.context_window`` is the model's context length. ``complete`` sends the
    prompt as one user message (after ``system_prompt`` when set) through the chat
    template; ``chat`` sends the messages as given; the stream variants yield once.

    Example:
        >>> from llama_index.core import Document
        >>> from llama_index.core.query_engine import RetrieverQueryEngine
        >>> from llama_index.retrievers.s3 import S3Retriever
        >>> retriever = S3Retriever.from_defaults(
        ...     documents=[Document(text="The secret code word is Zanzibar.")])
        >>> llm = S3LocalLLM(retriever.index.lm)
        >>> engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        >>> str(engine.query("What is the secret code word?"))
        'The secret code word is Zanzibar.'
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="The model's id.")
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, gt=0,
                                description="Tokens generated at most.")
    context_window: int = Field(default=8192, gt=0, description="The model's context length.")

    _lm: LoadedModel = PrivateAttr()

    def __init__(self, model: LoadedModel | str = DEFAULT_MODEL, *,
                 max_new_tokens: int = MAX_NEW_TOKENS,
                 device: str | None = None, dtype: str | None = None, **kwargs: Any) -> None:
        lm = model if isinstance(model, LoadedModel) else load_model(model, device, dtype)
        super().__init__(model_name=lm.model_id, max_new_tokens=max_new_tokens,
                         context_window=lm.max_length, **kwargs)
        self._lm = lm

    @classmethod
    def class_name(cls) -> str:
        return "S3LocalLLM"

    @property
    def lm(self) -> LoadedModel:
        """The wrapped model."""
        return self._lm

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           is_chat_model=True, model_name=self.model_name)

    # ----------------------------------------------------------------- generation
    def _generate(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        max_new = int(kwargs.get("max_new_tokens", self.max_new_tokens))
        text, _ = generate_text(self._lm, messages, max_new_tokens=max_new)
        return text

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt and not formatted:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (sent as a user message through the chat template)."""
        return CompletionResponse(text=self._generate(self._prompt_messages(prompt, formatted),
                                                      **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        """:meth:`complete`, yielded once."""
        text = self._generate(self._prompt_messages(prompt, formatted), **kwargs)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply to ``messages`` through the chat template."""
        text = self._generate(to_template_messages(messages), **kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """:meth:`chat`, yielded once."""
        text = self._generate(to_template_messages(messages), **kwargs)

        def gen() -> ChatResponseGen:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                               delta=text)

        return gen()

    # Async variants run generation in a worker thread so the event loop stays free.
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        text = await asyncio.to_thread(self._generate,
                                       self._prompt_messages(prompt, formatted), **kwargs)
        return CompletionResponse(text=text)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        text = await asyncio.to_thread(self._generate,
                                       self._prompt_messages(prompt, formatted), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = await asyncio.to_thread(self._generate, to_template_messages(messages), **kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        text = await asyncio.to_thread(self._generate, to_template_messages(messages), **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                               delta=text)

        return gen()


__all__ = ["S3LocalLLM", "to_template_messages"]
