"""Low-level numba intrinsics: arrays over raw addresses, atomics, calls through function pointers.

Kernels address tensor memory the way ggml does (a base address plus byte strides); these
intrinsics turn such an address into an ordinary numba array so kernel bodies read like numpy.
Nothing here allocates or checks bounds: the builders and the planner check every view first.
"""
from __future__ import annotations

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
u16_1d = _array_intrinsic(types.uint16, 1, "C")
f32_2d = _array_intrinsic(types.float32, 2, "C")


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
def atomic_store(typingctx, arr, idx, val):
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(builder, args[0], context, signature.args[0], args[1])
        builder.store_atomic(args[2], ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """Give the core away (libc sched_yield): waiting threads must not starve the one doing work."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

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
STACK_F32_N = 2048
stack_f32 = _stack_array(types.float32, STACK_F32_N)  # kernels' small float32 scratch (8 KiB)


def _gemm_col(vl: int):
    """An intrinsic `f(pk, K, b, b_sk, out)`: one column of a small product, vl rows at a time, with
    explicit vector types (numba's loop vectoriser leaves such short loops scalar):
    out[0:vl] = float32(sum over k = 0..K-1, in order, of float64(pk[k*vl : k*vl+vl] * b[k*b_sk])),
    the products in float32, the sums in float64. pk holds K x vl float32 (k-major), b is a byte
    address with byte stride b_sk, out receives vl float32; addresses are int64."""

    @intrinsic
    def gemm_col(typingctx, pk, K, b, b_sk, out):
        i64 = types.int64
        sig = types.void(i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            pk_, K_, b_, bsk_, out_ = args
            f32, f64 = ir.FloatType(), ir.DoubleType()
            vf, vd = ir.VectorType(f32, vl), ir.VectorType(f64, vl)
            zero_i = ir.Constant(_I64, 0)
            entry = builder.block
            cond = builder.append_basic_block("gemm_col.cond")
            body = builder.append_basic_block("gemm_col.body")
            done = builder.append_basic_block("gemm_col.done")
            builder.branch(cond)
            builder.position_at_end(cond)
            k = builder.phi(_I64)
            acc = builder.phi(vd)
            k.add_incoming(zero_i, entry)
            acc.add_incoming(ir.Constant(vd, [0.0] * vl), entry)
            builder.cbranch(builder.icmp_signed("<", k, K_), body, done)
            builder.position_at_end(body)
            pa = builder.add(pk_, builder.mul(k, ir.Constant(_I64, 4 * vl)))
            a = builder.load(builder.inttoptr(pa, vf.as_pointer()), align=4, typ=vf)
            pb = builder.add(b_, builder.mul(k, bsk_))
            bv = builder.load(builder.inttoptr(pb, f32.as_pointer()), align=4, typ=f32)
            bvec = builder.insert_element(ir.Constant(vf, ir.Undefined), bv, ir.Constant(ir.IntType(32), 0))
            bvec = builder.shuffle_vector(bvec, ir.Constant(vf, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), vl), [0] * vl))
            nxt = builder.fadd(acc, builder.fpext(builder.fmul(a, bvec), vd))
            k.add_incoming(builder.add(k, ir.Constant(_I64, 1)), body)
            acc.add_incoming(nxt, body)
            builder.branch(cond)
            builder.position_at_end(done)
            builder.store(builder.fptrunc(acc, vf), builder.inttoptr(out_, vf.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return gemm_col


gemm_col8 = _gemm_col(8)
gemm_col4 = _gemm_col(4)
