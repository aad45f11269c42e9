"""Additive codes, the representation of AQLM and the methods built on it (CRVQ): each group of g weights of a row
is the sum of one codeword from each of M codebooks, times the row's scale. Decoding, the Hessian-weighted
objective, and the beam search over codes (Babenko and Lempitsky's additive quantization, as AQLM's
`beam_search_optimal_codes`)."""

from __future__ import annotations

import torch

from lowbit_gguf.nearest import nearest_codewords


def additive_decode(codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """W [d_out, n_groups * g] from codes [d_out, n_groups, M], codebooks [M, K, g] and row scales [d_out]: each
    group is the sum of one codeword per codebook, times its row's scale."""
    codes, codebooks, scales = codes.long(), codebooks.float(), scales.float()
    d_out, n_groups, n_cb = codes.shape
    groups = sum(codebooks[m][codes[..., m]] for m in range(n_cb))  # [d_out, n_groups, g]
    return scales[:, None] * groups.reshape(d_out, n_groups * codebooks.shape[2])


def objective(error: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr(E H E^T) for E [d_out, d_in]."""
    return ((error @ hessian) * error).sum()


def beam_search_codes(weight: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor,
                      scales: torch.Tensor, beam_size: int, generator: torch.Generator) -> torch.Tensor:
    """One sweep over input groups (shuffled) of additive codes (shapes as additive_decode): for each group, all
    rows at once, codebooks in turn, keeping beam_size hypotheses; a group's codes change only when that lowers
    the objective tr(E H E^T)."""
    d_out, d_in = weight.shape
    n_cb, g = codebooks.shape[0], codebooks.shape[2]
    codes = codes.clone()
    approx = additive_decode(codes, codebooks, scales)
    err_h = (approx - weight) @ hessian  # [d_out, d_in], kept current as groups change
    s_row = scales.where(scales != 0, torch.full_like(scales, 1e-30))  # one codebook: the query divides by it
    for j in torch.randperm(d_in // g, generator=generator, device=generator.device).tolist():
        cols = slice(j * g, (j + 1) * g)
        h_jj = hessian[cols, cols]  # [g, g]
        grad = err_h[:, cols]  # [d_out, g]: (E H) restricted to this group
        old = sum(codebooks[m][codes[:, j, m]] for m in range(n_cb))  # [d_out, g]
        # hypotheses: [d_out, beam, M] codes with their summed vectors
        hyp = codes[:, j][:, None, :]
        s = scales[:, None, None]  # [d_out, 1, 1]
        for m in range(n_cb):
            others = sum((codebooks[mm][hyp[..., mm]] for mm in range(n_cb) if mm != m),
                         weight.new_zeros(d_out, hyp.shape[1], g))  # [d_out, beam, g]
            # change of the group for codeword c: delta = a + s c with a = s (others - old); its cost
            # 2 delta.grad + delta^T H_jj delta, expanded so the codebook enters only through matmuls
            a = s * (others - old[:, None, :])
            a_h = a @ h_jj
            const = 2 * (a * grad[:, None, :]).sum(-1) + (a_h * a).sum(-1)  # [d_out, beam]
            cb = codebooks[m]  # [K, g]
            c_h_c = ((cb @ h_jj) * cb).sum(-1)  # [K]
            if n_cb == 1:  # one hypothesis: the best codeword is a nearest-codeword query (no [d_out, K] scores)
                values, choice = nearest_codewords(-(grad + a_h[:, 0]) / s_row[:, None], cb, c_h_c)
                hyp, best_score = choice[:, None, None], const[:, 0] + s_row * s_row * values
                break
            linear = 2 * (grad[:, None, :] + a_h) @ cb.T  # [d_out, beam, K]
            score = const[..., None] + s * linear + s * s * c_h_c
            flat = score.reshape(d_out, -1)
            top = flat.topk(min(beam_size, flat.shape[1]), dim=1, largest=False).indices
            parent, choice = top // codebooks.shape[1], top % codebooks.shape[1]
            hyp = torch.gather(hyp, 1, parent[..., None].expand(-1, -1, n_cb)).clone()
            hyp[..., m] = choice
            best_score = torch.gather(flat, 1, top[:, :1])[:, 0]
        best = hyp[:, 0]  # [d_out, M]
        improves = best_score < 0
        new_codes = torch.where(improves[:, None], best, codes[:, j])
        new = sum(codebooks[m][new_codes[:, m]] for m in range(n_cb))
        delta = scales[:, None] * (new - old)  # [d_out, g]
        err_h += delta @ hessian[cols, :]
        codes[:, j] = new_codes
    return codes
