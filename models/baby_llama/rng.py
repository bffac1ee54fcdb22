"""The original's random stream, bit for bit: std::mt19937 and libstdc++'s
std::normal_distribution<float> (with its logf), and randomize_model over it."""
from __future__ import annotations

import math

import numpy as np

import graphcore as gc

from .model import LlamaModel, LlamaModelLora

_F32 = np.float32


# =============================================================================================
# the random stream: std::mt19937 + libstdc++ std::normal_distribution<float>
# =============================================================================================
class MT19937:
    """std::mt19937(seed): numpy's legacy RandomState seeds an integer with the same init_genrand,
    and randint over [0, 2^32) as uint64 hands out exactly one 32-bit output per value."""

    def __init__(self, seed: int):
        self._rs = np.random.RandomState(int(seed) & 0xFFFFFFFF)   # std::mt19937 takes the seed mod 2^32

    def __call__(self, n: int) -> np.ndarray:
        """The next n 32-bit outputs (as uint64)."""
        return self._rs.randint(0, 2 ** 32, size=n, dtype=np.uint64)


def _c_logf():
    """The C library's logf, when there is one: glibc's logf is not correctly rounded (about 1
    value in 130 of the polar method's r2 differs from log rounded to float by one ulp), and
    the original's weights come from it."""
    import ctypes
    import ctypes.util
    for name in (ctypes.util.find_library("m"), "libm.so.6", None):
        try:
            f = ctypes.CDLL(name).logf
        except (OSError, AttributeError, TypeError):
            continue
        f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
        if abs(f(2.0) - math.log(2.0)) < 1e-6:
            return f
    return None


_LOGF = _c_logf()


def _logf(v: np.ndarray) -> np.ndarray:
    """float32 log as C's logf (the C library's own where it can be called, else log rounded to float)."""
    if _LOGF is None:
        return np.log(v.astype(np.float64)).astype(_F32)
    f = _LOGF
    return np.fromiter((f(x) for x in v.tolist()), dtype=_F32, count=len(v))


class RandomNormalDistribution:
    """train.cpp's random_normal_distribution: mt19937(seed) feeding normal_distribution<float>
    (mean, std), each draw clamped to [min, max] by frand_normal.

    libstdc++'s normal_distribution<float> is the Marsaglia polar method on
    generate_canonical<float> (one 32-bit output u, float(u) / 2^32, pulled below 1):
    x = 2u1 - 1, y = 2u2 - 1 (the - 1.0 in double), r2 = x*x + y*y in float, pairs with r2 > 1
    or r2 == 0 rejected; m = sqrt(-2 log(r2) / r2); it returns y*m and keeps x*m for the next
    call. Pairs are generated here in vectorised chunks and the normals queued, which gives the
    same sequence of normals (the mt19937 runs ahead, but nothing else reads it)."""

    def __init__(self, seed: int, mean: float = 0.0, std: float = 1.0, min: float = -1.0, max: float = 1.0,
                 fma: bool = False):
        self.fma = fma
        self.gen = MT19937(seed)
        self.mean, self.std, self.min, self.max = _F32(mean), _F32(std), _F32(min), _F32(max)
        self._queue = np.zeros(0, dtype=_F32)

    def _canonical(self, n):
        u = self.gen(n).astype(_F32) / _F32(2.0 ** 32)          # float(u32) rounds to nearest, / 2^32 exact
        return np.minimum(u, np.nextafter(_F32(1.0), _F32(0.0)))

    def _refill(self, n_needed: int):
        chunks = [self._queue]
        have = len(self._queue)
        while have < n_needed:
            n_pairs = max(64, (n_needed - have) * 2 // 3 + 16)   # ~78.5% of pairs are accepted
            u = self._canonical(2 * n_pairs).reshape(n_pairs, 2)
            xy = ((_F32(2.0) * u).astype(np.float64) - 1.0).astype(_F32)
            x, y = xy[:, 0], xy[:, 1]
            if self.fma:    # x*x + y*y contracted to fmaf(x, x, y*y) (g++ -march=native on an FMA CPU)
                r2 = (x.astype(np.float64) * x + (y * y).astype(np.float64)).astype(_F32)
            else:
                r2 = x * x + y * y                                   # float32 ops, rounded each
            ok = (r2 <= 1.0) & (r2 != 0.0)
            x, y, r2 = x[ok], y[ok], r2[ok]
            lg = _logf(r2)
            m = np.sqrt(_F32(-2.0) * lg / r2).astype(_F32)
            pair = np.empty((len(x), 2), dtype=_F32)
            pair[:, 0] = y * m                                       # returned first
            pair[:, 1] = x * m                                       # the saved value
            chunks.append(pair.reshape(-1))
            have += 2 * len(x)
        self._queue = np.concatenate(chunks)

    def normal(self, n: int) -> np.ndarray:
        """The next n draws of normal_distribution<float>(mean, std), unclamped."""
        if len(self._queue) < n:
            self._refill(n)
        out, self._queue = self._queue[:n], self._queue[n:]
        return (out * self.std + self.mean).astype(_F32)


def init_random_normal_distribution(seed, mean, std, min, max) -> RandomNormalDistribution:
    return RandomNormalDistribution(seed, mean, std, min, max)


def frand_normal_n(rnd: RandomNormalDistribution, n: int) -> np.ndarray:
    """n calls of train.cpp's frand_normal: a normal draw clamped to [min, max]."""
    return np.clip(rnd.normal(n), rnd.min, rnd.max)


def frand_normal(rnd: RandomNormalDistribution) -> float:
    return float(frand_normal_n(rnd, 1)[0])


def randomize_tensor_normal(tensor: gc.Tensor, rnd: RandomNormalDistribution) -> gc.Tensor:
    """Fill tensor (ne0 fastest) with scale * frand_normal: scale = 1/sqrtf(ne0) for 1-D tensors,
    1/sqrtf(ne0 + ne1) for 2- to 4-D ones (the square root of the sum, as train.cpp writes it)."""
    nd = gc.n_dims(tensor)
    if nd == 1:
        scale = _F32(1.0) / np.sqrt(_F32(tensor.ne[0]))
    else:
        scale = _F32(1.0) / np.sqrt(_F32(tensor.ne[0]) + _F32(tensor.ne[1]))
    vals = (_F32(scale) * frand_normal_n(rnd, gc.nelements(tensor))).astype(_F32)
    a = tensor.numpy4d()
    a[...] = vals.reshape(a.shape)
    return tensor


def randomize_model(model: LlamaModel, seed: int, mean: float, std: float, min: float, max: float) -> None:
    rnd = init_random_normal_distribution(seed, mean, std, min, max)
    for t in model.tensors():
        randomize_tensor_normal(t, rnd)


def randomize_model_lora(model: LlamaModelLora, seed: int, mean: float, std: float, min: float,
                         max: float) -> None:
    rnd = init_random_normal_distribution(seed, mean, std, min, max)
    for t in model.tensors():
        randomize_tensor_normal(t, rnd)
