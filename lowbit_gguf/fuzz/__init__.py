"""Fuzzing the patched runtime with malformed GGUF files: small valid files of every lowbit type, changed one way
each (header counts, dims, type ids, offsets, truncation, side tensors, codes, NaN and Inf, metadata) plus crafted
cases, each loaded and run through the runtime in a child process. A case passes when the runtime either runs it or
refuses it with an error; a signal, a hang or a sanitizer report is a failure. The Python readers (`inspect`, the
writer's reader) get every case too and must read it or raise BadGGUF.

The cases are written by hand-rolled GGUF serialisation (GGUFImage): gguf's writer refuses most malformed files,
which is what a fuzzer must write.

Three parts: `image` (the serialiser and the seed files), `mutations` (the mutation classes and the crafted cases),
`runner` (a case in a child process, the outcomes, the report, the command line of tools/fuzz-gguf).
"""

from lowbit_gguf.fuzz.image import HIDDEN, GGUFImage, TensorImage, f32_bytes, kv_pair, read_image, seed_image
from lowbit_gguf.fuzz.mutations import MUTATIONS, crafted_cases
from lowbit_gguf.fuzz.runner import Outcome, Report, fuzz, main, run_case

__all__ = ["HIDDEN", "GGUFImage", "TensorImage", "f32_bytes", "kv_pair", "read_image", "seed_image", "MUTATIONS",
           "crafted_cases", "Outcome", "Report", "fuzz", "main", "run_case"]
