"""``ChatS3``: a LangChain chat model around the same local causal LM the index uses.

Generation is greedy and local (no network), through the model's chat template, and holds
the model's lock, so it never overlaps a scan or a search on the shared torch module.
Share the retriever's model with :meth:`ChatS3.from_index` to load it only once.

Example:
    >>> from langchain_s3 import ChatS3, S3Retriever
    >>> retriever = S3Retriever.from_texts(["The secret code word is Zanzibar."])
    >>> llm = ChatS3.from_index(retriever, max_new_tokens=16)
    >>> reply = llm.invoke("What is the capital of France?")
    >>> type(reply).__name__, len(reply.content.strip()) > 0  # the text differs by dtype
    ('AIMessage', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, InstanceOf, StrictInt, model_validator

from s3_retriever import (
    DEFAULT_MODEL,
    MAX_NEW_TOKENS,
    LoadedModel,
    S3Index,
    generate_text,
    load_model,
)

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


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop or [] if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class ChatS3(BaseChatModel):
    """Greedy local chat generation with the s3-retriever model (default: SmolLM2-135M).

    Attributes:
        model: a model name/path for :func:`~s3_retriever.load_model`; giving a
            :class:`~s3_retriever.LoadedModel` instead uses it as is (no second load).
        lm: the loaded model (excluded from serialisation).
        device, dtype: where and how to load ``model`` when it is a name.
        max_new_tokens: generation length cap; can also be given per call
            (``llm.invoke(msgs, max_new_tokens=8)``).

    Example:
        >>> llm = ChatS3(model="smollm2-135m", max_new_tokens=16)
        >>> reply = llm.invoke([("system", "Answer with one word."),
        ...                     ("human", "What colour is grass?")])
        >>> reply.usage_metadata["output_tokens"] <= 16
        True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid",
                              protected_namespaces=())

    model: str = DEFAULT_MODEL
    lm: InstanceOf[LoadedModel] | None = Field(default=None, exclude=True, repr=False)
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: Annotated[StrictInt, Field(gt=0)] = MAX_NEW_TOKENS

    @model_validator(mode="before")
    @classmethod
    def _accept_loaded_model(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("model"), LoadedModel):
            data = dict(data)
            data["lm"] = data.pop("model")
            data["model"] = data["lm"].model_id
        return data

    @model_validator(mode="after")
    def _load(self) -> ChatS3:
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
            >>> llm = ChatS3.from_index(retriever, max_new_tokens=32)
            >>> llm.lm is retriever.index.lm
            True
        """
        if not isinstance(index, S3Index):
            index = getattr(index, "index", None)
        if not isinstance(index, S3Index):
            raise TypeError("from_index takes an S3Index or a retriever holding one")
        return cls(model=index.lm, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "s3-retriever-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_new_tokens": self.max_new_tokens}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        """Greedy generation for ``messages``; the reply is cut at the first ``stop`` string."""
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ls_")}
        max_new = kwargs.pop("max_new_tokens", self.max_new_tokens)
        if kwargs:
            raise TypeError(f"unknown generation arguments {sorted(kwargs)}; ChatS3 takes "
                            "max_new_tokens and stop")
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new!r}")
        lm = self.lm
        assert lm is not None  # set by the validator
        raw, n_prompt = generate_text(lm, to_chat_messages(messages), max_new_tokens=max_new)
        n_out = len(lm.tokenizer(raw, add_special_tokens=False)["input_ids"])
        text, stopped = _cut_at_stop(raw, stop)
        finish = "stop" if stopped or n_out < max_new else "length"
        usage = UsageMetadata(input_tokens=n_prompt, output_tokens=n_out,
                              total_tokens=n_prompt + n_out)
        message = AIMessage(content=text, usage_metadata=usage,
                            response_metadata={"model_name": self.model,
                                               "finish_reason": finish})
        return ChatResult(generations=[ChatGeneration(message=message)])


__all__ = ["ChatS3", "to_chat_messages"]
