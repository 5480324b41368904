//! tract's f32 matrix-multiply tile, 8 × 8, with its loop over K taken two steps at a time.
//!
//! tract's wasm GEMM kernel (`wasm_f32_8x8`) keeps 16 `v128` accumulators. wasmtime compiles wasm
//! SIMD to the host's vector registers, and x86-64 has 16 of them: with the operands of a step
//! (A's eight values as two vectors, B's eight as two, each B value splatted) there are more
//! live values than registers, and cranelift keeps the loop-carried accumulators in stack slots.
//! Every step then loads and stores each accumulator once. Taking two steps per iteration (LLVM's
//! wasm backend nests each accumulator's two multiply-adds, so cranelift loads and stores it once
//! for both) halves that traffic: the demo model's calls in pure wasm went from 19.2 ms to
//! 15.9 ms (p50, release, the same run). Three steps per iteration measured the same as two; four
//! spill the operands instead.
//!
//! The tile is held by column: `acc[j][0]` is rows 0–3 of column j, `acc[j][1]` rows 4–7. Every
//! output element is computed as in tract's own kernels: `acc = a·b + acc` fused, K in order,
//! then the fused operations in the order tract lists them. The results are the same bits as
//! `wasm_f32_8x8`'s; only the order in which elements are computed differs.
//!
//! Registration: the kernel joins tract's registry through `inventory`, with a boost that makes
//! it outrank tract's f32 kernels where tract chooses by preference (a symbolic N, as the
//! sequence axis of a text model), and a dispatch tier that names it where N is known and
//! larger than 1. Its A packing is that of tract's `wasm_f32_8x1`, which is registered again
//! with the same boost so that a call with N = 1 still runs a matrix-vector kernel.

use std::arch::wasm32::*;
use std::sync::LazyLock;

use tract_data::prelude::DatumType;
use tract_linalg::isa::{Arch, IsaSet};
use tract_linalg::mmm::{DynKernel, FusedKerSpec, Query, Suitable};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_linalg::pack::Packing;

/// Columns in a tile (and rows: A's packing is 8 wide too).
const N: usize = 8;

/// The name tract's dispatch knows the kernel by.
const NAME_8X8: &str = "moxnet_wasm_f32_8x8";

/// Outranks tract's kernels (preference 0 for every wasm kernel) in `retain_best`.
fn boost() -> isize {
    1
}

static KERNEL_8X8: LazyLock<DynKernel<8, 8, f32>> = LazyLock::new(|| {
    let mut kernel = DynKernel::<8, 8, f32>::new(
        NAME_8X8,
        kernel_f32_8x8,
        f32::packing(8).align(8),
        f32::packing(8).align(8),
    );
    kernel.arch = Some(Arch::Wasm32Simd128);
    kernel.with_boost(boost)
});

static KERNEL_8X1: LazyLock<DynKernel<8, 1, f32>> = LazyLock::new(|| {
    let mut kernel = tract_linalg::wasm::wasm_f32_8x1.clone();
    kernel.name = "moxnet_wasm_f32_8x1".into();
    kernel.with_boost(boost)
});

inventory::submit! { MmmRoutine { make: || KERNEL_8X8.mmm() } }
inventory::submit! { MmmRoutine { make: || KERNEL_8X1.mmm() } }

/// Where N is known, tract asks its tiers first; this one answers before tract's wasm tier
/// (precedence 1) for every f32 matrix product and leaves matrix-vector products to it.
fn preferred(_: &IsaSet, dt: DatumType, query: &Query, _: &[Suitable]) -> Option<&'static str> {
    (dt == DatumType::F32 && query.n != Some(1)).then_some(NAME_8X8)
}

inventory::submit! {
    MmmTier {
        arch: Some(Arch::Wasm32Simd128),
        precedence: 2,
        name: "moxnet-wasm-f32-8x8",
        applies: |_| true,
        preferred,
    }
}

/// Keeps the registrations in the linked module: wasm-ld drops an object that nothing
/// references, its constructors included.
pub fn register() {
    std::hint::black_box((
        kernel_f32_8x8 as *const (),
        preferred as *const (),
        &*KERNEL_8X8 as *const _ as *const (),
    ));
}

/// `acc + a·b`, fused: `f32x4.relaxed_madd`, which the sandbox runs in wasmtime's deterministic
/// profile (always fused), as tract's wasm kernels do with relaxed SIMD.
#[inline(always)]
fn madd(a: v128, b: v128, acc: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, acc)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_add(acc, f32x4_mul(a, b))
    }
}

/// Applies `$op(operand, acc)` to every accumulator (`$op(acc, operand)` with `flip`).
macro_rules! each {
    ($acc:ident, |$x:ident| $body:expr) => {{
        for pair in $acc.iter_mut() {
            for v in pair.iter_mut() {
                let $x = *v;
                *v = $body;
            }
        }
    }};
}

