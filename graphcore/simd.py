"""ggml's AVX2 block dots (ggml_vec_dot_X_q8_Y, llama.cpp 4480542) written as LLVM IR: numba intrinsics
`dot_<type>(x, y, nb) -> float32` over nb blocks of a quantized row x and its Q8 partner row y (uint8
arrays), for the 32-element types and Q4_K, Q5_K, Q6_K (Q2_K and Q3_K keep qdot's portable loops).

LLVM's loop vectoriser does not form vpmaddubsw (32 u8 x i8 products summed in pairs) from plain numba
code, so these spell out ggml's instruction sequence with LLVM's x86 intrinsics: vpsignb/vpmaddubsw/
vpmaddwd, the int32 lanes converted to float and accumulated with one `<8 x float>` fma per block (or
super-block), the lanes added as hsum_float_8. Integer block sums are exact, so the results are those
of qdot.xdot (ggml's AVX2 dots in scalar numba, bit for bit) and of ggml's C.

Used only where the host CPU has AVX2, FMA and F16C (AVAILABLE) and GRAPHCORE_PORTABLE_DOTS is not set;
qdot keeps its portable loops for the rest.
"""
from __future__ import annotations

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()


def _features() -> set:
    try:
        return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    except RuntimeError:        # a host LLVM cannot describe
        return set()


AVAILABLE = {"avx2", "fma", "f16c"} <= _features() and not os.environ.get("GRAPHCORE_PORTABLE_DOTS")


def _v(t, n):
    return ir.VectorType(t, n)


def _c(t, n, value):
    """A constant vector of n elements of type t, all `value` (or the list `value`)."""
    return ir.Constant(_v(t, n), value if isinstance(value, list) else [value] * n)


