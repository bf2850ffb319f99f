"""dlrun's own float32 matrix product: blocking loops in Numba around one explicit-vector
micro-kernel.

Why it exists: OpenBLAS picks its kernels per CPU, and an environment can force a choice
(``OPENBLAS_CORETYPE``; this project's machine image forces ``Haswell``, AVX2, on a CPU with
AVX-512). Measured here on one core: OpenBLAS's AVX2 sgemm runs ~120 GFLOP/s, its AVX-512
one ~220, and the micro-kernel below ~265 in cache. So on CPUs with AVX-512 dlrun multiplies
float32 matrices itself; elsewhere, and for float64, ``ops.blas.gemm`` calls OpenBLAS.
``DLRUN_GEMM=openblas`` (or ``dlrun``) overrides the choice; ``dlrun info`` names it.

The shape is the classic one (Goto, BLIS), pared down to what these sizes need:
``c = alpha * op(a) @ op(b) + beta * c`` is cut into ``KC``-deep slices of the shared
dimension and into tiles of ``MR`` rows by ``NR`` columns. The micro-kernel multiplies one
``MR x KC`` strip of ``op(a)`` by one ``KC x NR`` strip of ``op(b)`` with ``MR * NR / 16``
accumulators held in 16-wide vector registers the whole time, and adds the result into
``c`` once. It reads ``op(a)`` in place, by strides (measured faster than packing it, at
every shape dlrun's models use), and ``op(b)`` in place where it is not transposed; a
transposed ``b`` is copied ("packed") strip by strip into the layout the kernel reads, 16 x
16 blocks at a time by vector shuffles (element by element it ran at half the speed), and
so are partial strips at the edges, zero-padded, whose results go through a scratch tile.
Where ``n`` is at most 16 (a 10-class output layer) the tiles are 16 columns wide.

The micro-kernel is written as LLVM IR through a Numba intrinsic, because that is the one
way to make Numba keep 16 vector accumulators in registers (a plain loop over a local
tile array loads and stores it every step: ~30 GFLOP/s). Everything else is plain Numba,
compiled once as a C function (``_core``). The product is single-threaded; callers split
work between threads (``sgemm_parallel``, ``ops.blas``).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from dlrun.ops.config import CACHE, FASTMATH, jit

W = 16                 # float32 lanes in one vector (a 512-bit register)
MR = 8                 # tile rows
NR = 2 * W             # tile columns: MR x NR takes 16 vector accumulators
NR_NARROW = W          # tile columns where n is at most W (a 10-class output layer)
KC = 256               # depth of one slice of the shared dimension

_I64 = ir.IntType(64)


def _i(v):
    return ir.Constant(_I64, v)


@intrinsic
def _addr(typingctx, ary):
    """The address of an array's first element, as an integer (for the micro-kernel)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, _I64)
    return types.int64(ary), codegen


class _Vectors:
    """The LLVM types, constants and helpers both halves of a micro-kernel use."""

    def __init__(self, builder):
        self.builder = builder
        self.f32 = ir.FloatType()
        self.vec = ir.VectorType(self.f32, W)
        self.fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vec, [self.vec] * 3), f"llvm.fma.v{W}f32")
        self.zero = ir.Constant(self.vec, [0.0] * W)
        self.splat = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)
        self.undef = ir.Constant(self.vec, ir.Undefined)

    def broadcast(self, x):
        """A vector of W copies of scalar ``x``."""
        v = self.builder.insert_element(self.undef, x, ir.Constant(ir.IntType(32), 0))
        return self.builder.shuffle_vector(v, self.undef, self.splat)

    def as_f32(self, x):
        """``x`` (a float or double) as a float."""
        return self.builder.fptrunc(x, self.f32) if x.type != self.f32 else x