/// The kernel: walks tract's fused-operation list for one 8 × N tile.
///
/// # Safety
///
/// tract's contract for every kernel: the pointers in `spec` are valid for the tile's extent
/// (A panels of 8 × k, B panels of N × k f32, row and column vectors of 8 and N, tiles reached
/// through their strides), and the list ends with `Done`.
unsafe fn kernel_f32_8x8(spec: &[FusedKerSpec<f32>]) -> isize {
    // acc[j][0] is rows 0-3 of column j, acc[j][1] rows 4-7.
    let mut acc = [[f32x4_splat(0.0); 2]; N];
    for op in spec {
        // SAFETY: the pointers come from tract with the extents documented above.
        unsafe {
            match *op {
                FusedKerSpec::Done => break,
                FusedKerSpec::Clear => acc = [[f32x4_splat(0.0); 2]; N],
                FusedKerSpec::LoadTile(col_major, _row_major) => {
                    // col_major[j * 8 + r] is element (r, j).
                    let p = col_major as *const v128;
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = [v128_load(p.add(2 * j)), v128_load(p.add(2 * j + 1))];
                    }
                }
                FusedKerSpec::ScalarMin(s) => each!(acc, |a| f32x4_min(f32x4_splat(s), a)),
                FusedKerSpec::ScalarMax(s) => each!(acc, |a| f32x4_max(f32x4_splat(s), a)),
                FusedKerSpec::ScalarAdd(s) => each!(acc, |a| f32x4_add(f32x4_splat(s), a)),
                FusedKerSpec::ScalarMul(s) => each!(acc, |a| f32x4_mul(f32x4_splat(s), a)),
                FusedKerSpec::ScalarSub(s) => each!(acc, |a| f32x4_sub(f32x4_splat(s), a)),
                FusedKerSpec::ScalarSubF(s) => each!(acc, |a| f32x4_sub(a, f32x4_splat(s))),
                FusedKerSpec::LeakyRelu(alpha) => {
                    let s = f32x4_splat(alpha);
                    let zero = f32x4_splat(0.0);
                    each!(acc, |a| v128_bitselect(
                        a,
                        f32x4_mul(s, a),
                        f32x4_gt(a, zero)
                    ))
                }
                FusedKerSpec::PerRowMin(row) => per_row(&mut acc, row, |r, a| f32x4_min(r, a)),
                FusedKerSpec::PerRowMax(row) => per_row(&mut acc, row, |r, a| f32x4_max(r, a)),
                FusedKerSpec::PerRowAdd(row) => per_row(&mut acc, row, |r, a| f32x4_add(r, a)),
                FusedKerSpec::PerRowMul(row) => per_row(&mut acc, row, |r, a| f32x4_mul(r, a)),
                FusedKerSpec::PerRowSub(row) => per_row(&mut acc, row, |r, a| f32x4_sub(r, a)),
                FusedKerSpec::PerRowSubF(row) => per_row(&mut acc, row, |r, a| f32x4_sub(a, r)),
                FusedKerSpec::PerColMin(col) => per_col(&mut acc, col, |c, a| f32x4_min(c, a)),
                FusedKerSpec::PerColMax(col) => per_col(&mut acc, col, |c, a| f32x4_max(c, a)),
                FusedKerSpec::PerColAdd(col) => per_col(&mut acc, col, |c, a| f32x4_add(c, a)),
                FusedKerSpec::PerColMul(col) => per_col(&mut acc, col, |c, a| f32x4_mul(c, a)),
                FusedKerSpec::PerColSub(col) => per_col(&mut acc, col, |c, a| f32x4_sub(c, a)),
                FusedKerSpec::PerColSubF(col) => per_col(&mut acc, col, |c, a| f32x4_sub(a, c)),
                FusedKerSpec::QScale(shift, policy, mult) => {
                    let s = tract_linalg::Scaler::from_fuse_params(shift, policy, mult).scale;
                    each!(acc, |a| f32x4_mul(f32x4_splat(s), a))
                }
                FusedKerSpec::RoundingShiftRight(shift, _) => {
                    let s = 2f32.powi(-(shift as i32));
                    each!(acc, |a| f32x4_mul(f32x4_splat(s), a))
                }
                FusedKerSpec::ShiftLeft(shift) => {
                    let s = 2f32.powi(shift as i32);
                    each!(acc, |a| f32x4_mul(f32x4_splat(s), a))
                }
                FusedKerSpec::AddUnicast(tile) => {
                    let at = |r: isize, j: usize| {
                        let offset = r * tile.row_byte_stride + j as isize * tile.col_byte_stride;
                        *(tile.ptr.offset(offset) as *const f32)
                    };
                    for (j, [lo, hi]) in acc.iter_mut().enumerate() {
                        *lo = f32x4_add(*lo, f32x4(at(0, j), at(1, j), at(2, j), at(3, j)));
                        *hi = f32x4_add(*hi, f32x4(at(4, j), at(5, j), at(6, j), at(7, j)));
                    }
                }
                FusedKerSpec::AddRowColProducts(rows, cols) => {
                    let rows = rows as *const v128;
                    let (rl, rh) = (v128_load(rows), v128_load(rows.add(1)));
                    for (j, [lo, hi]) in acc.iter_mut().enumerate() {
                        let c = v128_load32_splat(cols.add(j) as *const u32);
                        *lo = madd(rl, c, *lo);
                        *hi = madd(rh, c, *hi);
                    }
                }
                FusedKerSpec::Store(tile) => {
                    for (j, [lo, hi]) in acc.iter().enumerate() {
                        let column = tile.ptr.offset(j as isize * tile.col_byte_stride);
                        let row = |r: isize| column.offset(r * tile.row_byte_stride) as *mut f32;
                        *row(0) = f32x4_extract_lane::<0>(*lo);
                        *row(1) = f32x4_extract_lane::<1>(*lo);
                        *row(2) = f32x4_extract_lane::<2>(*lo);
                        *row(3) = f32x4_extract_lane::<3>(*lo);
                        *row(4) = f32x4_extract_lane::<0>(*hi);
                        *row(5) = f32x4_extract_lane::<1>(*hi);
                        *row(6) = f32x4_extract_lane::<2>(*hi);
                        *row(7) = f32x4_extract_lane::<3>(*hi);
                    }
                }
                FusedKerSpec::AddMatMul {
                    k,
                    pa,
                    pb,
                    packing: _,
                } => add_mat_mul(&mut acc, k, pa as *const v128, pb as *const u32),
            }
        }
    }
    0
}

