"""Low-level numba intrinsics: arrays over raw addresses, atomics, calls through function pointers.

Kernels address tensor memory the way ggml does (a base address plus byte strides); these
intrinsics turn such an address into an ordinary numba array so kernel bodies read like numpy.
Nothing here allocates or checks bounds: the builders and the planner check every view first.
"""
from __future__ import annotations

import platform
import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.arrayobj import populate_array

_I64 = ir.IntType(64)


def _array_intrinsic(dtype, ndim: int, layout: str):
    """An intrinsic `f(addr, shape_tuple, strides_tuple)` -> Array(dtype, ndim, layout) borrowing memory."""

    @intrinsic
    def array_at(typingctx, addr, shape, strides):
        aryty = types.Array(dtype, ndim, layout)
        sig = aryty(types.int64, shape, strides)

        def codegen(context, builder, signature, args):
            a, sh, st = args
            ary = context.make_array(aryty)(context, builder)
            lty = context.get_data_type(dtype)
            populate_array(ary,
                           data=builder.inttoptr(a, lty.as_pointer()),
                           shape=cgutils.unpack_tuple(builder, sh, ndim),
                           strides=cgutils.unpack_tuple(builder, st, ndim),
                           itemsize=context.get_constant(types.intp, context.get_abi_sizeof(lty)),
                           meminfo=None)
            return ary._getvalue()

        return sig, codegen

    return array_at


# strided 4-D views, numpy order (ne3, ne2, ne1, ne0) with byte strides (nb3, nb2, nb1, nb0)
f32_4d = _array_intrinsic(types.float32, 4, "A")
u16_4d = _array_intrinsic(types.uint16, 4, "A")
i32_4d = _array_intrinsic(types.int32, 4, "A")
# contiguous 1-D and 2-D views
f32_1d = _array_intrinsic(types.float32, 1, "C")
f64_1d = _array_intrinsic(types.float64, 1, "C")
i32_1d = _array_intrinsic(types.int32, 1, "C")
i64_1d = _array_intrinsic(types.int64, 1, "C")
i64_2d = _array_intrinsic(types.int64, 2, "C")
u16_1d = _array_intrinsic(types.uint16, 1, "C")
f32_2d = _array_intrinsic(types.float32, 2, "C")
u8_1d = _array_intrinsic(types.uint8, 1, "C")       # quantized blocks, as bytes (graphcore.quants)
i8_1d = _array_intrinsic(types.int8, 1, "C")


@intrinsic
def call_kernel(typingctx, fn, rec, ith, nth, phase, wdata, wsize):
    """Call a kernel compiled as a C function `void(int64 rec, ith, nth, phase, wdata, wsize)`."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [_I64] * 6)
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), args[1:])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sgemm(typingctx, fn, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Fortran BLAS sgemm through its address (scipy.linalg.cython_blas), column-major arguments."""
    i64, f32 = types.int64, types.float32
    sig = types.void(i64, i64, i64, i64, i64, i64, f32, i64, i64, i64, i64, f32, i64, i64)

    def codegen(context, builder, signature, args):
        i8, i32, fl = ir.IntType(8), ir.IntType(32), ir.FloatType()

        def by_ref(ty, v):
            p = cgutils.alloca_once(builder, ty)
            builder.store(v, p)
            return p

        fn_, ta, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        fptr = fl.as_pointer()
        argv = [by_ref(i8, builder.trunc(ta, i8)), by_ref(i8, builder.trunc(tb, i8)),
                by_ref(i32, builder.trunc(m_, i32)), by_ref(i32, builder.trunc(n_, i32)),
                by_ref(i32, builder.trunc(k_, i32)), by_ref(fl, al),
                builder.inttoptr(a_, fptr), by_ref(i32, builder.trunc(lda_, i32)),
                builder.inttoptr(b_, fptr), by_ref(i32, builder.trunc(ldb_, i32)), by_ref(fl, be),
                builder.inttoptr(c_, fptr), by_ref(i32, builder.trunc(ldc_, i32))]
        fnty = ir.FunctionType(ir.VoidType(), [x.type for x in argv])
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()), argv)
        return context.get_dummy_value()

    return sig, codegen


