"""llama.cpp's converter on a checkpoint whose linears are quantized in a format it does not know (AQLM): each
such linear is decoded to a float weight at the step where the converter dequantizes the formats it knows
(ModelBase.dequant_model), and the rest of the conversion is the converter's own.

    python -m lowbit_gguf.convert_quantized UPSTREAM_DIR MODEL_DIR [the converter's arguments]

It runs in the converter's process, beside the gguf-py that ships with it (lowbit_gguf.gguf.convert starts it).
"""

import runpy
import sys
from pathlib import Path


def aqlm_weight(codes, codebooks, scales):
    """W [d_out, d_in] of one AQLM linear as the checkpoint stores it (out-groups of 1; codes signed)."""
    from lowbit_gguf.additive import additive_decode

    m, k, _, g = codebooks.shape
    return additive_decode(codes.long() % k, codebooks.reshape(m, k, g), scales.reshape(-1))


def decode_aqlm(model_tensors: dict) -> None:
    """Replace each linear's codes, codebooks and scales in the converter's tensor table by its decoded weight, where
    the first of them stood (the file keeps a float checkpoint's tensor order)."""
    stems = {n.removesuffix(".codes") for n in model_tensors if n.endswith(".codes")}
    table = {}
    for name, tensor in model_tensors.items():
        stem, _, suffix = name.rpartition(".")
        if stem not in stems or suffix not in ("codes", "codebooks", "scales"):
            table[name] = tensor
        elif f"{stem}.weight" not in table:
            parts = [model_tensors[f"{stem}.{s}"] for s in ("codes", "codebooks", "scales")]
            table[f"{stem}.weight"] = lambda parts=parts: aqlm_weight(*(eager(p()) for p in parts)).half()
    model_tensors.clear()
    model_tensors.update(table)


def eager(tensor):
    from conversion.base import LazyTorchTensor

    return LazyTorchTensor.to_eager(tensor) if isinstance(tensor, LazyTorchTensor) else tensor


DECODERS = {"aqlm": decode_aqlm}


def main() -> None:
    upstream, argv = Path(sys.argv[1]), sys.argv[2:]
    sys.path[:0] = [str(upstream), str(upstream / "gguf-py")]
    from conversion.base import ModelBase

    dequant_model = ModelBase.dequant_model

    def dequant_with_lowbit_formats(self):
        qconfig = self.hparams.get("quantization_config")
        method = qconfig.get("quant_method") if isinstance(qconfig, dict) else None
        if method in DECODERS:
            DECODERS[method](self.model_tensors)
            del self.hparams["quantization_config"]  # decoded: a float checkpoint from here on
        return dequant_model(self)

    ModelBase.dequant_model = dequant_with_lowbit_formats
    sys.argv = [str(upstream / "convert_hf_to_gguf.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
