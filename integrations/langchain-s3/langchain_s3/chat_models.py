"""``ChatS3``: a LangChain chat model around the same local causal LM the index uses.

Generation is local (no network), goes through the model's chat template, streams token by
token, and holds the model's lock, so it never overlaps a scan or a search on the shared
torch module. Share the retriever's model with :meth:`ChatS3.from_index` to load it once.

Example:
    >>> from langchain_s3 import ChatS3, S3Retriever
    >>> retriever = S3Retriever.from_texts(["The secret code word is Zanzibar."])
    >>> llm = ChatS3.from_index(retriever, max_tokens=16)
    >>> reply = llm.invoke("What is the capital of France?")
    >>> type(reply).__name__, len(reply.content.strip()) > 0  # the text differs by dtype
    ('AIMessage', True)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Annotated, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, InstanceOf, StrictInt, model_validator

from s3_retriever import (
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    Generation,
    LoadedModel,
    generate_reply,
    generation_options,
    load_model,
    stream_text,
)
from s3_retriever.adapters import is_index
from s3_retriever.generate import prompt_ids

_ROLES = {"system", "user", "assistant"}


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise ValueError(f"ChatS3 reads text only; got a {kind!r} content block")
    return "".join(parts)


def to_chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as ``{"role", "content"}`` dicts for the model's chat template.

    Example:
        >>> to_chat_messages([SystemMessage("Be brief."), HumanMessage("Hi")])
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    out = []
    for m in messages:
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            role = "assistant"
        elif isinstance(m, ChatMessage) and m.role in _ROLES:
            role = m.role
        else:
            raise ValueError(f"ChatS3 cannot take a {type(m).__name__}"
                             f"{f' with role {m.role!r}' if isinstance(m, ChatMessage) else ''}: "
                             "use system, human and AI messages (no tools)")
        out.append({"role": role, "content": _text(m)})
    if not out:
        raise ValueError("no messages to answer")
    return out


def _usage(g: Generation) -> UsageMetadata:
    return UsageMetadata(input_tokens=g.prompt_tokens, output_tokens=g.output_tokens,
                         total_tokens=g.prompt_tokens + g.output_tokens)


class ChatS3(BaseChatModel):
    """Local chat generation with the s3-retriever model (default: SmolLM2-135M).

    Greedy by default; ``stream``/``astream`` (and ``astream_events``) give the reply
    token by token. Every generation option is a field and can also be given per call
    (``llm.invoke(msgs, max_tokens=8, temperature=0.7)``), under the same names as the
    LlamaIndex ``S3LocalLLM``.

    Attributes:
        model: a model name/path for :func:`~s3_retriever.load_model`; giving a
            :class:`~s3_retriever.LoadedModel` instead uses it as is (no second load).
        lm: the loaded model (excluded from serialisation).
        device, dtype: where and how to load ``model`` when it is a name.
        max_tokens: the most tokens generated (``max_new_tokens`` is accepted too).
        temperature: ``None`` or 0: greedy; > 0: sampling at that temperature.
        top_p: nucleus sampling mass (only when sampling).
        stop: strings the reply is cut before (generation stops there).
        timeout: seconds a call may take, waiting for the model included; past it a
            ``TimeoutError`` is raised.
        max_retries: attempts more after a timeout (while no text was given out).
        seed: seeds the sampling, for reproducible replies.
        streaming: ``invoke`` streams internally (callbacks get each token).

    Example:
        >>> llm = ChatS3(model="smollm2-135m", max_tokens=16)
        >>> reply = llm.invoke([("system", "Answer with one word."),
        ...                     ("human", "What colour is grass?")])
        >>> reply.usage_metadata["output_tokens"] <= 16
        True
        >>> "".join(c.content for c in llm.stream("Hi!")) == llm.invoke("Hi!").content
        True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid",
                              protected_namespaces=())

    model: str = DEFAULT_MODEL
    lm: InstanceOf[LoadedModel] | None = Field(default=None, exclude=True, repr=False)
    device: str | None = None
    dtype: str | None = None
    max_tokens: Annotated[StrictInt, Field(gt=0)] = MAX_NEW_TOKENS
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    max_retries: Annotated[StrictInt, Field(ge=0)] = 0
    seed: StrictInt | None = None
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if isinstance(data.get("model"), LoadedModel):
            data["lm"] = data.pop("model")
            data["model"] = data["lm"].model_id
        if "max_new_tokens" in data:
            if "max_tokens" in data:
                raise ValueError("give max_tokens or max_new_tokens, not both")
            data["max_tokens"] = data.pop("max_new_tokens")
        return data

    @model_validator(mode="after")
    def _load(self) -> ChatS3:
        generation_options(self._defaults())  # the same checks as per call
        if self.lm is None:
            self.lm = load_model(self.model, self.device, self.dtype)
        return self

    @classmethod
    def from_index(cls, index: Any, **kwargs: Any) -> ChatS3:
        """A chat model sharing the model of an :class:`~s3_retriever.S3Index` or of an
        ``S3Retriever`` (anything with an ``index`` attribute holding one).

        Example:
            >>> from langchain_s3 import S3Retriever
            >>> retriever = S3Retriever.from_texts(["The secret code word is Zanzibar."])
            >>> llm = ChatS3.from_index(retriever, max_tokens=32)
            >>> llm.lm is retriever.index.lm
            True
        """
        if not is_index(index):
            index = getattr(index, "index", None)
        if not is_index(index):
            raise TypeError("from_index takes an S3Index (or ShardedIndex) or a retriever "
                            "holding one")
        return cls(model=index.lm, **kwargs)

    @property
    def max_new_tokens(self) -> int:
        """``max_tokens`` under the name :func:`s3_retriever.generate_text` uses."""
        return self.max_tokens

    @property
    def _llm_type(self) -> str:
        return "s3-retriever-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop,
                "seed": self.seed}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="s3", ls_model_type="chat",
                                 ls_model_name=kwargs.get("model") if isinstance(
                                     kwargs.get("model"), str) else self.model)
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, (int, float)):
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stop = stop or self.stop
        if stop:
            params["ls_stop"] = [stop] if isinstance(stop, str) else list(stop)
        return params

    # ----------------------------------------------------------------- token counts
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's own tokenizer (no special tokens)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        assert self.lm is not None
        return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage],
                                     tools: Sequence[Any] | None = None) -> int:
        """Prompt tokens ``messages`` take: their chat-template rendering, as generation
        sees it (equal to ``usage_metadata["input_tokens"]`` of a reply to them)."""
        if tools:
            raise ValueError("ChatS3 has no tool calling: count messages without tools")
        assert self.lm is not None
        return len(prompt_ids(self.lm, to_chat_messages(messages)))

    # ----------------------------------------------------------------- generation
    def _defaults(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "stop": self.stop, "timeout": self.timeout,
                "seed": self.seed, "max_retries": self.max_retries}

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fields, updated by the call's ``stop`` and keyword arguments."""
        kwargs = {k: v for k, v in kwargs.items()
                  if not k.startswith("ls_") and k != "stream"}
        model = kwargs.pop("model", None)
        if model is not None and model is not self.lm and model != self.model:
            raise ValueError(f"ChatS3 runs {self.model!r} and cannot switch models per "
                             f"call (got model={model!r}); make another ChatS3")
        if stop is not None:
            kwargs["stop"] = stop
        return generation_options(self._defaults(), kwargs)

    def _result(self, g: Generation) -> ChatResult:
        message = AIMessage(content=g.text, usage_metadata=_usage(g),
                            response_metadata={"model_name": self.model,
                                               "finish_reason": g.finish_reason})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _last_chunk(self, g: Generation | None) -> ChatGenerationChunk:
        assert g is not None  # set once the stream is exhausted
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=_usage(g), chunk_position="last",
            response_metadata={"model_name": self.model, "finish_reason": g.finish_reason}))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        """Reply to ``messages``; the reply is cut before the first ``stop`` string."""
        opts = self._options(stop, kwargs)
        assert self.lm is not None  # set by the validator
        return self._result(generate_reply(self.lm, to_chat_messages(messages), **opts))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        """:meth:`_generate` in a worker thread, so the event loop keeps running."""
        opts = self._options(stop, kwargs)
        assert self.lm is not None
        g = await asyncio.to_thread(generate_reply, self.lm, to_chat_messages(messages), **opts)
        return self._result(g)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """One chunk per new piece of text as the model generates it, then a last, empty
        chunk with the usage and the finish reason."""
        opts = self._options(stop, kwargs)
        assert self.lm is not None
        with stream_text(self.lm, to_chat_messages(messages), **opts) as stream:
            for delta in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            last = self._last_chunk(stream.generation)
        if run_manager:
            run_manager.on_llm_new_token("", chunk=last)
        yield last

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        """:meth:`_stream` for ``async for``: generation runs in a worker thread."""
        opts = self._options(stop, kwargs)
        assert self.lm is not None
        with stream_text(self.lm, to_chat_messages(messages), **opts) as stream:
            async for delta in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    await run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            last = self._last_chunk(stream.generation)
        if run_manager:
            await run_manager.on_llm_new_token("", chunk=last)
        yield last


__all__ = ["ChatS3", "to_chat_messages"]