def _element_ptr(builder, arr_struct_val, context, aryty, idx):
    ary = context.make_array(aryty)(context, builder, arr_struct_val)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


@intrinsic
def opaque(typingctx, n):
    """n (an int64), through an empty inline-asm statement that LLVM cannot see through: a loop over
    range(opaque(16)) is vectorised instead of being unrolled into scalar code (graphcore.qdot)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        return builder.asm(fnty, "", "=r,0", [args[0]], side_effect=False)

    return sig, codegen


@intrinsic
def f16_to_f32(typingctx, bits):
    """IEEE half bits (uint16) -> float32 by LLVM's fpext (vcvtph2ps with F16C): exact, no branches."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """float32 -> IEEE half bits (uint16) by LLVM's fptrunc (vcvtps2ph with F16C): round to nearest even,
    overflow to inf; NaN payloads are the hardware's (kernel.fp32_to_fp16 keeps numpy's)."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """Atomically add `val` to arr[idx] (int64 array); returns the old value (seq_cst)."""
    sig = types.int64(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(builder, args[0], context, signature.args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(builder, args[0], context, signature.args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)

    return sig, codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """Atomically set arr[idx] (int64 array) to `new` if it holds `expected`; True if it did (seq_cst)."""
    sig = types.boolean(arr, idx, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(builder, args[0], context, signature.args[0], args[1])
        pair = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return sig, codegen


def _atomic_store(ordering):
    @intrinsic
    def store(typingctx, arr, idx, val):
        sig = types.void(arr, idx, types.int64)

        def codegen(context, builder, signature, args):
            ptr = _element_ptr(builder, args[0], context, signature.args[0], args[1])
            builder.store_atomic(args[2], ptr, ordering, 8)
            return context.get_dummy_value()

        return sig, codegen

    return store


atomic_store = _atomic_store("seq_cst")
# a release store: what the storing thread wrote before is seen by a thread whose (acquire or
# seq_cst) load reads the value; a plain move on x86 where seq_cst costs a locked exchange
atomic_store_release = _atomic_store("release")


@intrinsic
def sched_yield(typingctx):
    """Give the core away (libc sched_yield): waiting threads must not starve the one doing work."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

    return sig, codegen


_ARCH = platform.machine().lower()
# the CPU's spin-wait hint: lets the sibling hyperthread run and saves power while a thread polls
_PAUSE = ("llvm.x86.sse2.pause" if _ARCH in ("x86_64", "amd64", "i686", "x86")
          else "llvm.aarch64.hint" if _ARCH in ("aarch64", "arm64") else "")
# futex(2)'s syscall number where threads park on one (Linux); elsewhere a parked thread polls with usleep
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
              "ppc64le": 221, "ppc64": 221, "s390x": 238}.get(_ARCH, 0) if sys.platform.startswith("linux") else 0
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129


def _libc_call(builder, name, ret, args, var_arg=False):
    """Call the C function (or LLVM intrinsic) `name`."""
    fnty = ir.FunctionType(ret, [a.type for a in args] if not var_arg else [args[0].type], var_arg=var_arg)
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


