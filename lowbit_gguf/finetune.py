"""End-to-end fine-tuning of a quantized GGUF against its float model (AQLM's global fine-tuning stage).

Block-by-block quantization makes each block match the float block on its own inputs, but the errors still
compound through the depth. The reference AQLM implementation therefore tunes every layer's codebooks and
scales and the model's norms together, codes fixed, so that the quantized model's next-token distribution
matches the float model's (KL divergence) on calibration text. finetune_gguf does this for a lowbit GGUF of any
method that names trainable payload parts (MethodSpec.finetune_keys) and writes a new GGUF with the same codes:
the file's tensor types, size and speed do not change.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import gguf
from lowbit_gguf.settings import (DEFAULT_CALIBRATION, DEFAULT_HELDOUT, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN,
                                  FINETUNE_BATCH, FINETUNE_EPOCHS, FINETUNE_LR, FINETUNE_PATIENCE)
from lowbit_gguf.errors import BadGGUF, LowbitError

SAVE_EVERY = 8  # optimizer steps between checkpoints
EVAL_EVERY = 16  # optimizer steps between held-out checks (early stopping)
# Cosine similarity a stored decode must have with the model's float weight: about 0.5 and more for 1-2 bit
# AQLM layers, about 0 for another model's weight of the same shape.
MIN_SIMILARITY = 0.2


@dataclass
class FinetuneReport:
    gguf: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # KL per step (nats per token), resumed steps included
    heldout: list[float] = field(default_factory=list)  # held-out KL before training and at every check
    best_step: int = 0  # the step whose state was written (lowest held-out KL)
    seconds: float = 0.0


def read_method(reader: gguf.GGUFReader, path: Path):
    """(MethodSpec, config) that a lowbit GGUF was quantized with, from its lowbit_gguf.* metadata."""
    from lowbit_gguf.methods import get_method

    method, config = reader.get_field("lowbit_gguf.method"), reader.get_field("lowbit_gguf.config")
    if method is None or config is None:
        raise BadGGUF(f"{path} was not written by lowbit-gguf quantize (no lowbit_gguf.method/config metadata)")
    spec = get_method(method.contents())
    try:
        return spec, spec.config_type(**json.loads(config.contents()))
    except (TypeError, ValueError) as exc:
        raise BadGGUF(f"{path}: its {spec.name} config {config.contents()!r} is not readable: {exc}") from exc


def read_quantized_layers(path: Path, reader: gguf.GGUFReader, model, spec, config) -> dict:
    """{module name: QuantizedLinear} for every block linear of `model` (Hugging Face order of rows), read
    from the lowbit GGUF at path. llama.cpp's converter permutes the rows of Llama's q/k weights; the row order
    taken is the one whose decode is closest to the model's float weight."""
    from lowbit_gguf.gguf.inspect import read_lowbit_weights
    from lowbit_gguf.gguf.write import head_counts_of, row_orders, tensor_names_of
    from lowbit_gguf.methods import QuantizedLinear
    from lowbit_gguf.blocks import block_linears, decoder_blocks

    arch, names = tensor_names_of(reader, path)
    head_counts = head_counts_of(reader, arch)
    packed = read_lowbit_weights(path)
    layers = {}
    for i, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            module = f"model.layers.{i}.{name}"
            gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
            weight = packed.get(gguf_name)
            if weight is None:
                raise BadGGUF(f"{path}: '{gguf_name}' is missing or not in a lowbit type")
            if (weight.d_out, weight.n_per_row) != tuple(linear.weight.shape):
                raise LowbitError(f"{path}: '{gguf_name}' is [{weight.d_out}, {weight.n_per_row}], the model's "
                                  f"{module} is {list(linear.weight.shape)}: the file was not made from this model")
            stored = spec.decode(spec.unpack(weight, config), config)
            w = linear.weight.detach().float()
            orders = row_orders(weight.d_out, head_counts)
            # cosine, not the error norm: the Hessian-weighted objective may leave an error larger than the weight
            similarity = [torch.cosine_similarity(stored[np.argsort(p)].flatten(), w.flatten(), 0).item()
                          for p in orders]
            order = orders[int(np.argmax(similarity))]
            if not max(similarity) > MIN_SIMILARITY:
                raise LowbitError(f"{path}: '{gguf_name}' does not decode to anything close to {module} of the "
                                  "model: the file was not made from this model")
            to_model_order = np.argsort(order)
            weight = weight.in_model_order(order)
            bits = 8 * (weight.codes.nbytes + sum(s.nbytes for s in weight.sides.values())) / w.numel()
            # the decode is row by row: the stored decode in the model's row order is the permuted payload's
            layers[module] = QuantizedLinear(spec.unpack(weight, config), stored[to_model_order], bits)
    return layers


