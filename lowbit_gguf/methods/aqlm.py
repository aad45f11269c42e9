"""AQLM: additive quantization (Egiazarian et al., 2024).

Each group of g consecutive input weights of one output row is the sum of M codewords, one from each of
M codebooks of 2^B entries shared by the layer, times a per-output-row scale:
    W[r, j*g:(j+1)*g] ~= s[r] * sum_m C[m, codes[r, j, m]]
The codes minimise tr((W^ - W) H (W^ - W)^T): residual k-means initialises the codebooks on W / s (s the row
L2 norms), then Adam steps on codebooks and scales alternate with a beam search over codes (input groups in
shuffled order, codebooks in turn, all output rows at once) until the relative gain falls below rel_tol.
Codebooks and scales are stored in f16; the decode uses the stored values.

After all linears of a block are quantized, its codebooks, scales and norms are fine-tuned (codes fixed)
to match the float block's outputs on the calibration activations, keeping the state that does best on the
held-out windows.

In GGUF a weight is its codes in one of the AQLM tensor types (aqlm_1x16, aqlm_2x8, aqlm_1x8, groups of
8), with the codebooks and row scales as side tensors (pack below; lowbit_gguf.gguf.types).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit_gguf.methods import MethodSpec, QuantizedLinear, match_compact, register
from lowbit_gguf.additive import additive_decode, beam_search_codes, objective
from lowbit_gguf.bits import pack_indices, unpack_indices
from lowbit_gguf.kmeans import kmeans
from lowbit_gguf.training import BlockData, finetune_payloads


@dataclass(frozen=True)
class AQLMConfig:
    num_codebooks: int = 2  # M
    nbits: int = 8  # B: 2^B codewords per codebook
    group_size: int = 8  # g
    beam_size: int = 4
    max_rounds: int = 6  # Adam + beam search rounds
    adam_steps: int = 50
    lr: float = 1e-3
    rel_tol: float = 1e-3  # stop when a round improves the objective by less than this fraction
    kmeans_iters: int = 20
    finetune_epochs: int = 3  # most block fine-tuning passes over the calibration set (0: off)
    finetune_patience: int = 1  # epochs without a better held-out loss before block fine-tuning stops
    finetune_lr: float = 1e-4
    finetune_batch: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.num_codebooks < 1 or not 1 <= self.nbits <= 16 or self.group_size < 1 or self.beam_size < 1:
            raise ValueError(f"invalid AQLM config {self}")

    @classmethod
    def parse(cls, text: str) -> AQLMConfig:
        """'2x8': 2 codebooks of 2^8 entries (groups of 8); '1x16'; '1x8'. Optional 'g<size>' suffix."""
        m = match_compact(text, r"(\d+)x(\d+)(?:g(\d+))?", "AQLM", "<codebooks>x<bits>, e.g. 2x8")
        group = int(m.group(3)) if m.group(3) else 8
        return cls(num_codebooks=int(m.group(1)), nbits=int(m.group(2)), group_size=group)

    @property
    def name(self) -> str:
        return f"{self.num_codebooks}x{self.nbits}" + (f"g{self.group_size}" if self.group_size != 8 else "")

    @property
    def codebook_size(self) -> int:
        return 2**self.nbits


def bits_per_weight(config: AQLMConfig, d_out: int, d_in: int) -> float:
    codes = config.num_codebooks * config.nbits / config.group_size
    codebooks = config.num_codebooks * config.codebook_size * config.group_size * 16 / (d_out * d_in)
    scales = 16 / d_in
    return codes + codebooks + scales


def decode(payload: dict[str, torch.Tensor], config: AQLMConfig) -> torch.Tensor:
    return additive_decode(payload["codes"], payload["codebooks"], payload["scales"])


def train_codebooks_and_scales(weight, hessian, codes, codebooks, scales, config):
    """Adam on codebooks and scales with the codes fixed, under the H-weighted objective."""
    cb = codebooks.clone().requires_grad_(True)
    sc = scales.clone().requires_grad_(True)
    opt = torch.optim.Adam([cb, sc], lr=config.lr)
    norm = objective(weight, hessian).clamp_min(1e-30)
    for _ in range(config.adam_steps):
        opt.zero_grad()
        loss = objective(decode({"codes": codes, "codebooks": cb, "scales": sc}, config) - weight, hessian) / norm
        loss.backward()
        opt.step()
    return cb.detach(), sc.detach()


def quantize(weight: torch.Tensor, hessian: torch.Tensor, config: AQLMConfig) -> QuantizedLinear:
    d_out, d_in = weight.shape
    g, n_cb, k = config.group_size, config.num_codebooks, config.codebook_size
    if d_in % g:
        raise ValueError(f"input size {d_in} is not a multiple of the AQLM group size {g}")
    gen = torch.Generator().manual_seed(config.seed)
    w = weight.detach().float()
    h = hessian.detach().float()
    # dead inputs must not make the objective flat
    h = h + 1e-6 * h.diagonal().mean() * torch.eye(d_in, device=h.device)

    scales = w.norm(dim=1).clamp_min(1e-8)  # [d_out]
    residual = (w / scales[:, None]).reshape(-1, g)  # [d_out * n_groups, g]
    codebooks = w.new_empty(n_cb, k, g)
    codes = torch.empty(d_out * (d_in // g), n_cb, dtype=torch.long, device=w.device)
    for m in range(n_cb):  # residual k-means
        codebooks[m], codes[:, m] = kmeans(residual, k, config.kmeans_iters, gen)
        residual = residual - codebooks[m][codes[:, m]]
    codes = codes.reshape(d_out, d_in // g, n_cb)

    def loss_of(c, cb, sc):
        return objective(decode({"codes": c, "codebooks": cb, "scales": sc}, config) - w, h).item()

    best_loss = loss_of(codes, codebooks, scales)
    best = (codes, codebooks, scales)
    for _ in range(config.max_rounds):
        codebooks, scales = train_codebooks_and_scales(w, h, codes, codebooks, scales, config)
        if loss_of(codes, codebooks, scales) > best_loss:  # Adam overshot: search codes from the best state
            codes, codebooks, scales = best
        codes = beam_search_codes(w, h, codes, codebooks, scales, config.beam_size, gen)
        current = loss_of(codes, codebooks, scales)
        gain = (best_loss - current) / max(best_loss, 1e-30)
        if current < best_loss:
            best_loss, best = current, (codes, codebooks, scales)
        if gain < config.rel_tol:
            break
    codes, codebooks, scales = best

    index_dtype = torch.int16 if config.nbits <= 15 else torch.int32
    payload = {"codes": codes.to(index_dtype), "codebooks": codebooks.half(), "scales": scales.half()}
    return QuantizedLinear(payload, decode(payload, config), bits_per_weight(config, d_out, d_in))


def finetune_block(block, results: dict[str, QuantizedLinear], data: BlockData, config: AQLMConfig) -> None:
    """Adam on every linear's codebooks and scales and on the block's norms, codes fixed, minimising the
    relative MSE between the quantized block's outputs and the float block's (data.targets), stopped early
    on the held-out windows."""
    finetune_payloads(block, results, data, ("codebooks", "scales"), lambda payload: decode(payload, config),
                      epochs=config.finetune_epochs, lr=config.finetune_lr, batch=config.finetune_batch,
                      patience=config.finetune_patience, seed=config.seed)


def pack(payload: dict[str, torch.Tensor], config: AQLMConfig):
    """The payload in its GGUF type: codes little-endian, B bits each, M per group of 8, row after row."""
    from lowbit_gguf.gguf.types import CODEBOOK, ROW_SCALE, aqlm_type
    from lowbit_gguf.gguf.write import PackedWeight

    lowbit_type = aqlm_type(config.num_codebooks, config.nbits, config.group_size)
    codes = payload["codes"].long().numpy()  # [d_out, n_groups, M]
    d_out, n_groups, _ = codes.shape
    stored = codes.reshape(d_out, -1) & (config.codebook_size - 1)  # int16 payloads hold 16-bit codes signed
    return PackedWeight(
        lowbit_type,
        codes=pack_indices(stored, config.nbits),
        sides={CODEBOOK: payload["codebooks"].half().numpy(), ROW_SCALE: payload["scales"].half().numpy()},
        n_per_row=n_groups * config.group_size,
    )


def unpack(weight, config: AQLMConfig) -> dict[str, torch.Tensor]:
    """The payload of a PackedWeight that pack wrote (rows in the order the file stores them)."""
    from lowbit_gguf.gguf.types import CODEBOOK, ROW_SCALE

    n_groups = weight.n_per_row // config.group_size
    codes = unpack_indices(weight.codes, config.nbits, n_groups * config.num_codebooks)
    codes = codes.reshape(weight.d_out, n_groups, config.num_codebooks)
    index_dtype = torch.int16 if config.nbits <= 15 else torch.int32
    return {"codes": torch.from_numpy(codes).to(index_dtype),
            "codebooks": torch.from_numpy(np.array(weight.sides[CODEBOOK], np.float16)),
            "scales": torch.from_numpy(np.array(weight.sides[ROW_SCALE], np.float16))}


register(MethodSpec("aqlm", AQLMConfig, quantize, decode,
                    "additive quantization: M codebooks of 2^B over groups of 8 (2x8, 1x16, 1x8)",
                    finetune_block=finetune_block, pack=pack, unpack=unpack,
                    finetune_keys=("codebooks", "scales"),
                    presets={"fast": {"max_rounds": "2", "adam_steps": "20", "kmeans_iters": "10", "beam_size": "2",
                                      "finetune_epochs": "1"}}))
