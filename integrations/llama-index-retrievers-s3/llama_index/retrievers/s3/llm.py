"""``S3LocalLLM``: the local causal LM of an S3 index as a LlamaIndex LLM (offline).

Generation goes through the model's chat template, streams token by token, and holds the
model's lock so it never overlaps a scan or a search on the same model. Its options are
those of the LangChain ``ChatS3`` (``max_tokens``, ``temperature``, ``top_p``, ``stop``,
``timeout``, ``max_retries``, ``seed``), as fields and per call.

Example:
    >>> from llama_index.retrievers.s3 import S3LocalLLM
    >>> llm = S3LocalLLM("smollm2-135m", max_tokens=16)
    >>> reply = llm.complete("What is the capital of France?").text
    >>> isinstance(reply, str) and len(reply.strip()) > 0  # greedy text differs by dtype
    True
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

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

from s3_retriever import (
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    Generation,
    LoadedModel,
    TextStream,
    generate_reply,
    generation_options,
    load_model,
    stream_text,
)

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


def _usage(g: Generation) -> dict[str, Any]:
    """Token counts under the keys LlamaIndex's token counting reads."""
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.output_tokens,
            "total_tokens": g.prompt_tokens + g.output_tokens}


def _raw(g: Generation) -> dict[str, Any]:
    return {"finish_reason": g.finish_reason, "usage": _usage(g)}


def _chat_piece(text: str, delta: str) -> ChatResponse:
    """A streamed chat response: the reply so far and its new piece."""
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                        delta=delta)


def _last_completion(stream: TextStream) -> CompletionResponse:
    """The last streamed response: no new text, the counts of the finished reply."""
    g = stream.generation
    assert g is not None  # set once the stream is exhausted
    return CompletionResponse(text=g.text, delta="", additional_kwargs=_usage(g), raw=_raw(g))


def _last_chat(stream: TextStream) -> ChatResponse:
    """:func:`_last_completion` for chat."""
    g = stream.generation
    assert g is not None
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=g.text),
                        delta="", additional_kwargs=_usage(g), raw=_raw(g))