@intrinsic
def cpu_relax(typingctx):
    """One spin-wait hint instruction (x86 pause, arm yield) in a polling loop."""
    def codegen(context, builder, signature, args):
        if _PAUSE == "llvm.x86.sse2.pause":
            _libc_call(builder, _PAUSE, ir.VoidType(), [])
        elif _PAUSE:
            _libc_call(builder, _PAUSE, ir.VoidType(), [ir.Constant(ir.IntType(32), 1)])   # hint #1: yield
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def futex(typingctx, op, addr, val):
    """Linux futex(addr, op, val) on the 32-bit word at addr: FUTEX_WAIT_PRIVATE sleeps while the word
    equals val (the kernel compares, so a wake between the caller's check and the sleep is never
    lost); FUTEX_WAKE_PRIVATE wakes up to val sleepers. Without futexes a wait sleeps 50 us instead."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        op_, addr_, val_ = args
        if _SYS_FUTEX:
            null = ir.Constant(_I64, 0)
            _libc_call(builder, "syscall", _I64, [ir.Constant(_I64, _SYS_FUTEX), addr_, op_, val_, null, null, null],
                       var_arg=True)
        else:
            with builder.if_then(builder.icmp_signed("==", op_, ir.Constant(_I64, FUTEX_WAIT_PRIVATE))):
                _libc_call(builder, "usleep", ir.IntType(32), [ir.Constant(ir.IntType(32), 50)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def monotonic_ns(typingctx):
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds (a vDSO call: tens of nanoseconds)."""
    def codegen(context, builder, signature, args):
        ts = cgutils.alloca_once(builder, ir.ArrayType(_I64, 2))
        clock = 1 if sys.platform.startswith("linux") else 6      # CLOCK_MONOTONIC (macOS: 6)
        _libc_call(builder, "clock_gettime", ir.IntType(32),
                   [ir.Constant(ir.IntType(32), clock), builder.bitcast(ts, ir.IntType(8).as_pointer())])
        sec = builder.load(builder.gep(ts, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 0)]))
        nsec = builder.load(builder.gep(ts, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 1)]))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 1_000_000_000)), nsec)

    return types.int64(), codegen