def load_norms(path: Path, reader: gguf.GGUFReader, model) -> None:
    """Copy the file's norm weights (tuned when the blocks were quantized) into the model."""
    from lowbit_gguf.gguf.write import tensor_names_of

    _, names = tensor_names_of(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                continue
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            t = tensors.get(gguf_name)
            if t is None:
                raise BadGGUF(f"{path} lacks '{gguf_name}', the model's {name}")
            data = torch.from_numpy(np.array(t.data, np.float32)).reshape(p.shape)
            p.copy_(data)


def finetune_gguf(source: Path, model_dir: Path, out: Path, *, epochs: int = FINETUNE_EPOCHS,
                  lr: float = FINETUNE_LR, batch: int = FINETUNE_BATCH,
                  calib_text: str | list[str] = DEFAULT_CALIBRATION,
                  n_samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                  n_heldout: int = DEFAULT_HELDOUT, patience: int = FINETUNE_PATIENCE,
                  checkpoint_dir: Path | None = None, save_decoded: Path | None = None,
                  embedding_type: str = "q8_0", seed: int = 0, device: str = "cpu",
                  progress: bool = True) -> FinetuneReport:
    """Fine-tune the quantized GGUF `source` end to end against the float model in model_dir and write the
    result to out. Both models train on `device`. An interrupted run resumes from checkpoint_dir (default:
    OUT.checkpoint), on any device. Every EVAL_EVERY steps the KL on the held-out windows is measured; the
    state with the lowest is written, and training stops after `patience` checks without improvement."""
    from torch.func import functional_call
    from tqdm import tqdm

    from lowbit_gguf.calibration import model_calibration_set
    from lowbit_gguf.evaluate import load_hf_model
    from lowbit_gguf.gguf.convert import check_model_dir
    from lowbit_gguf.gguf.inspect import open_gguf
    from lowbit_gguf.export import export_gguf
    from lowbit_gguf.files import save_torch
    from lowbit_gguf.blocks import Checkpoint
    from lowbit_gguf.training import EarlyStopping, mean_over_batches

    started = time.time()
    source, model_dir, out = Path(source), Path(model_dir), Path(out)
    if epochs < 1 or batch < 1 or not lr > 0:
        raise LowbitError(f"fine-tuning needs epochs >= 1, batch >= 1 and lr > 0 (got {epochs}, {batch}, {lr})")
    check_model_dir(model_dir)
    reader = open_gguf(source)  # a readable GGUF, or a clear BadGGUF
    spec, config = read_method(reader, source)
    if not spec.finetune_keys or spec.unpack is None:
        raise LowbitError(f"{spec.name} files have nothing to fine-tune end to end (only AQLM's codebooks and "
                          "scales are trained, codes fixed)")
    calibration = model_calibration_set(model_dir, calib_text, n_samples, seq_len, n_heldout)
    tokens, heldout = calibration.train, calibration.heldout
    teacher = load_hf_model(model_dir).eval()
    student = load_hf_model(model_dir)
    layers = read_quantized_layers(source, reader, student, spec, config)
    load_norms(source, reader, student)
    quantized_in = reader.get_field("lowbit_gguf.quantize_seconds")
    del reader

    teacher.to(device)
    student.to(device)
    for r in layers.values():
        r.payload = {k: v.to(device) for k, v in r.payload.items()}
    for p in list(teacher.parameters()) + list(student.parameters()):
        p.requires_grad_(False)
    norms = {name: p for name, p in student.named_parameters() if "norm" in name}
    trainable = {module: {k: r.payload[k].float() for k in spec.finetune_keys} for module, r in layers.items()}
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".checkpoint")
    Checkpoint(checkpoint_dir, {"stage": "end-to-end fine-tuning", "source": source.name,
                                "source_bytes": source.stat().st_size, "epochs": epochs, "lr": lr, "batch": batch,
                                "seed": seed, "patience": patience,
                                "calibration": calibration.fingerprint()})
    state_path = checkpoint_dir / "finetune.pt"
    losses, start = [], 0
    state = torch.load(state_path, weights_only=True, map_location=device) if state_path.exists() else None
    if state is not None:
        trainable, losses, start = state["trainable"], state["losses"], state["step"]
        with torch.no_grad():
            for name, value in state["norms"].items():
                norms[name].copy_(value)
    params = [t.requires_grad_(True) for entry in trainable.values() for t in entry.values()]
    params += [p.requires_grad_(True) for p in norms.values()]
    opt = torch.optim.Adam(params, lr=lr)
    stopping = EarlyStopping(params, patience)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        stopping.load_state_dict(state["stopping"])

    def student_logits(ids):
        weights = {f"{module}.weight": spec.decode({**layers[module].payload, **t}, config)
                   for module, t in trainable.items()}
        return functional_call(student, weights, (ids,), {"use_cache": False}).logits.float()

    def kl_of_rows(start: int, stop: int) -> float:
        ids = heldout[start:stop].to(device)
        target = torch.log_softmax(teacher(ids, use_cache=False).logits.float(), dim=-1)
        return kl_per_token(student_logits(ids), target).item()

    def heldout_kl() -> float:
        with torch.no_grad():
            return mean_over_batches(kl_of_rows, 0, len(heldout), batch)

    if len(heldout) and state is None:
        stopping.update(heldout_kl())
    steps_per_epoch = math.ceil(len(tokens) / batch)
    total = epochs * steps_per_epoch
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"fine-tuning ({spec.name}, KL)", unit="step",
               disable=not progress)
    student.train()
    for step in bar:
        epoch, k = divmod(step, steps_per_epoch)
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed + epoch), device="cpu")
        ids = tokens[order[k * batch:(k + 1) * batch]].to(device)
        with torch.no_grad():
            target = torch.log_softmax(teacher(ids, use_cache=False).logits.float(), dim=-1)
        loss = kl_per_token(student_logits(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(kl=f"{losses[-1]:.4f}")
        if len(heldout) and ((step + 1) % EVAL_EVERY == 0 or step + 1 == total):
            stop = stopping.update(heldout_kl(), step + 1)
            bar.set_postfix(kl=f"{losses[-1]:.4f}", heldout=f"{stopping.history[-1]:.4f}")
            if stop:
                break
        if (step + 1) % SAVE_EVERY == 0 and step + 1 < total:
            save_torch({"step": step + 1, "losses": losses, "optimizer": opt.state_dict(),
                        "trainable": {m: {k: v.detach().cpu() for k, v in t.items()} for m, t in trainable.items()},
                        "norms": {n: p.detach().cpu() for n, p in norms.items()},
                        "stopping": stopping.state_dict()}, state_path, "the fine-tuning checkpoint")
    bar.close()
    if len(heldout):
        stopping.restore_best()
    best_step = stopping.best_step if len(heldout) else len(losses)

    student.eval().to("cpu")
    with torch.no_grad():
        linears = dict(student.named_modules())
        for module, r in layers.items():
            r.payload = {k: trainable[module].get(k, v).detach().to("cpu", v.dtype) for k, v in r.payload.items()}
            r.decoded = spec.decode(r.payload, config)
            linears[module].weight.copy_(r.decoded.to(linears[module].weight.dtype))
    metadata = {} if quantized_in is None else {"quantize_seconds": quantized_in.contents()}
    metadata["finetune"] = json.dumps({"source": source.name, "epochs": epochs, "lr": lr, "batch": batch,
                                        "samples": n_samples, "seq_len": seq_len, "kl_first": round(losses[0], 5),
                                        "kl_last": round(losses[-1], 5), "best_step": best_step,
                                        "heldout_kl": [round(x, 5) for x in stopping.history],
                                        "seconds": round(time.time() - started, 1)})
    export_gguf(student, model_dir, layers, spec, config, out, metadata, save_decoded=save_decoded,
                embedding_type=embedding_type, progress=progress)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return FinetuneReport(out, len(losses), losses, heldout=stopping.history, best_step=best_step,
                          seconds=time.time() - started)


def kl_per_token(logits: torch.Tensor, target_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(float model || quantized model), in nats (llama-perplexity's KLD)."""
    logprobs = torch.log_softmax(logits, dim=-1).flatten(0, -2)
    return torch.nn.functional.kl_div(logprobs, target_logprobs.flatten(0, -2), log_target=True,
                                      reduction="batchmean")
