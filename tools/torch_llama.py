"""baby-llama's batched training forward (square-error loss) in PyTorch, for benchmarks only.

The same model as models.baby_llama's forward_batch: rms_norm, rope mode 0 on the first
n_rot dims of each head, causal soft_max attention, SwiGLU feed-forward, residuals.
"""
from __future__ import annotations

import math


def make_step(hp, n_batch: int, n_threads: int, seed: int = 0):
    """A function running one forward+backward pass on random data (the work of one L-BFGS
    evaluation), with torch held to n_threads."""
    import torch
    torch.set_num_threads(n_threads)
    g = torch.Generator().manual_seed(seed)
    E, H, V, N, L = hp.n_embd, hp.n_head, hp.n_vocab, hp.n_ctx, hp.n_layer
    from graphcore_models.baby_llama import get_n_ff
    F, hd = get_n_ff(hp), hp.n_embd // hp.n_head
    n_rot = hp.n_rot

    def w(*shape):
        return (torch.randn(*shape, generator=g) / math.sqrt(sum(shape))).requires_grad_()

    params = {"tok": w(V, E), "norm": w(E), "out": w(V, E)}
    layers = [{k: w(*s) for k, s in dict(an=(E,), wq=(E, E), wk=(E, E), wv=(E, E), wo=(E, E), fn=(E,),
                                         w1=(F, E), w2=(E, F), w3=(F, E)).items()} for _ in range(L)]
    tokens = torch.randint(0, V, (n_batch, N), generator=g)
    targets = torch.randn(n_batch, N, V, generator=g)
    pos = torch.arange(N, dtype=torch.float64)
    theta = pos[:, None] * 10000.0 ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)
    cos, sin = theta.cos().float()[None, :, None, :], theta.sin().float()[None, :, None, :]
    mask = torch.full((N, N), float("-inf")).triu(1)

    def rms(x, weight):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 5e-6) * weight

    def rope(x):                                   # x [B, N, H, hd], adjacent pairs in the first n_rot
        r = x[..., :n_rot]
        x0, x1 = r[..., 0::2], r[..., 1::2]
        rot = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        return torch.cat((rot, x[..., n_rot:]), dim=-1)

    def loss():
        x = params["tok"][tokens]
        for ly in layers:
            h = rms(x, ly["an"])
            q = rope((h @ ly["wq"].T).view(n_batch, N, H, hd)).transpose(1, 2)
            k = rope((h @ ly["wk"].T).view(n_batch, N, H, hd)).transpose(1, 2)
            v = (h @ ly["wv"].T).view(n_batch, N, H, hd).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1)
            x = x + ((att @ v).transpose(1, 2).reshape(n_batch, N, E) @ ly["wo"].T)
            h = rms(x, ly["fn"])
            x = x + ((torch.nn.functional.silu(h @ ly["w1"].T) * (h @ ly["w3"].T)) @ ly["w2"].T)
        logits = rms(x, params["norm"]) @ params["out"].T
        return ((targets - logits) ** 2).sum()

    all_params = list(params.values()) + [t for ly in layers for t in ly.values()]

    def step():
        for t in all_params:
            t.grad = None
        loss().backward()
    return step
