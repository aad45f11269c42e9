"""VPTQ: vector post-training quantization (Liu et al., 2024; microsoft/VPTQ, branch `algorithm`).

Vectors run along the output dimension: v consecutive rows of one input channel j form a vector, which is a
main centroid plus a residual centroid, times the channel's scale, plus its bias:
    W[R*v + t, j] ~= (C[idx[R, j], t] + Cr[res[R, j], t]) * s[j] + b[j]
Quantization (VPTQ.fast_vector_quant and VPTQ.vptq of the reference):
 - `enable_norm` (off by default): per input channel s = max - min over the rows, b = min; the loop works on
   (W - b) / s;
 - `enable_perm`: the channels are quantized in act order (diag(H) descending); dead channels (H_jj = 0) are
   zeroed;
 - the main codebook is k-means on all vectors, each weighted by H_jj of its channel;
 - the GPTQ/OBS column loop (lowbit_gguf.gptq; block 128, 1% damping) puts each vector of a column on its
   nearest centroid (Euclidean: H^-1_jj is constant within a column) and feeds the scaled error to the columns
   not yet quantized; the centroids stay fixed;
 - with a residual codebook, k-means on the loop's errors initialises it, and the loop runs again from the
   original weight with a main and a residual index per vector.
After all linears of a block are quantized, their codebooks, scales and biases and the block's norms are
fine-tuned against the float block's outputs (the paper's layer-wise stage, through the shared block training),
and `lowbit-gguf finetune` trains the same parts end to end.

Deviations from the reference, on purpose (each measured against the reference's way in docs/methods.md): in the
residual pass each vector takes the best (main, residual) pair among its 8 nearest main centroids, where the
reference takes the nearest main and then the nearest residual (`residual_beam=1`); enable_norm is off by default,
and with it on the loop's Hessian is diag(s) H diag(s), the objective of the normalised weight (the reference keeps
H); codebooks, scales and biases are rounded to f16 before the loop, so it quantizes to the values the file stores.
Not yet built: outlier columns with their own codebook (`o<percent>`) and column groups with a codebook each
(`group_num`).

In GGUF a weight is its index stream in a VPTQ_<bits> type (lowbit_gguf.gguf.types), the codebooks, scales and
biases as side tensors. The act-order permutation is absorbed (indices are stored in channel order). Rows are
grouped by v in the file, so Llama's q/k row permutation (llama.cpp's converter) is applied before quantizing:
each vector is v rows that are consecutive in the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lowbit_gguf.bits import pack_indices, unpack_indices
from lowbit_gguf.gguf.types import CODEBOOK, COL_BIAS, COL_SCALE, RES_CODEBOOK, VPTQ_MAX_VECTOR_LEN, vptq_type
from lowbit_gguf.gptq import obs_quantize
from lowbit_gguf.kmeans import kmeans
from lowbit_gguf.methods import MethodSpec, QuantizedLinear, match_compact, register
from lowbit_gguf.nearest import nearest_codewords
from lowbit_gguf.training import BlockData, finetune_payloads

TRAINED = ("centroids", "res_centroids", "col_scale", "col_bias")


@dataclass(frozen=True)
class VPTQConfig:
    vector_len: int = 8  # v
    num_centroids: int = 256  # k, a power of two
    num_res_centroids: int = 256  # k_res, a power of two; 0: no residual codebook
    enable_norm: bool = False  # the reference's option; off by default: it raised the objective here (docs/methods.md)
    enable_perm: bool = True
    # main centroids tried per vector in the residual pass, each with its best residual (1: the reference's
    # greedy main-then-residual; the joint search is this project's, docs/methods.md)
    residual_beam: int = 8
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-5  # stop k-means when the weighted inertia improves by less than this fraction
    block_size: int = 128  # GPTQ's lazy-update block
    damp: float = 0.01
    finetune_epochs: int = 3  # most block fine-tuning passes over the calibration set (0: off)
    finetune_patience: int = 1
    finetune_lr: float = 1e-4
    finetune_batch: int = 8
    seed: int = 0

    def __post_init__(self):
        for k, allow_zero in ((self.num_centroids, False), (self.num_res_centroids, True)):
            if not (k == 0 and allow_zero) and not (2 <= k <= 65536 and k & (k - 1) == 0):
                raise ValueError(f"VPTQ codebook size {k} is not a power of two between 2 and 65536"
                                 + (" (or 0: no residual)" if allow_zero else ""))
        if not 1 <= self.vector_len <= VPTQ_MAX_VECTOR_LEN:
            raise ValueError(f"VPTQ vector length {self.vector_len} is not between 1 and {VPTQ_MAX_VECTOR_LEN}")

    @classmethod
    def parse(cls, text: str) -> VPTQConfig:
        """The reference's names: 'v8k256' (v 8, 256 centroids), 'v8k256r256' (and a residual codebook of 256),
        'v6k4096'; the published checkpoints' 'v8-k65536-256' form too."""
        if "o" in text.lower():
            raise ValueError(f"VPTQ config {text!r}: outlier columns (o<percent>) are not supported yet")
        pattern = r"v(\d+)-k(\d+)-(\d+)" if "-" in text else r"v(\d+)k(\d+)(?:r(\d+))?"
        m = match_compact(text, pattern, "VPTQ", "v<vector length>k<centroids>[r<residual centroids>], e.g. "
                                                 "v8k256r256, or v8-k65536-256")
        return cls(vector_len=int(m.group(1)), num_centroids=int(m.group(2)),
                   num_res_centroids=int(m.group(3) or 0))

    @property
    def name(self) -> str:
        return f"v{self.vector_len}k{self.num_centroids}" + (f"r{self.num_res_centroids}" if self.num_res_centroids
                                                             else "")

    @property
    def index_bits(self) -> int:
        """Bits of one vector's entry: main index, then residual index."""
        return self.main_bits + self.res_bits

    @property
    def main_bits(self) -> int:
        return int(math.log2(self.num_centroids))

    @property
    def res_bits(self) -> int:
        return int(math.log2(self.num_res_centroids)) if self.num_res_centroids else 0

    @property
    def stored_res_centroids(self) -> int:
        """Rows of the stored residual codebook: one row of zeros when there is no residual."""
        return max(1, self.num_res_centroids)