@intrinsic
def call_i32(typingctx, fn, x):
    """int fn(int x) through its address (OpenBLAS's openblas_set_num_threads_local)."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        f = builder.inttoptr(args[0], ir.FunctionType(i32, [i32]).as_pointer())
        return builder.sext(builder.call(f, [builder.trunc(args[1], i32)]), _I64)

    return sig, codegen


@intrinsic
def f32_bits(typingctx, x):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def f32_from_bits(typingctx, x):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen

f32_2d_strided = _array_intrinsic(types.float32, 2, "A")
u16_2d_strided = _array_intrinsic(types.uint16, 2, "A")


@intrinsic
def f64_from_bits(typingctx, x):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


def _stack_array(dtype, n: int):
    """An intrinsic `f()` -> a C-layout 1-D array of n elements on the calling function's stack
    (allocated once, in its entry block; uninitialised; valid until the function returns)."""

    @intrinsic
    def stack_array(typingctx):
        aryty = types.Array(dtype, 1, "C")

        def codegen(context, builder, signature, args):
            lty = context.get_data_type(dtype)
            ptr = cgutils.alloca_once(builder, lty, size=n)
            ary = context.make_array(aryty)(context, builder)
            size = context.get_abi_sizeof(lty)
            populate_array(ary, data=ptr, shape=[context.get_constant(types.intp, n)],
                           strides=[context.get_constant(types.intp, size)],
                           itemsize=context.get_constant(types.intp, size), meminfo=None)
            return ary._getvalue()

        return aryty(), codegen

    return stack_array


STACK_N = 512
stack_f64 = _stack_array(types.float64, STACK_N)     # kernels' small float64 scratch (4 KiB)
# the quantizers' scratch (one k-quant super-block of 256 levels, weights, scales)
stack_u8 = _stack_array(types.uint8, 256)
stack_i8 = _stack_array(types.int8, 256)
stack_f32 = _stack_array(types.float32, 256)
stack_i32 = _stack_array(types.int32, 256)


def _splat(builder, val, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), val, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count))


def _transpose8(builder, rows):
    """The 8 x 8 transpose of eight <8 x float> rows: column j of the result is element j of each row
    (unpack, shuffle and 128-bit lane permutes: 24 shuffles, where eight gathers cost ~20 cycles each)."""
    def sh(x, y, idx):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 8), idx))
    t = []
    for i in range(0, 8, 2):
        t += [sh(rows[i], rows[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
              sh(rows[i], rows[i + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
    s = []
    for i in (0, 4):    # t[i], t[i+2] (rows 0-3 or 4-7: unpacklo pair) and t[i+1], t[i+3] (unpackhi)
        for x, y in ((t[i], t[i + 2]), (t[i + 1], t[i + 3])):
            s += [sh(x, y, [0, 1, 8, 9, 4, 5, 12, 13]), sh(x, y, [2, 3, 10, 11, 6, 7, 14, 15])]
    lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [sh(s[j], s[4 + j], lo) for j in range(4)] + [sh(s[j], s[4 + j], hi) for j in range(4)]


def _gemm_tile(vl: int, nc: int, gather: bool, rows8: bool = False):
    """An intrinsic `f(a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn)` computing a tile of a small
    product C[m, n] = sum_k A[m, k] * B[k, n] with explicit vector types (numba's loop vectoriser
    leaves such short loops scalar): rows m < mb (mb <= vl) of A at byte address a (byte strides
    a_sm, a_sk), columns n < nc of B at b (b_sk, b_sn), C at c (m stride 4 bytes, n stride c_sn).
    Each float32 product is added in k order into a float64, rounded once: the plain triple loop's
    bits. A's vl rows are read per k with one masked gather (any a_sm), or one masked load when
    gather is False (a_sm == 4); rows past mb are neither written nor (but by rows8) read.
    rows8 (vl 8 or 16, gather, rows contiguous in k: a_sk == 4, e.g. K·Q of a KV cache): 8 k at a
    time from one load of each row and in-register transposes, then the last K % 8 by gathers; row
    m >= mb reads row mb - 1 instead (the same sums in the same order: the same bits). 16 rows keep
    two vectors of sums in flight, where one column's 8 would wait on each add's latency."""

    @intrinsic
    def gemm_tile(typingctx, a, a_sm, a_sk, mb, K, b, b_sk, b_sn, c, c_sn):
        sig = types.void(*([types.int64] * 10))

        def codegen(context, builder, signature, args):
            a_, asm_, ask_, mb_, K_, b_, bsk_, bsn_, c_, csn_ = args
            mod = builder.module
            f32, f64, i32 = ir.FloatType(), ir.DoubleType(), ir.IntType(32)
            vf, vd, vi = ir.VectorType(f32, vl), ir.VectorType(f64, vl), ir.VectorType(_I64, vl)
            vb = ir.VectorType(ir.IntType(1), vl)
            ptr = f32.as_pointer()
            align = ir.Constant(i32, 4)
            lane = ir.Constant(vi, list(range(vl)))
            mask = builder.icmp_signed("<", lane, _splat(builder, mb_, vi))
            zero = ir.Constant(vf, [0.0] * vl)
            if gather:
                vptr = ir.VectorType(ptr, vl)
                load = cgutils.get_or_insert_function(mod, ir.FunctionType(vf, [vptr, i32, vb, vf]),
                                                      f"llvm.masked.gather.v{vl}f32.v{vl}p0")
                offs = builder.mul(lane, _splat(builder, asm_, vi))
            else:
                load = cgutils.get_or_insert_function(mod, ir.FunctionType(vf, [ptr, i32, vb, vf]),
                                                      f"llvm.masked.load.v{vl}f32.p0")
            store = cgutils.get_or_insert_function(mod, ir.FunctionType(ir.VoidType(), [vf, ptr, i32, vb]),
                                                   f"llvm.masked.store.v{vl}f32.p0")
            bcols = [builder.add(b_, builder.mul(bsn_, ir.Constant(_I64, j))) for j in range(nc)]

            def mac(accs, av, boff):        # accs[j] + fpext(av * B[k, j]), the product rounded to float32
                out = []
                for j in range(nc):
                    bv = builder.load(builder.inttoptr(builder.add(bcols[j], boff), ptr), align=4, typ=f32)
                    out.append(builder.fadd(accs[j], builder.fpext(builder.fmul(av, _splat(builder, bv, vf)), vd)))
                return out

            entry = builder.block
            k0, acc0 = ir.Constant(_I64, 0), [ir.Constant(vd, [0.0] * vl)] * nc
            if rows8:
                cond8 = builder.append_basic_block("gemm_tile.cond8")
                body8 = builder.append_basic_block("gemm_tile.body8")
                last = builder.sub(mb_, ir.Constant(_I64, 1))
                rowp = [builder.add(a_, builder.mul(asm_, builder.select(
                    builder.icmp_signed("<", ir.Constant(_I64, j), mb_), ir.Constant(_I64, j), last)))
                    for j in range(vl)]
                k8 = builder.and_(K_, ir.Constant(_I64, -8))
                vptr8 = ir.VectorType(f32, 8).as_pointer()
                builder.branch(cond8)
                builder.position_at_end(cond8)
                k = builder.phi(_I64)
                k.add_incoming(k0, entry)
                accs = []
                for j in range(nc):
                    accs.append(builder.phi(vd))
                    accs[j].add_incoming(acc0[j], entry)
                cond = builder.append_basic_block("gemm_tile.cond")
                builder.cbranch(builder.icmp_signed("<", k, k8), body8, cond)
                builder.position_at_end(body8)
                ko = builder.mul(k, ir.Constant(_I64, 4))
                rows = [builder.load(builder.inttoptr(builder.add(p, ko), vptr8), align=4) for p in rowp]
                cols = _transpose8(builder, rows[:8])
                if vl == 16:        # two groups of 8 rows, each column joined into one vector
                    cols = [builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 16), list(range(16))))
                            for x, y in zip(cols, _transpose8(builder, rows[8:]))]
                new = accs
                for i in range(8):
                    new = mac(new, cols[i], builder.mul(builder.add(k, ir.Constant(_I64, i)), bsk_))
                k.add_incoming(builder.add(k, ir.Constant(_I64, 8)), body8)
                for j in range(nc):
                    accs[j].add_incoming(new[j], body8)
                builder.branch(cond8)
                entry, k0, acc0 = cond8, k, accs
                builder.position_at_end(cond)
            else:
                cond = builder.append_basic_block("gemm_tile.cond")
                builder.branch(cond)
                builder.position_at_end(cond)
            body = builder.append_basic_block("gemm_tile.body")
            done = builder.append_basic_block("gemm_tile.done")
            k = builder.phi(_I64)
            k.add_incoming(k0, entry)
            accs = []
            for j in range(nc):
                acc = builder.phi(vd)
                acc.add_incoming(acc0[j], entry)
                accs.append(acc)
            builder.cbranch(builder.icmp_signed("<", k, K_), body, done)
            builder.position_at_end(body)
            base = builder.add(a_, builder.mul(k, ask_))
            if gather:
                ptrs = builder.inttoptr(builder.add(_splat(builder, base, vi), offs), vptr)
                av = builder.call(load, [ptrs, align, mask, zero])
            else:
                av = builder.call(load, [builder.inttoptr(base, ptr), align, mask, zero])
            for j, v in enumerate(mac(accs, av, builder.mul(k, bsk_))):
                accs[j].add_incoming(v, body)
            k.add_incoming(builder.add(k, ir.Constant(_I64, 1)), body)
            builder.branch(cond)
            builder.position_at_end(done)
            for j in range(nc):
                o = builder.add(c_, builder.mul(csn_, ir.Constant(_I64, j)))
                builder.call(store, [builder.fptrunc(accs[j], vf), builder.inttoptr(o, ptr), align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return gemm_tile


# tiles of 8 or 4 rows by 4 or 1 columns; A's rows gathered (g) or loaded contiguously (c)
gemm_tile_g8x4, gemm_tile_g8x1, gemm_tile_g4x4, gemm_tile_g4x1 = (_gemm_tile(v, n, True) for v, n in
                                                                  ((8, 4), (8, 1), (4, 4), (4, 1)))
gemm_tile_c8x4, gemm_tile_c8x1, gemm_tile_c4x4, gemm_tile_c4x1 = (_gemm_tile(v, n, False) for v, n in
                                                                  ((8, 4), (8, 1), (4, 4), (4, 1)))
gemm_tile_r8x4, gemm_tile_r16x1 = _gemm_tile(8, 4, True, True), _gemm_tile(16, 1, True, True)   # rows8


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: one instruction where the CPU has FMA; loops over it
    vectorise): in float32 when all three are float32, else in float64."""
    ty = types.float32 if a == b == c == types.float32 else types.float64
    sig = ty(ty, ty, ty)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


fma_f64 = fma_f32 = fma     # the names kernels use: the arguments' type picks the precision
