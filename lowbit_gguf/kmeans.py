"""k-means over short vectors, the codebook initialisation of the vector quantizers (AQLM's residual k-means,
VPTQ's Hessian-weighted one). Assignments go through the shared nearest-codeword kernel (lowbit_gguf.nearest)."""

from __future__ import annotations

import torch

from lowbit_gguf.nearest import nearest_codewords


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator,
           weights: torch.Tensor | None = None, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on rows of x [n, g]: (centroids [k, g], assignment [n]). With weights [n] (e.g. the Hessian
    diagonal of each vector's input channel, as VPTQ weights its k-means) a centroid is the weighted mean of its
    points; a point's weight scales all its distances alike, so assignments stay nearest-centroid. Stops early at
    a fixed point (an unchanged assignment gives unchanged centroids), or once an iteration lowers the (weighted)
    inertia by less than tol of it."""
    n = x.shape[0]
    # random draws come from the (CPU) generator, so a GPU run starts where a CPU run does
    perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    centroids = x[perm[:k]].clone()
    if n <= k:  # every point is a codeword; pad with jittered copies
        extra = centroids[torch.randint(0, n, (k - n,), generator=generator, device=generator.device).to(x.device)]
        noise = torch.randn(extra.shape, generator=generator, device=generator.device).to(x.device)
        assign = torch.empty(n, dtype=torch.long, device=x.device).index_put_((perm,), torch.arange(n, device=x.device))
        return torch.cat([centroids, extra + 1e-3 * noise]), assign

    w = torch.ones(n, device=x.device, dtype=x.dtype) if weights is None else weights.to(x.dtype)
    x_sq = (x * x).sum(1)

    def nearest(c: torch.Tensor) -> tuple[float, torch.Tensor]:
        scores, assign = nearest_codewords(x, c, (c * c).sum(1))
        return float(((scores + x_sq).clamp_min(0) * w).sum()), assign

    assign, inertia = None, float("inf")
    for _ in range(iters):
        previous, previous_inertia = assign, inertia
        inertia, assign = nearest(centroids)
        if previous is not None and (torch.equal(previous, assign) or
                                     previous_inertia - inertia < tol * previous_inertia):
            return centroids, assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, x * w[:, None])
        mass = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, assign, w)[:, None]
        centroids = torch.where(mass > 0, sums / mass.clamp_min(1e-30), centroids)
    return centroids, nearest(centroids)[1]
