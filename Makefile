# One-step entry points; see README.md.
PYTHON ?= python3
MODEL_GGUF ?= $(HOME)/.cache/lowbit-gguf/demo/smollm2-f16.gguf

.PHONY: install runtime test test-all demo

install:
	bash tools/setup-system.sh
	$(PYTHON) -m pip install -q torch==2.13.0   # CPU wheel; a looser pin would pull a CUDA build
	$(PYTHON) -m pip install -q -e '.[test]'
	# the VPTQ reference package, for the import tests: its own dependencies are a GPU demo's
	$(PYTHON) -m pip install -q --no-deps vptq==0.0.5.post1

runtime: install
	lowbit-gguf runtime build

# The default suite: unit tests, C kernels against Python, tiny-model logits, default-model parity.
test: runtime
	$(PYTHON) -m pytest

# Everything, the slow end-to-end checks included.
test-all: runtime
	$(PYTHON) -m pytest -m ''

demo: runtime
	lowbit-gguf convert "$$(lowbit-gguf default-model)" -o $(MODEL_GGUF) --type f16
	lowbit-gguf inspect --summary $(MODEL_GGUF)
	lowbit-gguf ppl $(MODEL_GGUF) --chunks 16
	lowbit-gguf run $(MODEL_GGUF) -p "It is a truth universally acknowledged" -n 40
	lowbit-gguf bench $(MODEL_GGUF) -r 2