def _make_microkernel(NV):
    """The micro-kernel for tiles of MR x (NV * W): an intrinsic taking
    ``(kc, a, aps, ars, b, ldb, c, ldc, alpha, beta)`` that computes
    ``c[0:MR, 0:NV*W] = alpha * A @ B + beta * c`` (beta == 0: c is not read). ``a``,
    ``b``, ``c`` are addresses of float32 data (:func:`_addr` plus 4 * offset): A[r, p] is
    ``a[p * aps + r * ars]`` (packed: aps = MR, ars = 1), B[p, :] starts at ``b[p * ldb]``
    and C[r, :] at ``c[r * ldc]``, each row NV*W contiguous floats.
    """
    def typer(typingctx, kc, a, aps, ars, b, ldb, c, ldc, alpha, beta):
        return types.void(kc, a, aps, ars, b, ldb, c, ldc, alpha, beta), codegen

    def codegen(context, builder, signature, args):
        kc_, a_, aps_, ars_, b_, ldb_, c_, ldc_, alpha_, beta_ = args
        v = _Vectors(builder)
        a_ptr, b_ptr, c_ptr = (builder.inttoptr(x, v.f32.as_pointer()) for x in (a_, b_, c_))
        acc = _emit_k_loop(v, NV, kc_, a_ptr, aps_, ars_, b_ptr, ldb_)
        _emit_tile_store(v, NV, acc, c_ptr, ldc_, alpha_, beta_)
        return context.get_dummy_value()

    typer.__name__ = f"_microkernel_{NV * W}"
    return intrinsic(typer)


def _emit_k_loop(v, NV, kc_, a_ptr, aps_, ars_, b_ptr, ldb_):
    """The loop over the ``kc`` steps of the shared dimension; returns the MR * NV
    accumulators (A @ B, row r's vectors at ``r * NV ...``). They are phi nodes, so they
    live in registers."""
    builder = v.builder
    a_rows = [builder.mul(_i(r), ars_) for r in range(MR)]
    fn = builder.function
    entry = builder.block
    loop = fn.append_basic_block("mk.loop")
    body = fn.append_basic_block("mk.body")
    done = fn.append_basic_block("mk.done")
    builder.branch(loop)

    builder.position_at_end(loop)
    p = builder.phi(_I64)
    p.add_incoming(_i(0), entry)
    acc = []
    for _ in range(MR * NV):
        phi = builder.phi(v.vec)
        phi.add_incoming(v.zero, entry)
        acc.append(phi)
    builder.cbranch(builder.icmp_signed("<", p, kc_), body, done)

    builder.position_at_end(body)
    brow = builder.bitcast(builder.gep(b_ptr, [builder.mul(p, ldb_)]), v.vec.as_pointer())
    bv = [builder.load(builder.gep(brow, [_i(j)]), align=4) for j in range(NV)]
    arow = builder.gep(a_ptr, [builder.mul(p, aps_)])
    nxt = []
    for r in range(MR):
        av = v.broadcast(builder.load(builder.gep(arow, [a_rows[r]])))
        for j in range(NV):
            nxt.append(builder.call(v.fma, [av, bv[j], acc[r * NV + j]]))
    p_next = builder.add(p, _i(1))
    tail = builder.block
    builder.branch(loop)
    p.add_incoming(p_next, tail)
    for phi, val in zip(acc, nxt):
        phi.add_incoming(val, tail)
    builder.position_at_end(done)
    return acc


def _emit_tile_store(v, NV, acc, c_ptr, ldc_, alpha_, beta_):
    """Write the tile: c = alpha * acc, plus beta * c unless beta == 0 (c unread then)."""
    builder = v.builder
    va = v.broadcast(v.as_f32(alpha_))
    beta32 = v.as_f32(beta_)
    vb = v.broadcast(beta32)
    rows = []
    for r in range(MR):
        crow = builder.bitcast(builder.gep(c_ptr, [builder.mul(_i(r), ldc_)]),
                               v.vec.as_pointer())
        rows.append([builder.gep(crow, [_i(j)]) for j in range(NV)])
    no_beta = builder.fcmp_ordered("==", beta32, ir.Constant(v.f32, 0.0))
    with builder.if_else(no_beta) as (then, otherwise):
        with then:
            for r in range(MR):
                for j in range(NV):
                    builder.store(builder.fmul(va, acc[r * NV + j]), rows[r][j], align=4)
        with otherwise:
            for r in range(MR):
                for j in range(NV):
                    old = builder.load(rows[r][j], align=4)
                    new = builder.call(v.fma, [va, acc[r * NV + j], builder.fmul(vb, old)])
                    builder.store(new, rows[r][j], align=4)


