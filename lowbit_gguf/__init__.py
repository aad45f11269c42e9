"""lowbit-gguf: extreme low-bit LLM quantization methods, deployed as GGUF files for a patched llama.cpp.

    from lowbit_gguf import quantize, AQLMConfig
    quantize("path/to/hf-model", AQLMConfig.parse("2x8")).save_gguf("model-aqlm-2x8.gguf")

See lowbit_gguf.api. The names below load on first use, so the command line starts without torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "quantize": "lowbit_gguf.api",
    "QuantizedModel": "lowbit_gguf.api",
    "AQLMConfig": "lowbit_gguf.methods.aqlm",
    "PTQ161Config": "lowbit_gguf.methods.ptq161",
    "RTNConfig": "lowbit_gguf.methods.rtn",
    "VPTQConfig": "lowbit_gguf.methods.vptq",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lowbit_gguf' has no attribute {name!r}")