/// `acc += A · B` over `k` steps: A packed 8 per step, B packed N per step; two steps per
/// iteration (see the module's documentation), then the odd one.
///
/// # Safety
///
/// `pa` holds `8 * k` and `pb` `N * k` f32.
#[inline(always)]
unsafe fn add_mat_mul(acc: &mut [[v128; 2]; N], k: usize, pa: *const v128, pb: *const u32) {
    let mut c = *acc;
    macro_rules! step {
        ($i:expr) => {{
            let i = $i;
            // SAFETY: i < k, within the panels (see above).
            unsafe {
                let al = v128_load(pa.add(2 * i));
                let ah = v128_load(pa.add(2 * i + 1));
                let b = pb.add(N * i) as *const v128;
                let b0 = v128_load(b);
                let b1 = v128_load(b.add(1));
                // Column j's B value splatted from its vector (a shuffle, not a load).
                macro_rules! col {
                    ($j:literal, $v:ident, $l:literal) => {{
                        let bj = i32x4_shuffle::<$l, $l, $l, $l>($v, $v);
                        c[$j][0] = madd(al, bj, c[$j][0]);
                        c[$j][1] = madd(ah, bj, c[$j][1]);
                    }};
                }
                col!(0, b0, 0);
                col!(1, b0, 1);
                col!(2, b0, 2);
                col!(3, b0, 3);
                col!(4, b1, 0);
                col!(5, b1, 1);
                col!(6, b1, 2);
                col!(7, b1, 3);
            }
        }};
    }
    let mut i = 0;
    while i + 2 <= k {
        step!(i);
        step!(i + 1);
        i += 2;
    }
    if i < k {
        step!(i);
    }
    *acc = c;
}

/// `op(row vector, acc)` for every column: `row` holds the 8 rows' values.
///
/// # Safety
///
/// `row` holds 8 f32.
#[inline(always)]
unsafe fn per_row(acc: &mut [[v128; 2]; N], row: *const f32, op: impl Fn(v128, v128) -> v128) {
    // SAFETY: see above.
    let (rl, rh) = unsafe {
        (
            v128_load(row as *const v128),
            v128_load(row.add(4) as *const v128),
        )
    };
    for [lo, hi] in acc.iter_mut() {
        *lo = op(rl, *lo);
        *hi = op(rh, *hi);
    }
}

/// `op(column value, acc)` for every row: `col` holds the N columns' values.
///
/// # Safety
///
/// `col` holds N f32.
#[inline(always)]
unsafe fn per_col(acc: &mut [[v128; 2]; N], col: *const f32, op: impl Fn(v128, v128) -> v128) {
    for (j, [lo, hi]) in acc.iter_mut().enumerate() {
        // SAFETY: j < N, see above.
        let c = unsafe { v128_load32_splat(col.add(j) as *const u32) };
        *lo = op(c, *lo);
        *hi = op(c, *hi);
    }
}