def bits_per_weight(config: VPTQConfig, d_out: int, d_in: int) -> float:
    """Indices, both codebooks (f16) and the per-channel scale and bias (f16), over the weight count; the
    permutation costs nothing (absorbed into index order)."""
    codebooks = (config.num_centroids + config.stored_res_centroids) * config.vector_len * 16
    return config.index_bits / config.vector_len + codebooks / (d_out * d_in) + 32 / d_out


def decode(payload: dict[str, torch.Tensor], config: VPTQConfig | None = None) -> torch.Tensor:
    """[d_out, d_in] in the model's row order from indices [d_out / v, d_in] (file row order, see row_order)."""
    idx, res = payload["indices"].long(), payload["res_indices"].long()
    centroids, res_centroids = payload["centroids"].float(), payload["res_centroids"].float()
    groups, d_in = idx.shape
    v = centroids.shape[1]
    vectors = centroids[idx] + res_centroids[res]  # [G, d_in, v]
    w = vectors.permute(0, 2, 1).reshape(groups * v, d_in)
    w = w * payload["col_scale"].float() + payload["col_bias"].float()
    order = payload.get("row_order")
    if order is None:
        return w
    out = torch.empty_like(w)
    out[order.long()] = w
    return out


def _vectors(columns: torch.Tensor, v: int) -> torch.Tensor:
    """The vectors of columns [d_out, n]: [n * d_out / v, v], column after column."""
    return columns.T.reshape(-1, v)


def _nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return nearest_codewords(vectors, codebook, (codebook * codebook).sum(1))[1]


