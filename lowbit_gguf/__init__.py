"""lowbit-gguf: extreme low-bit LLM quantization methods, deployed as GGUF files for a patched llama.cpp."""

__version__ = "0.1.0"