class _Ops:
    """The vector operations the dots use, on an IRBuilder."""

    def __init__(self, b: ir.IRBuilder):
        self.b = b

    def _call(self, name, ret, *args):
        fn = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, [a.type for a in args]), name)
        return self.b.call(fn, args)

    def load(self, base, off, ty):
        return self.b.load(self.b.bitcast(self.b.gep(base, [I64(off)] if isinstance(off, int) else [off]),
                                          ty.as_pointer()), align=1)

    def f16_splat(self, base, off, n, lane=0):
        """n float32 lanes, each the fp16 at base[off] (vcvtph2ps), read as lane `lane` of the 4 bytes
        at base[off - 2 * lane]. A scalar fp16 load compiles to vpinsrw into whatever register LLVM
        picks, the fma accumulator included: a false dependency that halved Q4_0's speed; a 4-byte
        vector load does not merge into a register."""
        v = self.shuffle(self.load(base, off - 2 * lane, _v(I16, 2)), None, [lane] * n)
        return self.b.fpext(self.b.bitcast(v, _v(ir.HalfType(), n)), _v(F32, n))

    def f32_splat(self, base, off, n):
        return self.splat(self.load(base, off, F32), n)

    def shuffle(self, a, b, mask):
        return self.b.shuffle_vector(a, ir.Constant(a.type, ir.Undefined) if b is None else b,
                                     _c(I32, len(mask), mask))

    def splat(self, v, n):
        vec = self.b.insert_element(ir.Constant(_v(v.type, n), ir.Undefined), v, I32(0))
        return self.shuffle(vec, None, [0] * n)

    def maddubs(self, u, s):
        """vpmaddubsw: u (u8) times s (i8), adjacent pairs summed to 16 int16 (saturating)."""
        return self._call("llvm.x86.avx2.pmadd.ub.sw", _v(I16, 16), u, s)

    def madd(self, a, b):
        """vpmaddwd: int16 products, adjacent pairs summed to int32 (8 lanes, or 4 of 128-bit operands)."""
        n = a.type.count
        name = "llvm.x86.avx2.pmadd.wd" if n == 16 else "llvm.x86.sse2.pmadd.wd"
        return self._call(name, _v(I32, n // 2), a, b)

    def sign(self, a, b):
        return self._call("llvm.x86.avx2.psign.b", _v(I8, 32), a, b)

    def fma(self, a, b, c):
        return self._call(f"llvm.fma.v{a.type.count}f32", a.type, a, b, c)

    def to_float(self, v):
        return self.b.sitofp(v, _v(F32, v.type.count))

    def mul_sum_i8_pairs(self, x, y):
        """ggml's mul_sum_i8_pairs_float: int8 x int8 summed in 8 int32 lanes of 4, as float."""
        ax, sy = self.sign(x, x), self.sign(y, x)
        return self.to_float(self.madd(self.maddubs(ax, sy), _c(I16, 16, 1)))

    def hsum8(self, acc):
        """hsum_float_8: the upper 4 lanes onto the lower, then (0 + 2) + (1 + 3)."""
        e = [self.b.extract_element(acc, I32(j)) for j in range(8)]
        r = [self.b.fadd(e[j + 4], e[j]) for j in range(4)]
        return self.b.fadd(self.b.fadd(r[0], r[2]), self.b.fadd(r[1], r[3]))


def _row_dot(module, name, xs, ys, init, step, finish):
    """`float name(i8* x, i8* y, i64 nb)`: state = init; for each block i, state = step(ops, x + xs*i,
    y + ys*i, state); finish(ops, state). Defined once per LLVM module (internal linkage)."""
    fnty = ir.FunctionType(F32, [I8.as_pointer(), I8.as_pointer(), I64])
    fn = cgutils.get_or_insert_function(module, fnty, name)
    if not fn.is_declaration:
        return fn
    fn.linkage = "internal"
    x, y, nb = fn.args
    entry, head, body, done = (fn.append_basic_block(s) for s in ("entry", "head", "body", "done"))
    b = ir.IRBuilder(entry)
    ops = _Ops(b)
    start = init(ops)
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    state = [b.phi(v.type) for v in start]
    b.cbranch(b.icmp_signed("<", i, nb), body, done)
    b.position_at_end(body)
    new = step(ops, b.gep(x, [b.mul(i, I64(xs))]), b.gep(y, [b.mul(i, I64(ys))]), state)
    i1 = b.add(i, I64(1))
    b.branch(head)
    i.add_incoming(I64(0), entry)
    i.add_incoming(i1, body)
    for phi, v0, v1 in zip(state, start, new):
        phi.add_incoming(v0, entry)
        phi.add_incoming(v1, body)
    b.position_at_end(done)
    b.ret(finish(ops, state))
    return fn


def _zero8(ops):
    return [_c(F32, 8, 0.0)]


def _hsum_only(ops, state):
    return ops.hsum8(state[0])


def _nibbles_32(ops, x, qo):
    """bytes_from_nibbles_32: the 16 bytes at x[qo] as 32 levels, low nibbles then high nibbles."""
    q = ops.load(x, qo, _v(I8, 16))
    return ops.shuffle(ops.b.and_(q, _c(I8, 16, 15)), ops.b.lshr(q, _c(I8, 16, 4)), list(range(32)))


def _fifth_bits(ops, x, ho):
    """Bit e of the 32-bit word at x[ho] as 16 (or 0) in byte e, as bytes_from_bits_32 finds it: byte e
    holds the word's byte e // 8 (vpshufb), tested against bit e % 8."""
    b = ops.b
    w = ops.shuffle(ops.load(x, ho, _v(I8, 4)), None, [e // 8 for e in range(32)])
    bit = _c(I8, 32, [(1 << (e % 8)) - (256 if e % 8 == 7 else 0) for e in range(32)])
    return b.select(b.icmp_unsigned("!=", b.and_(w, bit), _c(I8, 32, 0)), _c(I8, 32, 16), _c(I8, 32, 0))


def _step_32(ops, x, y, state, qo, hb, minus):
    """ggml_vec_dot_q4_0_q8_0 (nibbles at x[2], no fifth bits, levels minus 8), q4_1_q8_1 (x[4], none, 0),
    q5_0_q8_0 (x[6], fifth bits at x[2], minus 16) and q5_1_q8_1 (x[8], x[4], 0): levels times y's, summed
    in 8 lanes of 4, fma by d; the Q8_1 ones (minus 0) also sum min * y's s over the blocks (a float32
    state)."""
    b = ops.b
    q = _nibbles_32(ops, x, qo)
    if hb is not None:
        q = b.or_(q, _fifth_bits(ops, x, hb))
    if not minus:               # unsigned levels, Q8_1: f32 d at y[0], s at y[4], levels at y[8]
        dy = ops.f32_splat(y, 0, 8)
        xy = ops.to_float(ops.madd(ops.maddubs(q, ops.load(y, 8, _v(I8, 32))), _c(I16, 16, 1)))
        acc = ops.fma(b.fmul(ops.f16_splat(x, 0, 8), dy), xy, state[0])
        m = b.fmul(b.extract_element(ops.f16_splat(x, 2, 4, lane=1), I32(0)), ops.load(y, 4, F32))
        return [acc, b.fadd(state[1], m)]
    q = b.sub(q, _c(I8, 32, minus))
    d = b.fmul(ops.f16_splat(x, 0, 8), ops.f16_splat(y, 0, 8))
    return [ops.fma(d, ops.mul_sum_i8_pairs(q, ops.load(y, 2, _v(I8, 32))), state[0])]


def _step_q8_0(ops, x, y, state):
    d = ops.b.fmul(ops.f16_splat(x, 0, 8), ops.f16_splat(y, 0, 8))
    return [ops.fma(d, ops.mul_sum_i8_pairs(ops.load(x, 2, _v(I8, 32)), ops.load(y, 2, _v(I8, 32))), state[0])]


def _k45(ops, x, y, qo, hb):
    """The parts of a Q4_K (hb: None) or Q5_K (hb: offset of its fifth bits) super-block that ggml's AVX2
    functions share: (d, dmin, the 4 int32 lanes of min * group-pair sum, the 8 int32 lanes of the
    scale * level * y sums), d and dmin 4 or 8 float lanes."""
    b = ops.b
    d = b.fmul(ops.f32_splat(y, 0, 8), ops.f16_splat(x, 0, 8))
    dmin = b.fmul(b.fneg(ops.f32_splat(y, 0, 4)), ops.f16_splat(x, 2, 4, lane=1))
    u = [ops.load(x, 4 + 4 * k, I32) for k in range(3)]     # the 12 scale bytes, as ggml unpacks them
    k1, k2, k3 = I32(0x3F3F3F3F), I32(0x0F0F0F0F), I32(0x03030303)
    t3 = b.or_(b.and_(b.lshr(u[2], I32(4)), k2), b.shl(b.and_(b.lshr(u[1], I32(6)), k3), I32(4)))
    t1 = b.or_(b.and_(u[2], k2), b.shl(b.and_(b.lshr(u[0], I32(6)), k3), I32(4)))
    t = ir.Constant(_v(I32, 4), ir.Undefined)
    for k, v in enumerate((b.and_(u[0], k1), t1, b.and_(u[1], k1), t3)):
        t = b.insert_element(t, v, I32(k))
    ms = b.zext(b.bitcast(t, _v(I8, 16)), _v(I16, 16))     # scales of sub-blocks 0..7, then their mins
    bs = ops.load(y, 260, _v(I16, 16))
    q8s = b.add(ops.shuffle(bs, None, list(range(0, 16, 2))), ops.shuffle(bs, None, list(range(1, 16, 2))))
    prod = ops.madd(ops.shuffle(ms, None, list(range(8, 16))), q8s)
    hbits = None if hb is None else ops.load(x, hb, _v(I8, 32))
    sumi = _c(I32, 8, 0)
    for j in range(4):
        q4 = ops.load(x, qo + 32 * j, _v(I8, 32))
        for h, q in enumerate((b.and_(q4, _c(I8, 32, 15)), b.lshr(q4, _c(I8, 32, 4)))):
            if hbits is not None:   # sub-block 2j + h's fifth bits: bit 2j + h of each byte
                q = b.or_(q, b.shl(b.and_(b.lshr(hbits, _c(I8, 32, 2 * j + h)), _c(I8, 32, 1)), _c(I8, 32, 4)))
            p16 = ops.maddubs(q, ops.load(y, 4 + 64 * j + 32 * h, _v(I8, 32)))
            sumi = b.add(sumi, ops.madd(ops.shuffle(ms, None, [2 * j + h] * 16), p16))
    return d, dmin, prod, sumi


def _step_q4_k(ops, x, y, state):
    """ggml_vec_dot_q4_K_q8_K's AVX2 super-block: 8 sub-blocks of 32 with 6-bit scales and mins, the
    mins' part in a 4-lane accumulator of its own."""
    acc, acc_m = state
    d, dmin, prod, sumi = _k45(ops, x, y, 16, None)
    return [ops.fma(d, ops.to_float(sumi), acc), ops.fma(dmin, ops.to_float(prod), acc_m)]


def _step_q5_k(ops, x, y, state):
    """ggml_vec_dot_q5_K_q8_K's: Q4_K's with a fifth bit per level, the mins' part a float32 sum of each
    super-block's integer."""
    b = ops.b
    acc, summs = state
    d, dmin, prod, sumi = _k45(ops, x, y, 48, 16)
    e = [b.extract_element(prod, I32(j)) for j in range(4)]
    m = b.sitofp(b.add(b.add(e[0], e[1]), b.add(e[2], e[3])), F32)
    return [ops.fma(d, ops.to_float(sumi), acc), b.fadd(summs, b.fmul(b.extract_element(dmin, I32(0)), m))]


def _finish_plus_sum(ops, state):
    return ops.b.fadd(ops.hsum8(state[0]), state[1])


def _finish_q4_k(ops, state):
    b = ops.b
    acc, acc_m = state
    m = [b.extract_element(acc_m, I32(j)) for j in range(4)]
    return b.fadd(ops.hsum8(acc), b.fadd(b.fadd(m[0], m[2]), b.fadd(m[1], m[3])))


def _step_q6_k(ops, x, y, state):
    """ggml_vec_dot_q6_K_q8_K's AVX2 super-block: 6-bit levels (ql nibbles, qh pairs) minus 32, 16 int8
    scales of 16 elements."""
    b = ops.b
    d = b.fmul(ops.f32_splat(y, 0, 8), ops.f16_splat(x, 208, 8, lane=1))     # (the block's last 2 bytes)
    scales = b.sext(ops.load(x, 192, _v(I8, 16)), _v(I16, 16))
    sumi = _c(I32, 8, 0)
    m4, m2, m32 = _c(I8, 32, 15), _c(I8, 32, 3), _c(I8, 32, 32)
    for j in range(2):
        ql1, ql2 = ops.load(x, 64 * j, _v(I8, 32)), ops.load(x, 64 * j + 32, _v(I8, 32))
        qh = ops.load(x, 128 + 32 * j, _v(I8, 32))
        lows = (b.and_(ql1, m4), b.and_(ql2, m4), b.lshr(ql1, _c(I8, 32, 4)), b.lshr(ql2, _c(I8, 32, 4)))
        for k in range(4):
            hi = b.shl(b.and_(b.lshr(qh, _c(I8, 32, 2 * k)), m2), _c(I8, 32, 4))
            q8 = ops.load(y, 4 + 128 * j + 32 * k, _v(I8, 32))
            p16 = b.sub(ops.maddubs(b.or_(lows[k], hi), q8), ops.maddubs(m32, q8))
            g = 8 * j + 2 * k
            sumi = b.add(sumi, ops.madd(ops.shuffle(scales, None, [g] * 8 + [g + 1] * 8), p16))
    return [ops.fma(d, ops.to_float(sumi), state[0])]


def _dot_intrinsic(name, xs, ys, init, step, finish):
    @intrinsic
    def dot(typingctx, x, y, nb):
        sig = types.float32(x, y, nb)

        def codegen(context, builder, signature, args):
            fn = _row_dot(builder.module, f"graphcore_avx2_dot_{name}", xs, ys, init, step, finish)
            ptrs = [context.make_array(t)(context, builder, a).data for t, a in zip(signature.args[:2], args[:2])]
            n = context.cast(builder, args[2], signature.args[2], types.int64)
            return builder.call(fn, [builder.bitcast(p, I8.as_pointer()) for p in ptrs] + [n])

        return sig, codegen

    return dot


dot_q4_0 = _dot_intrinsic("q4_0", 18, 34, _zero8, lambda o, x, y, s: _step_32(o, x, y, s, 2, None, 8), _hsum_only)
dot_q8_0 = _dot_intrinsic("q8_0", 34, 34, _zero8, _step_q8_0, _hsum_only)
_acc_and_sum = (lambda ops: [_c(F32, 8, 0.0), F32(0.0)])
dot_q4_1 = _dot_intrinsic("q4_1", 20, 40, _acc_and_sum, lambda o, x, y, s: _step_32(o, x, y, s, 4, None, 0),
                          _finish_plus_sum)
dot_q5_0 = _dot_intrinsic("q5_0", 22, 34, _zero8, lambda o, x, y, s: _step_32(o, x, y, s, 6, 2, 16), _hsum_only)
dot_q5_1 = _dot_intrinsic("q5_1", 24, 40, _acc_and_sum, lambda o, x, y, s: _step_32(o, x, y, s, 8, 4, 0),
                          _finish_plus_sum)
dot_q4_k = _dot_intrinsic("q4_k", 144, 292, lambda ops: [_c(F32, 8, 0.0), _c(F32, 4, 0.0)], _step_q4_k,
                          _finish_q4_k)
dot_q5_k = _dot_intrinsic("q5_k", 176, 292, _acc_and_sum, _step_q5_k, _finish_plus_sum)
dot_q6_k = _dot_intrinsic("q6_k", 210, 292, _zero8, _step_q6_k, _hsum_only)