def _joint_nearest(vectors: torch.Tensor, centroids: torch.Tensor, res_centroids: torch.Tensor,
                   beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(main, residual) indices per vector: the best pair among its `beam` nearest main centroids, each with its
    nearest residual centroid (beam 1: the nearest main, then the nearest residual)."""
    if beam <= 1:
        main = _nearest(vectors, centroids)
        return main, _nearest(vectors - centroids[main], res_centroids)
    n, v = vectors.shape
    scores = torch.addmm((centroids * centroids).sum(1), vectors, centroids.T, alpha=-2)  # |c|^2 - 2 x.c
    candidates = scores.topk(min(beam, centroids.shape[0]), dim=1, largest=False).indices  # [n, beam]
    residuals = (vectors[:, None, :] - centroids[candidates]).reshape(-1, v)
    values, res = nearest_codewords(residuals, res_centroids, (res_centroids * res_centroids).sum(1))
    # |r - c_r|^2 = |r|^2 + (|c_r|^2 - 2 r.c_r): the pair's full distance
    distance = (values + (residuals * residuals).sum(1)).reshape(n, -1)
    best = distance.argmin(1)
    rows = torch.arange(n, device=vectors.device)
    return candidates[rows, best], res.reshape(n, -1)[rows, best]


def _codebook(vectors: torch.Tensor, weights: torch.Tensor, k: int, config: VPTQConfig,
              gen: torch.Generator) -> torch.Tensor:
    centroids, _ = kmeans(vectors, k, config.kmeans_iters, gen, weights=weights, tol=config.kmeans_tol)
    return centroids.half().float()  # the loop quantizes to the values the file stores


def quantize(weight: torch.Tensor, hessian: torch.Tensor, config: VPTQConfig,
             row_order: np.ndarray | torch.Tensor | None = None) -> QuantizedLinear:
    """row_order: the order the file will hold the rows in (lowbit_gguf.gguf.write.file_row_order); each
    vector is v rows consecutive in it."""
    d_out, d_in = weight.shape
    v = config.vector_len
    if d_out % v:
        raise ValueError(f"VPTQ vectors of {v} rows do not divide the {d_out} output rows; pick a vector length "
                         f"that divides {d_out}")
    gen = torch.Generator().manual_seed(config.seed)
    w = weight.detach().float()
    order = (torch.arange(d_out, device=w.device) if row_order is None
             else torch.as_tensor(np.asarray(row_order), device=w.device).long())
    w = w[order]
    h = hessian.detach().double()

    if config.enable_norm:
        lo, hi = w.min(0).values, w.max(0).values
        scale = (hi - lo).clamp_min(1e-8).half().float()
        bias = lo.half().float()
    else:
        scale, bias = torch.ones(d_in, device=w.device), torch.zeros(d_in, device=w.device)
    normalised = (w - bias) / scale
    h = h * scale.double()[:, None] * scale.double()[None, :]  # the normalised weight's objective
    dead = h.diagonal() == 0
    normalised[:, dead] = 0
    perm = (torch.argsort(h.diagonal(), descending=True, stable=True) if config.enable_perm
            else torch.arange(d_in, device=w.device))
    wp, hp = normalised[:, perm], h[perm][:, perm]
    groups = d_out // v
    weights = hp.diagonal().float().repeat_interleave(groups)  # each vector weighted by H_jj of its column

    centroids = _codebook(_vectors(wp, v), weights, config.num_centroids, config, gen)
    res_centroids = torch.zeros(config.stored_res_centroids, v, device=w.device)
    idx = torch.zeros(groups, d_in, dtype=torch.long, device=w.device)
    res = torch.zeros_like(idx)
    errors = torch.zeros_like(wp)

    def main_only(column: torch.Tensor, j: int) -> torch.Tensor:
        vectors = column.float().reshape(groups, v)
        idx[:, j] = _nearest(vectors, centroids)
        quantized = centroids[idx[:, j]].reshape(d_out)
        errors[:, j] = column.float() - quantized
        return quantized.to(column.dtype)

    def main_and_residual(column: torch.Tensor, j: int) -> torch.Tensor:
        vectors = column.float().reshape(groups, v)
        idx[:, j], res[:, j] = _joint_nearest(vectors, centroids, res_centroids, config.residual_beam)
        return (centroids[idx[:, j]] + res_centroids[res[:, j]]).reshape(d_out).to(column.dtype)

    obs_quantize(wp, hp, main_only, block_size=config.block_size, damp=config.damp)
    if config.num_res_centroids:
        res_centroids = _codebook(_vectors(errors, v), weights, config.num_res_centroids, config, gen)
        obs_quantize(wp, hp, main_and_residual, block_size=config.block_size, damp=config.damp)

    inverse = torch.argsort(perm)  # indices in channel order: the permutation is absorbed
    payload = {"indices": idx[:, inverse].int(), "res_indices": res[:, inverse].int(), "centroids": centroids.half(),
               "res_centroids": res_centroids.half(), "col_scale": scale.half(), "col_bias": bias.half(),
               "row_order": order}
    return QuantizedLinear(payload, decode(payload, config), bits_per_weight(config, d_out, d_in))


def finetune_block(block, results: dict[str, QuantizedLinear], data: BlockData, config: VPTQConfig) -> None:
    """The paper's layer-wise fine-tuning of centroids and norms: Adam on every linear's codebooks, channel scales
    and biases and on the block's norms, indices fixed, against the float block's outputs."""
    finetune_payloads(block, results, data, TRAINED, lambda payload: decode(payload, config),
                      epochs=config.finetune_epochs, lr=config.finetune_lr, batch=config.finetune_batch,
                      patience=config.finetune_patience, seed=config.seed)


def pack(payload: dict[str, torch.Tensor], config: VPTQConfig):
    """The payload in its GGUF type: row group R's d_in entries (idx | res << log2 k, channel order) as one
    little-endian bit stream, cut into the group's v rows."""
    from lowbit_gguf.gguf.write import PackedWeight

    lowbit_type = vptq_type(config.index_bits, config.vector_len)
    idx, res = payload["indices"].long().numpy(), payload["res_indices"].long().numpy()
    groups, d_in = idx.shape
    entries = idx | (res << config.main_bits)
    stream = pack_indices(entries, config.index_bits)  # [G, d_in * bits / 8]
    codes = stream.reshape(groups * config.vector_len, -1)
    order = payload.get("row_order")
    return PackedWeight(lowbit_type, codes=codes,
                        sides={CODEBOOK: payload["centroids"].half().numpy(),
                               RES_CODEBOOK: payload["res_centroids"].half().numpy(),
                               COL_SCALE: payload["col_scale"].half().numpy(),
                               COL_BIAS: payload["col_bias"].half().numpy()},
                        n_per_row=d_in, row_order=None if order is None else order.long().numpy())


def unpack(weight, config: VPTQConfig) -> dict[str, torch.Tensor]:
    """The payload of a PackedWeight (its row_order, when set, says which model row each stored row is)."""
    params = weight.weight_params
    v, k, k_res = params["vector_len"], params["n_centroids"], params["n_res_centroids"]
    main_bits, bits = k.bit_length() - 1, (k.bit_length() - 1) + (k_res.bit_length() - 1)
    groups = weight.d_out // v
    entries = unpack_indices(weight.codes.reshape(groups, -1), bits, weight.n_per_row)
    order = np.arange(weight.d_out) if weight.row_order is None else weight.row_order
    return {"indices": torch.from_numpy(entries & (k - 1)).int(),
            "res_indices": torch.from_numpy(entries >> main_bits).int(),
            "centroids": torch.from_numpy(np.array(weight.sides[CODEBOOK], np.float16)),
            "res_centroids": torch.from_numpy(np.array(weight.sides[RES_CODEBOOK], np.float16)),
            "col_scale": torch.from_numpy(np.array(weight.sides[COL_SCALE], np.float16)),
            "col_bias": torch.from_numpy(np.array(weight.sides[COL_BIAS], np.float16)),
            "row_order": torch.from_numpy(np.asarray(order, np.int64))}


register(MethodSpec("vptq", VPTQConfig, quantize, decode,
                    "vector quantization along the output dimension, second-order (GPTQ) assignment, residual "
                    "codebook (v8k256r256, v4k256, v6k4096, ...)",
                    finetune_block=finetune_block, pack=pack, unpack=unpack,
                    finetune_keys=TRAINED, groups_rows=True,
                    presets={"fast": {"kmeans_iters": "10", "residual_beam": "1", "finetune_epochs": "1"}}))