_mk_wide = _make_microkernel(2)          # MR x 32
_mk_narrow = _make_microkernel(1)        # MR x 16


@jit
def _pack_a(a, trans_a, i0, p0, mr, kc, out):
    """out[p * MR + r] = op(a)[i0 + r, p0 + p] for the last ``mr < MR`` rows of op(a), zero
    for the rows past them: the one strip the micro-kernel cannot read in place."""
    for r in range(MR):
        for p in range(kc):
            if r >= mr:
                out[p * MR + r] = 0.0
            elif trans_a:
                out[p * MR + r] = a[p0 + p, i0 + r]
            else:
                out[p * MR + r] = a[i0 + r, p0 + p]


@intrinsic
def _transpose16(typingctx, src, ld_src, dst, ld_dst):
    """dst[c, r] = src[r, c] for a 16 x 16 block of float32 (addresses and row strides in
    elements): 16 vector loads, 64 two-vector shuffles, 16 vector stores. Each of the four
    rounds swaps one bit of the row index with the same bit of the column index."""
    def codegen(context, builder, signature, args):
        src_, lds_, dst_, ldd_ = args
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, W)
        i32 = ir.IntType(32)
        sp = builder.inttoptr(src_, f32.as_pointer())
        dp = builder.inttoptr(dst_, f32.as_pointer())
        rows = [builder.load(builder.bitcast(builder.gep(sp, [builder.mul(_i(r), lds_)]),
                                             vec.as_pointer()), align=4) for r in range(W)]
        s = W // 2
        while s >= 1:
            lo = ir.Constant(ir.VectorType(i32, W),
                             [c if not c & s else W + c - s for c in range(W)])
            hi = ir.Constant(ir.VectorType(i32, W),
                             [c + s if not c & s else W + c for c in range(W)])
            for i in range(W):
                if i & s:
                    continue
                a, b = rows[i], rows[i + s]
                rows[i] = builder.shuffle_vector(a, b, lo)
                rows[i + s] = builder.shuffle_vector(a, b, hi)
            s //= 2
        for r in range(W):
            ptr = builder.bitcast(builder.gep(dp, [builder.mul(_i(r), ldd_)]), vec.as_pointer())
            builder.store(rows[r], ptr, align=4)
        return context.get_dummy_value()
    return types.void(src, ld_src, dst, ld_dst), codegen


@jit
def _pack_b(b, trans_b, p0, j0, kc, nr, nt, out):
    """out[p * nt + j] = op(b)[p0 + p, j0 + j] for j < nr, zero up to the tile width nt."""
    if trans_b:
        # whole 16 x 16 blocks by vector transposes, the rest element by element
        jv, pv = nr // W * W, kc // W * W
        ldb = b.shape[1] if b.shape[0] <= 1 else b.strides[0] // 4
        base, out_at = _addr(b), _addr(out)
        for jb in range(0, jv, W):
            for pb in range(0, pv, W):
                _transpose16(base + 4 * ((j0 + jb) * ldb + p0 + pb), ldb,
                             out_at + 4 * (pb * nt + jb), nt)
            for j in range(jb, jb + W):
                for p in range(pv, kc):
                    out[p * nt + j] = b[j0 + j, p0 + p]
        for j in range(jv, nr):             # along b's rows: reads stay contiguous
            for p in range(kc):
                out[p * nt + j] = b[j0 + j, p0 + p]
    else:
        for p in range(kc):
            for j in range(nr):
                out[p * nt + j] = b[p0 + p, j0 + j]
    if nr < nt:
        for p in range(kc):
            for j in range(nr, nt):
                out[p * nt + j] = 0.0


@jit
def _tile(nt, kc, a, aps, ars, b, ldb, c, ldc, alpha, beta):
    if nt == NR:
        _mk_wide(kc, a, aps, ars, b, ldb, c, ldc, alpha, beta)
    else:
        _mk_narrow(kc, a, aps, ars, b, ldb, c, ldc, alpha, beta)


