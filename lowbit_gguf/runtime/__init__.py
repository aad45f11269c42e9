"""The patched llama.cpp runtime: `build` makes it, `library` calls it through cffi."""

from lowbit_gguf.runtime.build import BuildOptions, RuntimeBuild, build_runtime, find_build
from lowbit_gguf.runtime.library import Model, dequantize, lowbit_dequantize, lowbit_mul_mat, perplexity, type_table

__all__ = ["BuildOptions", "RuntimeBuild", "build_runtime", "find_build", "Model", "dequantize", "lowbit_dequantize",
           "lowbit_mul_mat", "perplexity",
           "type_table"]
