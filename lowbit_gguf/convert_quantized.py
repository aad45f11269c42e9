"""llama.cpp's converter on a checkpoint whose linears are quantized in a format it does not know (AQLM, VPTQ): each
such linear is decoded to a float weight at the step where the converter dequantizes the formats it knows
(ModelBase.dequant_model), and the rest of the conversion is the converter's own. A VPTQ vector covers v rows
consecutive in Hugging Face's order, which Llama's RoPE permutation of q/k rows would split: for VPTQ the converter
keeps those rows as they are (its own undo_permute switch) and the file says lowbit_gguf.rope_type = neox.

    python -m lowbit_gguf.convert_quantized UPSTREAM_DIR MODEL_DIR [the converter's arguments]

It runs in the converter's process, beside the gguf-py that ships with it (lowbit_gguf.gguf.convert starts it).
"""

import runpy
import sys
from pathlib import Path

from lowbit_gguf.checkpoints import AQLM_SUFFIXES, VPTQ_SUFFIXES


def aqlm_weight(codes, codebooks, scales):
    """W [d_out, d_in] of one AQLM linear as the checkpoint stores it (out-groups of 1; codes signed)."""
    from lowbit_gguf.additive import additive_decode

    m, k, _, g = codebooks.shape
    return additive_decode(codes.long() % k, codebooks.reshape(m, k, g), scales.reshape(-1))


def vptq_weight(model_tensors: dict, stem: str, qconfig: dict):
    """W [d_out, d_in] of one VPTQ linear, through the importer's reader (lowbit_gguf.checkpoints)."""
    from lowbit_gguf.checkpoints import vptq_config_of, vptq_layer, vptq_payload
    from lowbit_gguf.methods.vptq import decode

    layer = vptq_layer(qconfig, stem) or {}
    v = int(layer["vector_lens"][1])
    indices = eager(model_tensors[f"{stem}.indices"]())
    shape = (int(layer.get("out_features") or indices.shape[1] * v), int(layer["group_size"]))
    get = lambda name: eager(model_tensors[name]()) if name in model_tensors else None  # noqa: E731
    config = vptq_config_of(layer, stem, shape)
    return decode(vptq_payload(get, stem, shape, layer, config), config)


def replace_by_decoded(model_tensors: dict, marker: str, suffixes: tuple[str, ...], weight) -> None:
    """Replace each quantized linear's tensors (those with `marker`, then any of `suffixes`) in the converter's
    tensor table by its decoded weight(original table, stem) in f16, where the first of them stood (the file keeps a
    float checkpoint's tensor order)."""
    original = dict(model_tensors)
    stems = {n.removesuffix(f".{marker}") for n in original if n.endswith(f".{marker}")}
    table = {}
    for name, tensor in original.items():
        stem = next((name.removesuffix(f".{s}") for s in suffixes if name.endswith(f".{s}")), None)
        if stem not in stems:
            table[name] = tensor
        elif f"{stem}.weight" not in table:
            table[f"{stem}.weight"] = lambda stem=stem: weight(original, stem).half()
    model_tensors.clear()
    model_tensors.update(table)


def decode_aqlm(model, qconfig: dict) -> None:
    """model: the converter's ModelBase, its tensor table not yet dequantized."""
    replace_by_decoded(model.model_tensors, "codes", AQLM_SUFFIXES, lambda tensors, stem: aqlm_weight(
        *(eager(tensors[f"{stem}.{s}"]()) for s in AQLM_SUFFIXES)))


def decode_vptq(model, qconfig: dict) -> None:
    replace_by_decoded(model.model_tensors, "indices", VPTQ_SUFFIXES,
                       lambda tensors, stem: vptq_weight(tensors, stem, qconfig))
    if getattr(model, "undo_permute", False):  # Llama's q/k rows stay in Hugging Face's order, RoPE follows
        model.undo_permute = False
        model.gguf_writer.add_string("lowbit_gguf.rope_type", "neox")


def eager(tensor):
    from conversion.base import LazyTorchTensor

    return LazyTorchTensor.to_eager(tensor) if isinstance(tensor, LazyTorchTensor) else tensor


DECODERS = {"aqlm": decode_aqlm, "vptq": decode_vptq}


def main() -> None:
    upstream, argv = Path(sys.argv[1]), sys.argv[2:]
    sys.path[:0] = [str(upstream), str(upstream / "gguf-py")]
    from conversion.base import ModelBase

    dequant_model = ModelBase.dequant_model

    def dequant_with_lowbit_formats(self):
        qconfig = self.hparams.get("quantization_config")
        method = qconfig.get("quant_method") if isinstance(qconfig, dict) else None
        if method in DECODERS:
            DECODERS[method](self, qconfig)
            del self.hparams["quantization_config"]  # decoded: a float checkpoint from here on
        return dequant_model(self)

    ModelBase.dequant_model = dequant_with_lowbit_formats
    sys.argv = [str(upstream / "convert_hf_to_gguf.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
