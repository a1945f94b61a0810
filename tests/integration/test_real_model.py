"""Integration: the embedded default model with the shipped SAEs and heads, end to end."""

from __future__ import annotations

import pytest
import torch

from s3_retriever import S3Index
from s3_retriever.model.hooks import capture_qk, decoder_layers, hookpoint_layer
from s3_retriever.retrieval.scan import question_queries, tokenize_document
from s3_retriever.sae.io import load_saes, shipped_sae_dir
from s3_retriever.sae.train import evaluate_sae
from tests.helpers import assert_grounded

pytestmark = pytest.mark.model

DOCS = {
    "curie": "Marie Curie was a Polish and naturalised-French physicist and chemist. She was "
             "born in Warsaw in 1867. She conducted pioneering research on radioactivity. "
             "She was the first woman to win a Nobel Prize.",
    "amazon": "The Amazon River in South America is the largest river by discharge volume of "
              "water in the world. It flows through Peru, Colombia and Brazil. The river "
              "basin is covered by the Amazon rainforest.",
    "bach": "Johann Sebastian Bach was a German composer of the Baroque period. He is known for "
            "the Brandenburg Concertos and the Goldberg Variations. He spent his final years "
            "as cantor in Leipzig.",
    "lighthouse": "The Lighthouse of Alexandria was built by the Ptolemaic Kingdom. It stood on "
                  "the island of Pharos. Its height was estimated at over 100 metres.",
}


@pytest.fixture(scope="module")
def index(lm):
    idx = S3Index.from_model(lm)
    idx.add_texts(list(DOCS.values()), [{"title": k} for k in DOCS], list(DOCS),
                  show_progress=False)
    return idx


def test_shipped_saes_encode_real_keys(lm):
    folder = shipped_sae_dir("smollm2-135m")
    assert folder is not None and (folder / "heads.json").is_file()
    saes = load_saes(folder)
    text = " ".join(DOCS.values())
    ids = lm.input_tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    for hp, sae in saes.items():
        layer = int(hp.split(".")[1])
        keys = capture_qk(lm.model, ids, layers=[layer]).keys[layer][0, 1:].float()
        acts, fid = sae.encode(keys, kind="key")
        assert fid.shape == (*keys.shape[:2], sae.cfg.k)
        assert evaluate_sae(sae, keys.reshape(-1, 64), kind="key")["fvu"] < 0.25


@pytest.mark.parametrize("question, doc, needle", [
    ("In which city was Marie Curie born?", "curie", "Warsaw"),
    ("Which river has the largest discharge of water?", "amazon", "discharge"),
    ("Where did Bach spend his final years?", "bach", "Leipzig"),
])
@pytest.mark.parametrize("mode", ["s3", "hybrid", "rerank"])
def test_finds_the_evidence(index, question, doc, needle, mode):
    spans = index.search(question, k=2, mode=mode)
    assert doc in [s.doc_id for s in spans[:2]]
    if mode != "s3":
        assert any(needle in s.text for s in spans)
    for s in spans:
        assert s.text == DOCS[s.doc_id][s.start_char:s.end_char]


def test_answer_is_kv_free_and_grounded(index):
    ans = index.answer("In which city was Marie Curie born?", budget_tokens=128)
    assert any("Warsaw" in s.text for s in ans.spans)
    assert_grounded(ans.text, [s.text for s in ans.spans])
    assert ans.spans and ans.prompt_tokens < 300  # the prompt holds spans, not the corpus


def test_round_trip_and_size(index, tmp_path, lm):
    q = "Where did the lighthouse stand?"
    before = index.search(q, k=3)
    loaded = S3Index.load(index.save(tmp_path / "idx"), model=lm)
    after = loaded.search(q, k=3)
    assert [(s.id, s.score) for s in after] == [(s.id, s.score) for s in before]
    st = index.stats()
    assert st["index_bytes_per_token"] * 20 < st["kv_bytes_per_token"]


def test_question_queries_are_pre_rope(index, lm):
    """The question's queries are ``q_proj`` of the attention input, before RoPE."""
    hookpoints = sorted({h.hookpoint for h in index.heads})
    question = "Marie Curie"
    q = question_queries(lm, question, hookpoints)
    assert set(q) == set(hookpoints)
    ids, _ = tokenize_document(lm.tokenizer, question)
    spec = lm.spec
    projected: dict[str, torch.Tensor] = {}
    handles = []
    for hp in hookpoints:
        attn = decoder_layers(lm.model)[hookpoint_layer(hp)].self_attn

        def grab(mod, args, kwargs, hp=hp):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            projected[hp] = mod.q_proj(hidden)

        handles.append(attn.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.inference_mode():
            lm.model(input_ids=lm.input_tensor(ids))
    finally:
        for h in handles:
            h.remove()
    n_sink = len(lm.sink_ids)
    for hp, v in q.items():
        assert v.shape == (len(ids), spec.n_heads, spec.head_dim) == (len(ids), 9, 64)
        want = projected[hp][0, n_sink:].float().cpu().reshape(v.shape)
        assert torch.allclose(v, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