class S3LocalLLM(CustomLLM):
    """A local, offline LlamaIndex LLM around a :class:`~s3_retriever.LoadedModel`.

    Args:
        model: a loaded model (e.g. ``retriever.index.lm``, shared with the index) or a
            name/path for :func:`~s3_retriever.load_model` (default: the embedded
            ``"smollm2-135m"``).
        max_new_tokens: the most tokens generated per call (also ``metadata.num_output``);
            ``max_tokens`` is accepted for it.
        temperature: ``None`` or 0: greedy; > 0: sampling at that temperature.
        top_p: nucleus sampling mass (only when sampling).
        stop: strings the reply is cut before (generation stops there).
        timeout: seconds a call may take, waiting for the model included; past it a
            ``TimeoutError`` is raised.
        max_retries: attempts more after a timeout (while no text was given out).
        seed: seeds the sampling, for reproducible replies.
        device, dtype: used only when ``model`` is a name.
        **kwargs: other LlamaIndex LLM fields (``system_prompt``, ``callback_manager``, ...).

    Each option can also be given per call (``llm.complete(prompt, max_tokens=8)``).
    ``metadata.context_window`` is the model's context length. ``complete`` sends the
    prompt as one user message (after ``system_prompt`` when set) through the chat
    template; ``chat`` sends the messages as given; the ``stream_*`` variants yield a
    response per new piece of text (``delta``; ``text`` is the reply so far), then a last
    one with an empty delta and the token counts (``additional_kwargs``, as every
    response has).

    Example:
        >>> from llama_index.core import Document
        >>> from llama_index.core.query_engine import RetrieverQueryEngine
        >>> from llama_index.retrievers.s3 import S3Retriever
        >>> retriever = S3Retriever.from_defaults(
        ...     documents=[Document(text="The secret code word is Zanzibar.", id_="secret")])
        >>> llm = S3LocalLLM(retriever.index.lm)
        >>> engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        >>> response = engine.query("What is the secret code word?")
        >>> len(str(response)) > 0, response.source_nodes[0].node.node_id
        (True, 'secret:0-33')
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="The model's id.")
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, gt=0,
                                description="Tokens generated at most.")
    context_window: int = Field(default=8192, gt=0, description="The model's context length.")
    temperature: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="None or 0: greedy; > 0: sampling temperature.")
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Nucleus sampling mass (when sampling).")
    stop: list[str] | None = Field(default=None, description="Strings to stop before.")
    timeout: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Seconds a call may take.")
    max_retries: int = Field(default=0, ge=0, description="Attempts more after a timeout.")
    seed: int | None = Field(default=None, description="Seed of the sampling.")

    _lm: LoadedModel = PrivateAttr()

    def __init__(self, model: LoadedModel | str = DEFAULT_MODEL, *,
                 max_new_tokens: int | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 stop: str | Sequence[str] | None = None, timeout: float | None = None,
                 max_retries: int = 0, seed: int | None = None,
                 device: str | None = None, dtype: str | None = None, **kwargs: Any) -> None:
        lengths = {name: value for name, value in (("max_new_tokens", max_new_tokens),
                                                   ("max_tokens", max_tokens))
                   if value is not None}  # either name (not both), else the default
        opts = generation_options({
            **lengths, "temperature": temperature, "top_p": top_p, "stop": stop,
            "timeout": timeout, "max_retries": max_retries, "seed": seed})
        lm = model if isinstance(model, LoadedModel) else load_model(model, device, dtype)
        opts["stop"] = opts["stop"] or None
        super().__init__(model_name=lm.model_id, context_window=lm.max_length, **opts,
                         **kwargs)
        self._lm = lm

    @classmethod
    def class_name(cls) -> str:
        return "S3LocalLLM"

    @property
    def lm(self) -> LoadedModel:
        """The wrapped model."""
        return self._lm

    @property
    def max_tokens(self) -> int:
        """``max_new_tokens`` under the name LangChain and OpenAI-style APIs use."""
        return self.max_new_tokens

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           is_chat_model=True, model_name=self.model_name)

    # ----------------------------------------------------------------- generation
    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fields, updated by the call's keyword arguments."""
        defaults = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                    "top_p": self.top_p, "stop": self.stop, "timeout": self.timeout,
                    "max_retries": self.max_retries, "seed": self.seed}
        return generation_options(defaults, kwargs)

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt and not formatted:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _reply(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> Generation:
        return generate_reply(self._lm, messages, **self._options(kwargs))

    async def _areply(self, messages: list[dict[str, str]],
                      kwargs: dict[str, Any]) -> Generation:
        # in a worker thread, so the event loop keeps running
        return await asyncio.to_thread(generate_reply, self._lm, messages,
                                       **self._options(kwargs))

    @staticmethod
    def _completion(g: Generation) -> CompletionResponse:
        return CompletionResponse(text=g.text, additional_kwargs=_usage(g), raw=_raw(g))

    @staticmethod
    def _chat(g: Generation) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=g.text),
                            additional_kwargs=_usage(g), raw=_raw(g))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (sent as a user message through the chat template)."""
        return self._completion(self._reply(self._prompt_messages(prompt, formatted), kwargs))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply to ``messages`` through the chat template."""
        return self._chat(self._reply(to_template_messages(messages), kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        """:meth:`complete`, generating in a worker thread."""
        return self._completion(await self._areply(self._prompt_messages(prompt, formatted),
                                                   kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat`, generating in a worker thread."""
        return self._chat(await self._areply(to_template_messages(messages), kwargs))

    # ----------------------------------------------------------------- streaming
    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        """:meth:`complete`, token by token."""
        stream = stream_text(self._lm, self._prompt_messages(prompt, formatted),
                             **self._options(kwargs))

        def gen() -> CompletionResponseGen:
            with stream:
                for delta in stream:
                    yield CompletionResponse(text=stream.text, delta=delta)
            yield _last_completion(stream)

        return gen()

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """:meth:`chat`, token by token."""
        stream = stream_text(self._lm, to_template_messages(messages), **self._options(kwargs))

        def gen() -> ChatResponseGen:
            with stream:
                for delta in stream:
                    yield _chat_piece(stream.text, delta)
            yield _last_chat(stream)

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` for ``async for`` (generation in a worker thread)."""
        stream = stream_text(self._lm, self._prompt_messages(prompt, formatted),
                             **self._options(kwargs))

        async def gen() -> CompletionResponseAsyncGen:
            with stream:
                async for delta in stream:
                    yield CompletionResponse(text=stream.text, delta=delta)
            yield _last_completion(stream)

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` for ``async for`` (generation in a worker thread)."""
        stream = stream_text(self._lm, to_template_messages(messages), **self._options(kwargs))

        async def gen() -> ChatResponseAsyncGen:
            with stream:
                async for delta in stream:
                    yield _chat_piece(stream.text, delta)
            yield _last_chat(stream)

        return gen()


__all__ = ["S3LocalLLM", "to_template_messages"]