@intrinsic
def _f32_ptr(typingctx, address):
    """A float32 pointer from an integer address (for ``numba.carray`` views)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())
    return types.CPointer(types.float32)(types.int64), codegen


@jit
def _view(address, rows, ld):
    """The float32 matrix at ``address`` with row stride ``ld`` as a (rows, ld) array (its
    rows' tails past the real columns are never read)."""
    return carray(_f32_ptr(address), (max(rows, 1), max(ld, 1)))


def _core_py(m, n, k, a_at, lda, trans_a, b_at, ldb, trans_b, c_at, ldc, alpha, beta,
             i_lo, i_hi, j_lo, j_hi):
    """Rows ``i_lo:i_hi`` and columns ``j_lo:j_hi`` of c = alpha * op(a) @ op(b) + beta * c,
    on matrices given by address and row stride (elements within a row contiguous;
    ``trans_a``/``trans_b`` are 0 or 1). Compiled once as a C function: see ``_core``."""
    if i_hi <= i_lo or j_hi <= j_lo:
        return
    a = _view(a_at, k if trans_a else m, lda)
    b = _view(b_at, n if trans_b else k, ldb)
    c = _view(c_at, m, ldc)
    al = np.float32(alpha)
    if k == 0:
        for i in range(i_lo, i_hi):
            for j in range(j_lo, j_hi):
                c[i, j] = beta * c[i, j] if beta != 0.0 else 0.0
        return
    nt = NR_NARROW if j_hi - j_lo <= NR_NARROW else NR
    kcap = min(k, KC)
    # op(a) is read in place (measured faster than packing it at every shape dlrun's models
    # use); only a partial last strip of MR rows is copied, zero-padded. op(b) is read in
    # place where it is not transposed and a strip is whole, else packed strip by strip.
    apack = np.empty(MR * kcap, np.float32)
    bpack = np.empty(kcap * nt, np.float32)
    tile = np.empty(MR * nt, np.float32)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    aps, ars = (lda, 1) if trans_a else (1, lda)
    apack_at, bpack_at, tile_at = _addr(apack), _addr(bpack), _addr(tile)
    for p0 in range(0, k, KC):
        kc = min(KC, k - p0)
        bet = np.float32(beta) if p0 == 0 else one
        last = i_lo + (i_hi - i_lo) // MR * MR      # first row of a partial strip
        if last < i_hi:
            _pack_a(a, trans_a, last, p0, i_hi - last, kc, apack)
        for j0 in range(j_lo, j_hi, nt):
            nr = min(nt, j_hi - j0)
            in_place = not trans_b and nr == nt
            if in_place:
                b_tile, b_ld = b_at + 4 * (p0 * ldb + j0), ldb
            else:
                _pack_b(b, trans_b, p0, j0, kc, nr, nt, bpack)
                b_tile, b_ld = bpack_at, nt
            for r0 in range(i_lo, i_hi, MR):
                mr = min(MR, i_hi - r0)
                if mr < MR:
                    a_tile, sp, sr = apack_at, MR, 1
                else:
                    off = p0 * lda + r0 if trans_a else r0 * lda + p0
                    a_tile, sp, sr = a_at + 4 * off, aps, ars
                if mr == MR and nr == nt:
                    _tile(nt, kc, a_tile, sp, sr, b_tile, b_ld, c_at + 4 * (r0 * ldc + j0),
                          ldc, al, bet)
                else:                       # an edge tile: through the scratch tile
                    _tile(nt, kc, a_tile, sp, sr, b_tile, b_ld, tile_at, nt, one, zero)
                    for r in range(mr):
                        for j in range(nr):
                            v = al * tile[r * nt + j]
                            if bet != 0.0:
                                v += bet * c[r0 + r, j0 + j]
                            c[r0 + r, j0 + j] = v


# The core is compiled once, as a C function, and kernels call it by a symbol registered
# with LLVM in every process (as ``ops.blas`` does for cblas): called as a plain Numba
# function it was compiled into every caller and optimised again there, 1-2 s per caller
# and 7 s for the parallel one. By symbol, kernels that call it can still be cached on disk.
_I, _F = types.int64, types.float64
_CORE_SIG = types.void(_I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _F, _F, _I, _I, _I, _I)
_core_c = cfunc(_CORE_SIG, cache=CACHE, fastmath=FASTMATH, error_model="numpy")(_core_py)


def _register_core():
    import llvmlite.binding as llvm

    llvm.add_symbol("dlrun_sgemm_core_v1", _core_c.address)


_register_core()
_core = types.ExternalFunction("dlrun_sgemm_core_v1", _CORE_SIG)


@jit
def dims(a, b, c, trans_a, trans_b):
    """(m, n, k) of ``c = op(a) @ op(b)``; raises on shapes that do not fit."""
    m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    k2, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if k != k2 or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("gemm: shapes do not fit")
    return m, n, k


@jit
def rows_contiguous(x):
    """Whether the elements within each row of 2-D ``x`` are contiguous (numpy gives an
    empty array zero strides: it counts as contiguous)."""
    return x.size == 0 or x.shape[1] <= 1 or x.strides[1] == x.itemsize


@jit
def _layout(a, b, c, trans_a, trans_b):
    """(m, n, k, lda, ldb, ldc) of c = op(a) @ op(b); raises on shapes that do not fit or
    rows whose elements are not contiguous."""
    m, n, k = dims(a, b, c, trans_a, trans_b)
    if not (rows_contiguous(a) and rows_contiguous(b) and rows_contiguous(c)):
        raise ValueError("gemm: the elements of a row must be contiguous")
    lda = a.strides[0] // 4 if a.shape[0] > 1 else a.shape[1]
    ldb = b.strides[0] // 4 if b.shape[0] > 1 else b.shape[1]
    ldc = c.strides[0] // 4 if c.shape[0] > 1 else c.shape[1]
    return m, n, k, lda, ldb, ldc


@jit
def sgemm(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """c = alpha * op(a) @ op(b) + beta * c for float32 2-D arrays, single-threaded.

    Rows of ``a``, ``b``, ``c`` may be strided (slices); elements within a row must be
    contiguous. ``beta == 0`` never reads ``c`` (it may hold NaN).
    """
    m, n, k, lda, ldb, ldc = _layout(a, b, c, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    _core(m, n, k, _addr(a), lda, 1 if trans_a else 0, _addr(b), ldb, 1 if trans_b else 0,
          _addr(c), ldc, np.float64(alpha), np.float64(beta), 0, m, 0, n)


@jit
def split_bounds(m, n, parts):
    """How :func:`sgemm_parallel` cuts c between ``parts`` threads: along the longer side, at
    whole tiles. Returns (along rows?, array of parts + 1 bounds)."""
    rows = m >= n
    size, unit = (m, MR) if rows else (n, NR)
    tiles = (size + unit - 1) // unit
    parts = max(1, min(parts, tiles))
    bounds = np.empty(parts + 1, np.int64)
    for t in range(parts + 1):
        bounds[t] = min(size, (tiles * t // parts) * unit)
    return rows, bounds


@jit(parallel=True)
def _core_parallel(m, n, k, a_at, lda, trans_a, b_at, ldb, trans_b, c_at, ldc, alpha, beta,
                   parts):
    rows, bounds = split_bounds(m, n, parts)
    for t in prange(bounds.size - 1):
        if rows:
            _core(m, n, k, a_at, lda, trans_a, b_at, ldb, trans_b, c_at, ldc, alpha, beta,
                  bounds[t], bounds[t + 1], 0, n)
        else:
            _core(m, n, k, a_at, lda, trans_a, b_at, ldb, trans_b, c_at, ldc, alpha, beta,
                  0, m, bounds[t], bounds[t + 1])


@jit
def sgemm_parallel(a, b, c, alpha, beta, trans_a, trans_b, parts):
    """:func:`sgemm` with c cut between ``parts`` threads (Numba's thread pool)."""
    m, n, k, lda, ldb, ldc = _layout(a, b, c, trans_a, trans_b)
    if m == 0 or n == 0:
        return
    _core_parallel(m, n, k, _addr(a), lda, 1 if trans_a else 0, _addr(b), ldb,
                   1 if trans_b else 0, _addr(c), ldc, np.float64(alpha), np.float64(beta),
                   parts)
