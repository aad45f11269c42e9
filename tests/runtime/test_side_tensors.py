"""Every side tensor of every lowbit type is checked before the runtime indexes it: a missing one, one of another
ggml type and one of another shape are refused with a message naming the tensor, both when a file is loaded and
when a weight reaches the kernels directly. Driven by the type table: a new method's sides are covered by its row
(and its tiny file or random weight in conftest). The checks that read a side's data are each method's own
(test_ptq161_runtime.py)."""

import numpy as np
import pytest

import gguf
from lowbit_gguf.errors import BadGGUF, LowbitError
from lowbit_gguf.gguf.types import LOWBIT_TYPES, METHODS
from conftest import rewrite_gguf, unchecked_packed
from lowbit_gguf.random_weights import random_packed
from runtime_parity import N_CTX

pytestmark = pytest.mark.runtime

# the tiny quantized file of each method (conftest fixtures)
TINY_FILES = {"aqlm": "tiny_aqlm", "ptq161": "tiny_ptq161", "vptq": "tiny_vptq"}
SIDES = [(method, side) for method in METHODS.values() for side in method.sides]


def _other_type(data: np.ndarray) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    return data.astype(np.float32), gguf.GGMLQuantizationType.F32


def _one_short(data: np.ndarray) -> np.ndarray:
    """One entry fewer along the innermost axis (ggml's ne[0]): a wrong shape, or a width no weight can have."""
    return np.ascontiguousarray(data[..., :-1])


@pytest.mark.model
@pytest.mark.parametrize("case", ["missing", "type", "shape"])
@pytest.mark.parametrize("method, side", SIDES, ids=[f"{m.name}-{s.suffix}" for m, s in SIDES])
def test_a_file_with_a_malformed_side_tensor_is_refused_at_load(method, side, case, request, tmp_path):
    from lowbit_gguf.runtime import Model

    name = f"blk.0.attn_k.{side.suffix}"

    def edit(tensor, data, ggml_type):
        if tensor != name:
            return data, ggml_type
        if case == "missing":
            return None
        return _other_type(data) if case == "type" else (_one_short(data), ggml_type)

    bad = rewrite_gguf(request.getfixturevalue(TINY_FILES[method.name])[0], tmp_path / "bad.gguf", edit)
    message = {"missing": f"needs the side tensor '{name}'", "type": f"'{name}' has type f32",
               "shape": f"'{name}' (has shape|is \\d+ bytes wide)"}[case]
    with pytest.raises(BadGGUF, match=message):
        Model(bad, n_ctx=N_CTX)


@pytest.mark.parametrize("case", ["type", "shape"])
@pytest.mark.parametrize("lowbit_type, side", [(t, s) for t in LOWBIT_TYPES for s in t.side_specs],
                         ids=[f"{t.name}-{s.suffix}" for t in LOWBIT_TYPES for s in t.side_specs])
def test_a_weight_with_a_malformed_side_tensor_is_refused_by_the_kernels(lowbit_type, side, case, runtime_build):
    from lowbit_gguf.runtime import lowbit_dequantize, lowbit_mul_mat

    packed = random_packed(lowbit_type)
    data = packed.sides[side.suffix]
    changed = _other_type(data)[0] if case == "type" else _one_short(data)
    bad = unchecked_packed(packed, sides={**packed.sides, side.suffix: changed})
    message = f"{side.suffix}.*type f32" if case == "type" else f"{side.suffix}.*(shape|wide)"
    with pytest.raises(LowbitError, match=message):
        lowbit_mul_mat(bad, np.ones((1, packed.n_per_row), dtype=np.float32))
    with pytest.raises(LowbitError, match=message):
        lowbit_dequantize(bad)
