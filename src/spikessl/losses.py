"""NT-Xent, paper eq. (1), on spike-count latents.

    L = -1/(2N) * sum_{i=1}^{2N} log( exp(sim(z_i, z_pos(i)) / tau)
                                      / sum_{j != i} exp(sim(z_i, z_j) / tau) )

z_1..z_2N are the latents of the two views of N images (view 1 then view 2), pos(i) is the
other view of image i, sim is cosine similarity and tau the temperature. As in SimCLR the
sum runs over both views of every image and the denominator over all 2N - 1 other latents
(eq. (1) as printed writes 1/N and j = 1..2N; the j = i term is excluded, as in SimCLR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of two batches of latents ``[N, D]`` (row i of each is the same image)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0; SimCLR uses 0.1-0.5")
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two [N, D] latents of equal shape, got {z1.shape}, {z2.shape}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("NT-Xent needs at least 2 images per batch to have negatives")
    with torch.autocast(z1.device.type, enabled=False):  # float32 even under precision=bf16
        z = torch.cat([z1, z2]).float()  # (2N, D)
        norms = z.norm(dim=1, keepdim=True)
        # cosine similarity: rows scaled to unit length. An all-zero row (a silent view) stays
        # 0 and passes its gradient on unscaled, not times 1/eps as in F.normalize (1e12: one
        # silent view's step would swamp Adam's moments); every other row is as before
        z = z / torch.where(norms > 0, norms, torch.ones_like(norms))
        logits = z @ z.T / temperature  # (2N, 2N) cosine similarities / tau
        logits.fill_diagonal_(float("-inf"))  # j != i
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, positives)
