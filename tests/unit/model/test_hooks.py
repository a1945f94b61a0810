"""Pre-RoPE key/query capture (equal to keys recomputed by hand, early exit, cleanup) and the
hookpoint / stream names."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from s3_retriever.model.hooks import (
    QKHooks,
    attention_spec,
    capture_qk,
    decoder_layers,
    hookpoint_layer,
    hookpoint_name,
    stream_name,
)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=5,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8)
    return LlamaForCausalLM(cfg).eval()


def tiny_qwen3() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = Qwen3ForCausalLM(cfg).eval()
    # random norm weights, so a hook on k_proj instead of k_norm would be caught
    for layer in model.model.layers:
        layer.self_attn.k_norm.weight.data.uniform_(0.5, 1.5)
        layer.self_attn.q_norm.weight.data.uniform_(0.5, 1.5)
    return model


def tiny_gemma3() -> Gemma3ForCausalLM:
    """Gemma 3 applies its per-head q/k norms after moving the head axis first."""
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=48, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=16, sliding_window=8)
    model = Gemma3ForCausalLM(cfg).eval()
    for layer in model.model.layers:
        layer.self_attn.k_norm.weight.data.uniform_(0.5, 1.5)
        layer.self_attn.q_norm.weight.data.uniform_(0.5, 1.5)
    return model


def by_hand(model, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/queries of ``layer`` recomputed from the layer's input hidden state."""
    spec = attention_spec(model)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states[layer]
        lay = decoder_layers(model)[layer]
        x = lay.input_layernorm(hs)
        attn = lay.self_attn
        k = attn.k_proj(x).view(*x.shape[:2], spec.n_kv_heads, spec.head_dim)
        q = attn.q_proj(x).view(*x.shape[:2], spec.n_heads, spec.head_dim)
        if hasattr(attn, "k_norm"):
            k, q = attn.k_norm(k), attn.q_norm(q)
    return k, q


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen3, tiny_gemma3])
@pytest.mark.parametrize("n_tokens", [11, 4, 1])
def test_captured_equals_recomputed(make, n_tokens):
    # 4 and 1 tokens: as many tokens as query / kv heads for Gemma, whose layout is ambiguous
    model = make()
    ids = torch.randint(0, 128, (2, n_tokens))
    cap = capture_qk(model, ids, layers=[1, 3], queries=True)
    for layer in (1, 3):
        k, q = by_hand(model, ids, layer)
        torch.testing.assert_close(cap.keys[layer], k)
        torch.testing.assert_close(cap.queries[layer], q)


def test_early_exit_matches_full_forward_and_skips_later_layers():
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 9))
    ran = []
    handles = [lay.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
               for i, lay in enumerate(decoder_layers(model))]
    early = capture_qk(model, ids, layers=[2], queries=True, stop_early=True)
    assert ran == [0, 1, 2]
    ran.clear()
    full = capture_qk(model, ids, layers=[2], queries=True, stop_early=False)
    assert ran == [0, 1, 2, 3, 4]
    for h in handles:
        h.remove()
    torch.testing.assert_close(early.keys[2], full.keys[2])
    torch.testing.assert_close(early.queries[2], full.queries[2])


def test_gqa_groups():
    spec = attention_spec(tiny_llama())
    assert (spec.n_heads, spec.n_kv_heads, spec.head_dim) == (6, 2, 8)
    assert [spec.kv_group(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="out of range"):
        spec.kv_group(6)


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_no_hooks_left_after_exception():
    model = tiny_llama()
    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), QKHooks(model, [1, 2]):
        assert _n_hooks(model) == before + 2
        raise RuntimeError("boom")
    assert _n_hooks(model) == before
    # an error inside the forward (bad input) also leaves nothing behind
    with pytest.raises(IndexError):
        capture_qk(model, torch.tensor([[10_000]]), layers=[1])
    assert _n_hooks(model) == before


def test_bad_layers():
    model = tiny_llama()
    with pytest.raises(ValueError, match="out of range"):
        QKHooks(model, [7])
    with pytest.raises(ValueError, match="no layers"):
        QKHooks(model, [])
    with pytest.raises(ValueError, match="keys, queries or both"):
        QKHooks(model, [1], keys=False, queries=False)


def test_keys_only_capture_has_no_queries():
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 5))
    cap = capture_qk(model, ids, layers=[4, 0])
    assert sorted(cap.keys) == [0, 4] and cap.queries == {}
    for layer in (0, 4):
        torch.testing.assert_close(cap.keys[layer], by_hand(model, ids, layer)[0])


def test_hookpoint_and_stream_names():
    assert hookpoint_name(17) == "layers.17"
    assert hookpoint_layer("layers.17") == 17
    assert all(hookpoint_layer(hookpoint_name(i)) == i for i in (0, 5, 29))
    for bad in ("layers", "layers.x", "17"):
        with pytest.raises(ValueError, match="not of the form 'layers.N'"):
            hookpoint_layer(bad)
    assert stream_name("layers.17", 0) == "layers.17.kv0"
    assert stream_name(hookpoint_name(3), 2) == "layers.3.kv2"


@pytest.mark.model
def test_real_model_keys_equal_recomputed(lm):
    ids = torch.tensor([lm.tokenizer("The Eiffel Tower is in Paris.")["input_ids"]])
    cap = capture_qk(lm.model, ids, layers=[17], queries=True)
    k, q = by_hand(lm.model, ids, 17)
    torch.testing.assert_close(cap.keys[17].float(), k.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(cap.queries[17].float(), q.float(), atol=2e-2, rtol=2e-2)
    assert cap.keys[17].shape == (1, ids.shape[1], 3, 64)
