# One-step entry points; see README.md.
PYTHON ?= python3
DEMO ?= $(HOME)/.cache/lowbit-gguf/demo

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

# The product in about 7 minutes on 2 cores: the default model quantized to 2 bits (VPTQ v8k256r256, fast preset),
# measured beside F16 and llama.cpp's IQ2_XXS in one table (perplexity, KLD, size, tokens/s), then a short generation.
demo: runtime
	lowbit-gguf quantize "$$(lowbit-gguf default-model)" --method vptq --config v8k256r256 --preset fast \
		-o $(DEMO)/vptq-v8k256r256-fast.gguf
	lowbit-gguf inspect --summary $(DEMO)/vptq-v8k256r256-fast.gguf
	lowbit-gguf bench-suite --demo --add-file vptq-v8k256r256-fast=$(DEMO)/vptq-v8k256r256-fast.gguf --out $(DEMO)
	lowbit-gguf run $(DEMO)/vptq-v8k256r256-fast.gguf -p "It is a truth universally acknowledged" -n 40
