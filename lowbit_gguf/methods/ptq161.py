"""PTQ1.61 (Zhao et al., 2025): a salient-channel mask, 4-bit salient weights, the rest binarized.

A one-dimensional mask over input channels, chosen from calibration activations (the input channels with
the largest max |x|, salient_ratio of them), splits a weight W [d_out, d_in]:
  - salient channels: 4-bit asymmetric round-to-nearest per output row, W^ = scale_i q + min_i;
  - the other channels: W^ = r1_i r2_j (alpha_i sign(W - mu_i) + mu_i), mu_i and alpha_i the mean and mean
    absolute deviation of the row's non-salient entries (sign(0) = +1), r1 per row and r2 per input channel.
After all linears of a block are quantized, alpha, r1 and r2 (mu frozen, signs and salient codes fixed) are
trained with AdamW so the quantized block matches the float block: on the float model's own activations and
on the quantized model's (the float block applied to the quantized input), each term an MSE minus the log of
the cosine similarity.

Stored (and decoded) per row: a = r1 alpha, m = r1 mu, scale, min (f16); per input channel r2 (f16); the
mask as one bit per input channel. In GGUF the weight is the PTQ161 tensor type (lowbit_gguf.gguf.types):
the row holds the sign bits, then the salient codes, in gathered channel order (salient channels first);
the runtime gathers each input vector into that order once per matmul, which costs d_in loads against
d_out * d_in weights, so the mask needs no change to the graph.

Optional preprocessing (the paper's restorative LoRA, lora_rank > 0, off by default: it quantizes the model
twice): quantize a copy, train a low-rank adapter on every linear of the quantized copy (next-token loss on
the calibration text, quantized weights frozen, the adapters kept where the held-out loss is lowest), add them
to the float model's weights, and quantize that merged model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit_gguf.bits import pack_indices
from lowbit_gguf.methods import MethodSpec, QuantizedLinear, StageContext, match_compact, register
from lowbit_gguf.training import BlockData, train_block

SALIENT_BITS = 4
SALIENT_LEVELS = 2**SALIENT_BITS - 1


@dataclass(frozen=True)
class PTQ161Config:
    salient_ratio: float = 0.2  # fraction of input channels kept in 4 bits (rounded to a multiple of 8)
    epochs: int = 8  # most block training passes over the calibration set (0: off)
    patience: int = 1  # epochs without a better held-out loss before block training stops
    lr: float = 5e-3
    batch: int = 4  # calibration sequences per training step
    weight_decay: float = 0.0  # AdamW's; r1 and r2 start at 1, so decay towards 0 would be a bias
    seed: int = 0
    lora_rank: int = 0  # restorative LoRA preprocessing (0: off)
    lora_steps: int = 64
    lora_lr: float = 5e-4
    lora_batch: int = 2
    lora_patience: int = 3  # held-out checks (every LORA_SAVE_EVERY steps) without improvement before it stops

    def __post_init__(self):
        if not 0 < self.salient_ratio < 1:
            raise ValueError(f"PTQ1.61 salient ratio must be between 0 and 1, got {self.salient_ratio}")
        if self.epochs < 0 or self.batch < 1 or self.lr <= 0 or self.lora_rank < 0 or self.lora_batch < 1:
            raise ValueError(f"invalid PTQ1.61 config {self}")

    @classmethod
    def parse(cls, text: str) -> PTQ161Config:
        """'s20': 20% salient input channels; 's20+lora16': with restorative LoRA preprocessing of rank 16."""
        m = match_compact(text, r"s(\d+(?:\.\d+)?)(?:\+lora(\d+))?", "PTQ1.61",
                          "s<salient percent>[+lora<rank>], e.g. s20 or s20+lora16")
        return cls(salient_ratio=float(m.group(1)) / 100, lora_rank=int(m.group(2) or 0))

    @property
    def name(self) -> str:
        return f"s{self.salient_ratio * 100:g}" + (f"+lora{self.lora_rank}" if self.lora_rank else "")


def n_salient(d_in: int, ratio: float) -> int:
    """Salient channels of a layer: ratio of d_in rounded to a multiple of 8 (whole bytes in the row),
    at least 8 and leaving at least 8 to binarize."""
    if d_in % 8 or d_in < 16:
        raise ValueError(f"PTQ1.61 needs an input size that is a multiple of 8 and at least 16, got {d_in}")
    return min(max(8 * round(ratio * d_in / 8), 8), d_in - 8)


def bits_per_weight(d_out: int, d_in: int, n_sal: int) -> float:
    codes = d_out * (d_in + (SALIENT_BITS - 1) * n_sal)  # 1 bit per weight + 3 more per salient weight
    row_params = d_out * 4 * 16
    column = d_in * 16 + d_in  # r2 in f16, the mask
    return (codes + row_params + column) / (d_out * d_in)


def assemble(mask, salient_codes, signs, a, m, scale, lo, col) -> torch.Tensor:
    """W^ [d_out, d_in] from its parts; differentiable in a, m and col (the trained parameters)."""
    d_out = signs.shape[0]
    binary = col[None, :] * (a[:, None] * (2 * signs.float() - 1) + m[:, None])
    salient = scale[:, None] * salient_codes.float() + lo[:, None]
    out = binary.new_empty(d_out, mask.numel())
    out[:, mask] = salient
    out[:, ~mask] = binary
    return out


def stored_row_params(payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """[d_out, 4] f16: binary scale a = r1 alpha, binary offset m = r1 mu, salient scale, salient min."""
    r1 = payload["r1"].float()
    return torch.stack([r1 * payload["alpha"].float(), r1 * payload["mu"].float(),
                        payload["salient_scale"].float(), payload["salient_min"].float()], 1).half()


def stored_col_scale(payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """[d_in] f16: r2 on the binarized channels, 1 on the salient ones (unused there)."""
    col = torch.ones(payload["mask"].numel(), device=payload["mask"].device)
    col[~payload["mask"]] = payload["r2"].float()
    return col.half()


def decode(payload: dict[str, torch.Tensor], config: PTQ161Config | None = None) -> torch.Tensor:
    a, m, scale, lo = stored_row_params(payload).float().unbind(1)
    col = stored_col_scale(payload).float()[~payload["mask"]]
    return assemble(payload["mask"], payload["salient_codes"], payload["signs"], a, m, scale, lo, col)


def quantize(weight: torch.Tensor, input_absmax: torch.Tensor | None, config: PTQ161Config) -> QuantizedLinear:
    if input_absmax is None:
        raise ValueError("PTQ1.61 picks salient channels from calibration activations (max |x| per channel)")
    w = weight.detach().float()
    d_out, d_in = w.shape
    n_sal = n_salient(d_in, config.salient_ratio)
    mask = torch.zeros(d_in, dtype=torch.bool, device=w.device)
    mask[torch.argsort(input_absmax.float(), descending=True, stable=True)[:n_sal]] = True

    ws = w[:, mask]  # [d_out, n_sal]
    lo, hi = ws.amin(1), ws.amax(1)
    scale = ((hi - lo) / SALIENT_LEVELS).clamp_min(1e-12)  # a constant row gets codes 0 and decodes to lo
    codes = torch.round((ws - lo[:, None]) / scale[:, None]).clamp_(0, SALIENT_LEVELS).to(torch.uint8)

    wb = w[:, ~mask]  # [d_out, d_in - n_sal]
    mu = wb.mean(1)
    alpha = (wb - mu[:, None]).abs().mean(1)
    payload = {
        "mask": mask,
        "salient_codes": codes,
        "signs": wb >= mu[:, None],  # sign(0) = +1
        "salient_scale": scale.half(),
        "salient_min": lo.half(),
        "mu": mu,  # frozen
        "alpha": alpha,  # trained, with r1 and r2
        "r1": w.new_ones(d_out),
        "r2": w.new_ones(d_in - n_sal),
    }
    return QuantizedLinear(payload, decode(payload, config), bits_per_weight(d_out, d_in, n_sal))


def _block_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE (relative to the target's power) minus the log of the mean per-token cosine similarity."""
    mse = (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(out, target, dim=-1).mean()
    return mse - torch.log(cos.clamp_min(1e-6))


def finetune_block(block, results: dict[str, QuantizedLinear], data: BlockData, config: PTQ161Config) -> None:
    """AdamW on every linear's alpha, r1 and r2 (signs, salient codes and mu fixed), against the float
    block's outputs on the float activations (data.float_targets) and on the quantized ones (data.targets),
    stopped early on the held-out windows."""
    if config.epochs <= 0:
        return
    trainable = {name: {k: r.payload[k].float().clone().requires_grad_(True) for k in ("alpha", "r1", "r2")}
                 for name, r in results.items()}
    params = [t for entry in trainable.values() for t in entry.values()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def weights():
        out = {}
        for name, t in trainable.items():
            p = results[name].payload
            r1 = t["r1"]
            out[f"{name}.weight"] = assemble(p["mask"], p["salient_codes"], p["signs"], r1 * t["alpha"],
                                             r1 * p["mu"], p["salient_scale"].float(), p["salient_min"].float(),
                                             t["r2"])
        return out

    def loss(out, rows):
        value = _block_loss(out, data.targets[rows])
        if data.float_targets is not None:
            value = value + _block_loss(out, data.float_targets[rows])
        return value

    train_block(block, params, opt, weights, loss, data, epochs=config.epochs, batch=config.batch,
                seed=config.seed, patience=config.patience)
    for name, t in trainable.items():
        payload = results[name].payload
        for k, v in t.items():
            payload[k] = v.detach()
        results[name].decoded = decode(payload, config)


def pack(payload: dict[str, torch.Tensor], config: PTQ161Config | None = None):
    """The payload in the PTQ161 type. Channels in gathered order (salient first, then the rest, each
    ascending); a row's bytes: sign bits of the binarized channels (bit j % 8 of byte j / 8, 1 = +1), then
    the salient 4-bit codes two per byte (low nibble first). The row keeps d_in / 8 bytes; the last
    3 * n_salient / 8 bytes of the codes spill into the salient_spill side tensor."""
    from lowbit_gguf.gguf.types import COL_SCALE, PTQ161, ROW_PARAMS, SALIENT_MASK, SALIENT_SPILL
    from lowbit_gguf.gguf.write import PackedWeight

    mask = payload["mask"].numpy()
    signs = payload["signs"].numpy()
    codes = payload["salient_codes"].numpy().astype(np.uint8)
    d_in = mask.size
    sign_bytes = pack_indices(signs, 1)  # [d_out, (d_in - n_sal) / 8]
    nibble_bytes = pack_indices(codes, 4)  # [d_out, n_sal / 2]
    stream = np.concatenate([sign_bytes, nibble_bytes], axis=1)
    return PackedWeight(
        PTQ161,
        codes=np.ascontiguousarray(stream[:, : d_in // 8]),
        sides={SALIENT_MASK: pack_indices(mask, 1).view(np.int8),
               SALIENT_SPILL: np.ascontiguousarray(stream[:, d_in // 8:]).view(np.int8),
               ROW_PARAMS: stored_row_params(payload).numpy(),
               COL_SCALE: stored_col_scale(payload).numpy()},
        n_per_row=d_in,
    )


class _LoRALinear(torch.nn.Module):
    """y = base(x) + x A^T B^T with base frozen; B starts at 0, so training starts from the base model."""

    def __init__(self, base: torch.nn.Linear, rank: int, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / base.in_features**0.5)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T) @ self.b.T


LORA_SAVE_EVERY = 16  # adapter training steps between checkpoints


def restorative_lora(model, calibration, config: PTQ161Config, context: StageContext) -> None:
    """The paper's quantization preprocessing: quantize a copy of the model, train low-rank adapters on the
    quantized copy, and add them to `model`'s float weights (in place). Off when config.lora_rank is 0.
    With context.checkpoint_dir, the first quantization pass, the adapter training (every LORA_SAVE_EVERY steps)
    and the result are saved there, and an interrupted run resumes where it stopped."""
    if config.lora_rank <= 0:
        return
    from dataclasses import asdict

    from lowbit_gguf.blocks import Checkpoint, block_linears, decoder_blocks
    from lowbit_gguf.files import save_torch

    folder = context.checkpoint_dir
    if folder is not None:
        Checkpoint(folder, {"stage": "restorative LoRA", "config": asdict(config),
                            "calibration": calibration.fingerprint()})  # refuses another run's folder
    if folder is not None and (folder / "deltas.pt").exists():
        deltas = torch.load(folder / "deltas.pt", weights_only=True)
    else:
        deltas = _train_lora_deltas(model, calibration, config, context)
        if folder is not None:
            save_torch(deltas, folder / "deltas.pt", "the restorative LoRA's weight changes")
    with torch.no_grad():
        for i, block in enumerate(decoder_blocks(model)):
            for name, linear in block_linears(block).items():
                linear.weight += deltas[f"{i}.{name}"].to(linear.weight.dtype)


def _train_lora_deltas(model, calibration, config: PTQ161Config, context: StageContext) -> dict:
    """{"block.linear": B A} of adapters trained with the next-token loss on a quantized copy of model, the
    ones with the lowest held-out loss (judged every LORA_SAVE_EVERY steps) when the calibration set has
    held-out windows."""
    import copy

    from tqdm import tqdm

    from lowbit_gguf.blocks import block_linears, decoder_blocks
    from lowbit_gguf.files import save_torch
    from lowbit_gguf.training import EarlyStopping, mean_over_batches

    folder, device, progress = context.checkpoint_dir, context.device, context.progress
    quantized = copy.deepcopy(model)
    context.quantize_model(quantized, calibration, None if folder is None else folder / "first_pass")
    gen = torch.Generator().manual_seed(config.seed)
    adapters = {}
    for i, block in enumerate(decoder_blocks(quantized)):
        for name, linear in block_linears(block).items():
            linear.weight.requires_grad_(False)
            adapter = _LoRALinear(linear, config.lora_rank, gen)
            parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
            setattr(parent, name.rpartition(".")[2], adapter)
            adapters[f"{i}.{name}"] = adapter
    for p in quantized.parameters():
        p.requires_grad_(False)
    params = [t for a in adapters.values() for t in (a.a, a.b)]
    for t in params:
        t.requires_grad_(True)
    quantized.to(device).train()
    opt = torch.optim.AdamW(params, lr=config.lora_lr, weight_decay=0.0)
    tokens, heldout = calibration.train.to(device), calibration.heldout.to(device)
    stopping = EarlyStopping(params, patience=config.lora_patience)

    def loss_of_rows(start: int, stop: int) -> float:
        rows = heldout[start:stop]
        return quantized(rows, labels=rows, use_cache=False).loss.item()

    def heldout_loss() -> float:
        with torch.no_grad():
            return mean_over_batches(loss_of_rows, 0, len(heldout), config.lora_batch)

    state_path = None if folder is None else folder / "adapters.pt"
    start = 0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        with torch.no_grad():
            for key, adapter in adapters.items():
                adapter.a.copy_(state["adapters"][key]["a"])
                adapter.b.copy_(state["adapters"][key]["b"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = state["step"]
        stopping.load_state_dict(state["stopping"])
    elif len(heldout):
        stopping.update(heldout_loss())

    bar = tqdm(range(start, config.lora_steps), initial=start, total=config.lora_steps, desc="restorative LoRA",
               unit="step", disable=not progress)
    for step in bar:
        rows = torch.randint(0, tokens.shape[0], (config.lora_batch,), generator=gen)
        loss = quantized(tokens[rows], labels=tokens[rows], use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % LORA_SAVE_EVERY == 0 or step + 1 == config.lora_steps:
            if len(heldout):
                stop = stopping.update(heldout_loss(), step + 1)
                bar.set_postfix(loss=f"{loss.item():.3f}", heldout=f"{stopping.history[-1]:.3f}")
                if stop:
                    break
            if state_path is not None and step + 1 < config.lora_steps:
                save_torch({"step": step + 1, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                            "adapters": {k: {"a": a.a.detach().cpu(), "b": a.b.detach().cpu()}
                                         for k, a in adapters.items()},
                            "stopping": stopping.state_dict()}, state_path, "the LoRA adapters' checkpoint")
    bar.close()
    if len(heldout):
        stopping.restore_best()
    return {key: (a.b @ a.a).detach().cpu() for key, a in adapters.items()}


METHOD = register(MethodSpec("ptq161", PTQ161Config, quantize, decode,
                    "PTQ1.61: salient input channels in 4 bits, the rest binarized with trained row and column "
                    "scales (s<percent salient>, e.g. s20)",
                    input_statistic="absmax", finetune_block=finetune_block, wants_float_targets=True, pack=pack,
                    preprocess=restorative_lora, presets={"fast": {"epochs": "2"}}))
