//! CPU kernels of our own: attention over the paged KV cache, read in place, and the
//! Q4_1 matrix product (candle 0.11 has no SIMD kernel for Q4_1; its scalar one is ~10×
//! slower, and requantizing to Q8_0 at load costs memory and accuracy).
//!
//! Why: candle's ops would gather every sequence's keys and values into new tensors each
//! layer and step, and pick different matmul kernels for different query counts, so one
//! sequence's numbers would depend on what else is in the batch (and a quantized model
//! amplifies such last-bit differences into different tokens). Here every output row is
//! computed by one task in one fixed order from that row's inputs only: a sequence gets
//! bit-identical attention whether it runs alone or in a batch, prefilled in one chunk or
//! many. Attention needs no `unsafe`: plain slices, and 8 independent accumulators so the
//! compiler vectorizes the dot products. The Q4_1 product has an AVX2 path (the guest's
//! x86-64-v3 baseline, chosen at run time) in the `x86` submodule, the only `unsafe` here,
//! tested against the portable one; each output row is again computed the same way
//! whatever other rows share the call.
//! Trusts: slots are inside the cache and positions are causal (the engine builds both).

use rayon::prelude::*;

/// Sizes the kernel needs.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
}

/// One query row: its sequence's cache slots for positions `0..=pos`.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The row's position; it attends to positions `0..=pos`.
    pub pos: usize,
    /// Slot of every position of its sequence (at least `pos + 1` of them).
    pub slots: &'a [u32],
}

/// Dot product with 8 independent partial sums (a fixed order, vectorizable).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `out[row, h, :] = softmax(q[row, h, :] · K[0..=pos] / √d) · V[0..=pos]` for every row and
/// head. `q` and `out` are `[rows, heads, head_dim]`; the caches are `[slots, kv_heads,
/// head_dim]`.
pub fn attention(h: Heads, rows: &[Row<'_>], q: &[f32], k_cache: &[f32], v_cache: &[f32], out: &mut [f32]) {
    let d = h.head_dim;
    let group = h.heads / h.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, o)| {
        let (r, head) = (i / h.heads, i % h.heads);
        let Some(row) = rows.get(r) else { return };
        let kvh = head / group;
        let qv = &q[i * d..(i + 1) * d];
        let at = |p: usize| (row.slots[p] as usize * h.kv_heads + kvh) * d;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..=row.pos {
            let s = dot(qv, &k_cache[at(p)..at(p) + d]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (p, w) in scores.iter().enumerate() {
            let w = w / sum;
            for (x, v) in o.iter_mut().zip(&v_cache[at(p)..at(p) + d]) {
                *x += w * v;
            }
        }
    });
}

/// Weights per block (Q4_1 and Q8_0).
pub const QBLOCK: usize = 32;

/// A block-quantized format our kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKind {
    /// 20 bytes per block: scale `d` and minimum `m` as f16, then 16 bytes of 4-bit values
    /// (element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble); a
    /// weight is `d · q + m`.
    Q4_1,
    /// 34 bytes per block: scale `d` as f16, then 32 signed bytes; a weight is `d · q`.
    Q8_0,
}

impl QKind {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of packed values per block as we store them.
    fn packed(self) -> usize {
        match self {
            Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }
}

/// A block-quantized weight matrix `[rows (outputs), cols (inputs)]`, split into planes for
/// the kernel: scales (and Q4_1's minimums) as f32, packed values as stored.
#[derive(Debug)]
pub struct QMatrix {
    kind: QKind,
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<u8>,
}

impl QMatrix {
    /// Reads GGUF blocks (row-major, `cols` a multiple of 32); `None` when the sizes do not
    /// match.
    pub fn from_gguf(kind: QKind, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let bb = kind.block_bytes();
        if !cols.is_multiple_of(QBLOCK) || bytes.len() != rows.checked_mul(cols / QBLOCK)?.checked_mul(bb)? {
            return None;
        }
        let blocks = bytes.len() / bb;
        let mut out = Self {
            kind,
            rows,
            cols,
            d: Vec::with_capacity(blocks),
            m: Vec::new(),
            qs: Vec::with_capacity(blocks * kind.packed()),
        };
        for b in bytes.chunks_exact(bb) {
            out.d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            match kind {
                QKind::Q4_1 => {
                    out.m.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
                    out.qs.extend_from_slice(&b[4..]);
                }
                QKind::Q8_0 => out.qs.extend_from_slice(&b[2..]),
            }
        }
        Some(out)
    }

    /// Output features (rows of the matrix).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r` dequantized (`d · q`, or `d · q + m` for Q4_1, as candle computes it):
    /// embedding lookups read the quantized table instead of a dense f32 copy of it.
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        let nb = self.cols / QBLOCK;
        let p = self.kind.packed();
        for b in r * nb..(r + 1) * nb {
            let (Some(&d), Some(qs)) = (self.d.get(b), self.qs.get(b * p..(b + 1) * p)) else { return };
            match self.kind {
                QKind::Q8_0 => out.extend(qs.iter().map(|&q| f32::from(q as i8) * d)),
                QKind::Q4_1 => {
                    let m = self.m.get(b).copied().unwrap_or(0.0);
                    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
                }
            }
        }
    }

    /// `x · Wᵀ` for `x` of `[m, cols]`: `[m, rows]`. Activations are quantized to 8 bits
    /// per 32-block (as llama.cpp does), so the inner loop is integer.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let a = Q8Rows::quantize(x, m, self.cols);
        let mut out_t = vec![0f32; self.rows * m];
        let avx2 = avx2_available();
        // Tasks of 16 output features, each computing them for every row (column-major
        // result, transposed below): each weight block is read once per 4 rows.
        out_t.par_chunks_mut(16 * m).enumerate().for_each(|(task, out)| {
            for (i, col) in out.chunks_mut(m).enumerate() {
                self.column(task * 16 + i, &a, col, avx2);
            }
        });
        if m == 1 {
            return out_t;
        }
        let mut out = vec![0f32; m * self.rows];
        for (c, col) in out_t.chunks_exact(m).enumerate() {
            for (r, v) in col.iter().enumerate() {
                out[r * self.rows + c] = *v;
            }
        }
        out
    }

    /// Output feature `c` for every activation row, four rows at a time. Each row's sum is
    /// accumulated in the same order whatever rows share its tile.
    fn column(&self, c: usize, a: &Q8Rows, out: &mut [f32], avx2: bool) {
        let nb = self.cols / QBLOCK;
        let p = self.kind.packed();
        let col = Column {
            kind: self.kind,
            d: &self.d[c * nb..(c + 1) * nb],
            mins: if self.kind == QKind::Q4_1 { &self.m[c * nb..(c + 1) * nb] } else { &[] },
            qs: &self.qs[c * nb * p..(c + 1) * nb * p],
        };
        for (tile, o) in out.chunks_mut(4).enumerate() {
            let rows = tile * 4..tile * 4 + o.len();
            #[cfg(target_arch = "x86_64")]
            if avx2 && x86::column_tile(&col, a, rows.clone(), o) {
                continue;
            }
            let _ = avx2;
            scalar_tile(&col, a, rows, o);
        }
    }
}

/// One output feature's blocks.
struct Column<'a> {
    kind: QKind,
    d: &'a [f32],
    mins: &'a [f32],
    qs: &'a [u8],
}

/// Activation rows quantized per 32-block: `x ≈ d · q`, with `s = d · Σq` for the Q4_1
/// minimum term.
struct Q8Rows {
    nb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Q8Rows {
    fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        let nb = cols / QBLOCK;
        let mut r = Self { nb, q: vec![0; m * cols], d: vec![0.0; m * nb], s: vec![0.0; m * nb] };
        for (i, (xb, qb)) in x.chunks_exact(QBLOCK).zip(r.q.chunks_exact_mut(QBLOCK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qb.iter_mut().zip(xb) {
                *q = (v * inv).round_ties_even() as i8;
                sum += i32::from(*q);
            }
            r.d[i] = d;
            r.s[i] = d * sum as f32;
        }
        r
    }
}

/// The portable kernel: exact integer block sums, then the same scaling as the AVX2 one.
fn scalar_tile(col: &Column<'_>, a: &Q8Rows, rows: std::ops::Range<usize>, out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows) {
        let mut acc = 0f32;
        let mut min_acc = 0f32;
        for b in 0..a.nb {
            let x = &a.q[(r * a.nb + b) * QBLOCK..][..QBLOCK];
            let isum: i32 = match col.kind {
                QKind::Q4_1 => {
                    let w = &col.qs[b * 16..b * 16 + 16];
                    (0..16).map(|j| i32::from(w[j] & 0x0F) * i32::from(x[j]) + i32::from(w[j] >> 4) * i32::from(x[j + 16])).sum()
                }
                QKind::Q8_0 => {
                    let w = &col.qs[b * 32..b * 32 + 32];
                    (0..32).map(|j| i32::from(w[j] as i8) * i32::from(x[j])).sum()
                }
            };
            acc += col.d[b] * a.d[r * a.nb + b] * isum as f32;
            if col.kind == QKind::Q4_1 {
                min_acc += col.mins[b] * a.s[r * a.nb + b];
            }
        }
        *o = acc + min_acc;
    }
}

/// Whether the AVX2 + FMA kernel can run here (the guest's x86-64-v3 baseline has both).
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX2 kernel, the only `unsafe` of inference: intrinsics on slices whose bounds are
/// checked before each load.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use super::{Column, Q8Rows, QBLOCK, QKind};
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Runs a SIMD tile when this CPU has AVX2 and FMA; false (nothing written) otherwise.
    /// Q4_1 takes the specialised kernel ([`q4_1_tile`], with AVX-512 VNNI where present,
    /// bit-identical to its AVX2 form); Q8_0 the generic [`tile`].
    pub fn column_tile(col: &Column<'_>, a: &Q8Rows, rows: std::ops::Range<usize>, out: &mut [f32]) -> bool {
        if !super::avx2_available() {
            return false;
        }
        let n = rows.len().min(4).min(out.len());
        let nb = a.nb;
        let fits = col.d.len() >= nb
            && col.qs.len() >= nb * 16
            && (col.kind != QKind::Q4_1 || col.mins.len() >= nb)
            && a.q.len() >= (rows.start + n) * nb * QBLOCK
            && a.d.len() >= (rows.start + n) * nb
            && a.s.len() >= (rows.start + n) * nb;
        if col.kind == QKind::Q4_1 && fits && n > 0 {
            let vnni = vnni_available();
            // SAFETY: AVX2 and FMA are present (checked above; AVX-512 VNNI/VL too when
            // `vnni`), and `fits` checked every slice the kernel reads.
            unsafe {
                match (n, vnni) {
                    (1, false) => q4_1_tile::<1>(col, a, rows.start, out),
                    (2, false) => q4_1_tile::<2>(col, a, rows.start, out),
                    (3, false) => q4_1_tile::<3>(col, a, rows.start, out),
                    (_, false) => q4_1_tile::<4>(col, a, rows.start, out),
                    (1, true) => q4_1_tile_vnni::<1>(col, a, rows.start, out),
                    (2, true) => q4_1_tile_vnni::<2>(col, a, rows.start, out),
                    (3, true) => q4_1_tile_vnni::<3>(col, a, rows.start, out),
                    (_, true) => q4_1_tile_vnni::<4>(col, a, rows.start, out),
                }
            }
            return true;
        }
        // SAFETY: AVX2 and FMA are present (checked just above).
        unsafe { tile(col, a, rows, out) };
        true
    }

    /// AVX-512 VNNI with 256-bit registers (`vpdpbusd`): one instruction per block and row
    /// instead of `vpmaddubsw` + `vpmaddwd`, with the same integer per lane.
    pub(super) fn vnni_available() -> bool {
        std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
    }

    /// The Q4_1 tile for `N` rows starting at `row0`: accumulators in registers, loads
    /// through pointers whose bounds the caller checked, the block's 4-bit weights expanded
    /// once for all rows. `$dot` turns (weights u8, activations i8) into 8 lanes of
    /// 4-product sums.
    macro_rules! q4_1_tile {
        ($name:ident, $features:literal, $dot:expr) => {
            /// # Safety
            /// The CPU must have the enabled features; the caller checked that `col` holds
            /// `a.nb` blocks and `a` holds rows `row0..row0 + N`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const N: usize>(col: &Column<'_>, a: &Q8Rows, row0: usize, out: &mut [f32]) {
                let nb = a.nb;
                let low = _mm_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut min_acc = [0f32; N];
                let (qs, d, mins) = (col.qs.as_ptr(), col.d.as_ptr(), col.mins.as_ptr());
                let (aq, ad, as_) = (a.q.as_ptr(), a.d.as_ptr(), a.s.as_ptr());
                for b in 0..nb {
                    // SAFETY (all loads below): b < nb and row0 + t < row0 + N, inside the
                    // lengths the caller checked.
                    let packed = unsafe { _mm_loadu_si128(qs.add(b * 16).cast()) };
                    let lo = _mm_and_si128(packed, low);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low);
                    let wq = _mm256_set_m128i(hi, lo);
                    let dw = unsafe { _mm256_broadcast_ss(&*d.add(b)) };
                    let mw = unsafe { *mins.add(b) };
                    for t in 0..N {
                        let i = (row0 + t) * nb + b;
                        let xq = unsafe { _mm256_loadu_si256(aq.add(i * QBLOCK).cast()) };
                        let p = $dot(wq, xq);
                        let scale = _mm256_mul_ps(dw, unsafe { _mm256_broadcast_ss(&*ad.add(i)) });
                        acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[t]);
                        min_acc[t] += mw * unsafe { *as_.add(i) };
                    }
                }
                for t in 0..N.min(out.len()) {
                    out[t] = hsum(acc[t]) + min_acc[t];
                }
            }
        };
    }

    q4_1_tile!(q4_1_tile, "avx2,fma", |w, x| _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
    q4_1_tile!(q4_1_tile_vnni, "avx2,fma,avx512f,avx512vnni,avx512vl", |w, x| _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x));

    /// [`super::scalar_tile`] with 32 products per instruction group: a weight block is
    /// loaded (and Q4_1's nibbles expanded) once and multiplied with up to four rows'
    /// 8-bit activations.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(col: &Column<'_>, a: &Q8Rows, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let n = rows.len().min(4).min(out.len());
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut min_acc = [0f32; 4];
        let q4 = col.kind == QKind::Q4_1;
        for b in 0..a.nb {
            // Unsigned weights for maddubs; Q8_0's signs move onto the activations.
            let (wq, signed) = if q4 {
                let w: &[u8; 16] = col.qs[b * 16..b * 16 + 16].try_into().unwrap_or(&[0; 16]);
                // SAFETY: `w` is 16 readable bytes; unaligned load.
                let packed = unsafe { _mm_loadu_si128(w.as_ptr().cast()) };
                let lo = _mm_and_si128(packed, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low);
                (_mm256_set_m128i(hi, lo), None)
            } else {
                let w: &[u8; 32] = col.qs[b * 32..b * 32 + 32].try_into().unwrap_or(&[0; 32]);
                // SAFETY: `w` is 32 readable bytes; unaligned load.
                let raw = unsafe { _mm256_loadu_si256(w.as_ptr().cast()) };
                (_mm256_sign_epi8(raw, raw), Some(raw))
            };
            for t in 0..n {
                let r = rows.start + t;
                let at = (r * a.nb + b) * QBLOCK;
                let x: &[i8; 32] = a.q[at..at + QBLOCK].try_into().unwrap_or(&[0; 32]);
                // SAFETY: `x` is 32 readable bytes; unaligned load.
                let mut xq = unsafe { _mm256_loadu_si256(x.as_ptr().cast()) };
                if let Some(raw) = signed {
                    xq = _mm256_sign_epi8(xq, raw);
                }
                // u8 × i8 pairwise i16 sums: ≤ 2·127·127 for Q8_0 (i16 saturation only at
                // −128·−128 pairs, which the 127-clamped activations never produce).
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones);
                let scale = _mm256_set1_ps(col.d[b] * a.d[r * a.nb + b]);
                acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[t]);
                if q4 {
                    min_acc[t] += col.mins[b] * a.s[r * a.nb + b];
                }
            }
        }
        for t in 0..n {
            out[t] = hsum(acc[t]) + min_acc[t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random fill.
    fn fill(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The textbook computation in f64, one row and head at a time.
    fn reference(h: Heads, rows: &[Row<'_>], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let d = h.head_dim;
        let mut out = vec![0f32; rows.len() * h.heads * d];
        for (r, row) in rows.iter().enumerate() {
            for head in 0..h.heads {
                let kvh = head / (h.heads / h.kv_heads);
                let qv = &q[(r * h.heads + head) * d..][..d];
                let base = |p: usize| (row.slots[p] as usize * h.kv_heads + kvh) * d;
                let scores: Vec<f64> = (0..=row.pos)
                    .map(|p| (0..d).map(|j| f64::from(qv[j]) * f64::from(k[base(p) + j])).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for j in 0..d {
                    let x: f64 = (0..=row.pos).map(|p| w[p] / sum * f64::from(v[base(p) + j])).sum();
                    out[(r * h.heads + head) * d + j] = x as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_scalar_reference() {
        let h = Heads { heads: 6, kv_heads: 2, head_dim: 20 };
        let slots_a: Vec<u32> = (0..40).rev().collect();
        let slots_b: Vec<u32> = (40..50).collect();
        let rows = [
            Row { pos: 0, slots: &slots_a },
            Row { pos: 39, slots: &slots_a },
            Row { pos: 17, slots: &slots_a },
            Row { pos: 9, slots: &slots_b },
        ];
        let q = fill(rows.len() * h.heads * h.head_dim, 1);
        let k = fill(50 * h.kv_heads * h.head_dim, 2);
        let v = fill(50 * h.kv_heads * h.head_dim, 3);
        let mut out = vec![0f32; q.len()];
        attention(h, &rows, &q, &k, &v, &mut out);
        let want = reference(h, &rows, &q, &k, &v);
        let diff = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "max difference {diff}");
    }

    /// Q4_1 blocks with random nibbles, scales and minimums.
    fn q4_1_bytes(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let vals = fill(rows * cols / QBLOCK * 2, seed);
        let nibbles = fill(rows * cols / 2, seed + 1);
        let mut out = Vec::new();
        for (b, qs) in nibbles.chunks_exact(16).enumerate() {
            out.extend_from_slice(&half::f16::from_f32(vals[2 * b] * 0.05).to_le_bytes());
            out.extend_from_slice(&half::f16::from_f32(vals[2 * b + 1] * 0.1).to_le_bytes());
            out.extend(qs.iter().map(|v| ((v + 1.0) * 127.9) as u8));
        }
        out
    }

    #[test]
    fn q4_1_matmul_matches_dequantized_weights() {
        let (rows, cols, m) = (40, 96, 6);
        let bytes = q4_1_bytes(rows, cols, 11);
        let w = QMatrix::from_gguf(QKind::Q4_1, &bytes, rows, cols).unwrap_or_else(|| panic!("sizes"));
        let x = fill(m * cols, 12);
        let got = w.matmul(&x, m);
        // Reference: dequantize d·q + m and multiply in f64.
        for r in 0..m {
            for c in 0..rows {
                let mut want = 0f64;
                for k in 0..cols {
                    let blk = c * cols / 32 + k / 32;
                    let byte = w.qs[blk * 16 + (k % 32) % 16];
                    let q = if k % 32 < 16 { byte & 0x0F } else { byte >> 4 };
                    let wv = f64::from(w.d[blk]) * f64::from(q) + f64::from(w.m[blk]);
                    want += wv * f64::from(x[r * cols + k]);
                }
                let g = f64::from(got[r * rows + c]);
                // 8-bit activations: error within a few hundredths of the row's scale.
                assert!((g - want).abs() < 0.05 * (1.0 + want.abs()), "row {r} col {c}: {g} vs {want}");
            }
        }
        assert!(QMatrix::from_gguf(QKind::Q4_1, &bytes[1..], rows, cols).is_none(), "a truncated matrix is refused");
    }

    #[test]
    fn q8_0_matmul_matches_dequantized_weights_and_the_portable_path() {
        let (rows, cols, m) = (24, 64, 5);
        let vals = fill(rows * cols / QBLOCK, 31);
        let qs = fill(rows * cols, 32);
        let mut bytes = Vec::new();
        for (b, q) in qs.chunks_exact(QBLOCK).enumerate() {
            bytes.extend_from_slice(&half::f16::from_f32(vals[b].abs() * 0.02 + 0.001).to_le_bytes());
            // The full signed range, −128 included.
            bytes.extend(q.iter().map(|v| ((v * 128.0).floor().clamp(-128.0, 127.0) as i8) as u8));
        }
        let w = QMatrix::from_gguf(QKind::Q8_0, &bytes, rows, cols).unwrap_or_else(|| panic!("sizes"));
        let x = fill(m * cols, 33);
        let got = w.matmul(&x, m);
        // Reference: the dequantized weights times the 8-bit activations, in f64; only
        // float rounding separates them.
        let a = Q8Rows::quantize(&x, m, cols);
        for r in 0..m {
            for c in 0..rows {
                let want: f64 = (0..cols)
                    .map(|k| {
                        let blk = c * cols / 32 + k / 32;
                        let xa = f64::from(a.d[r * cols / 32 + k / 32]) * f64::from(a.q[r * cols + k]);
                        f64::from(w.d[blk]) * f64::from(w.qs[blk * 32 + k % 32] as i8) * xa
                    })
                    .sum();
                let g = f64::from(got[r * rows + c]);
                assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "row {r} col {c}: {g} vs {want}");
            }
        }
        for c in 0..rows {
            let (mut simd, mut portable) = (vec![0f32; m], vec![0f32; m]);
            w.column(c, &a, &mut simd, avx2_available());
            w.column(c, &a, &mut portable, false);
            for (s, p) in simd.iter().zip(&portable) {
                assert!((s - p).abs() <= 1e-4 * (1.0 + p.abs()), "col {c}: {s} vs {p}");
            }
        }
        assert!(QMatrix::from_gguf(QKind::Q8_0, &bytes[..bytes.len() - 1], rows, cols).is_none());
        // Rows dequantize as candle dequantizes the same blocks.
        let dev = candle_core::Device::Cpu;
        let shape = candle_core::Shape::from((rows, cols));
        let q = candle_core::quantized::QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(&bytes),
                &dev,
                candle_core::quantized::GgmlDType::Q8_0,
            )
            .unwrap_or_else(|e| panic!("{e}")),
            shape,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dense = q.dequantize(&dev).and_then(|t| t.to_vec2::<f32>()).unwrap_or_else(|e| panic!("{e}"));
        let mut row = Vec::new();
        w.dequantize_row(3, &mut row);
        assert_eq!(row, dense[3]);
    }

    #[test]
    fn q4_1_simd_equals_portable_and_rows_are_independent() {
        let (rows, cols, m) = (33, 128, 7);
        let w = QMatrix::from_gguf(QKind::Q4_1, &q4_1_bytes(rows, cols, 21), rows, cols).unwrap_or_else(|| panic!("sizes"));
        let x = fill(m * cols, 22);
        let a = Q8Rows::quantize(&x, m, cols);
        for c in [0, 17, 32] {
            let mut simd = vec![0f32; m];
            let mut portable = vec![0f32; m];
            w.column(c, &a, &mut simd, avx2_available());
            w.column(c, &a, &mut portable, false);
            for (s, p) in simd.iter().zip(&portable) {
                assert!((s - p).abs() <= 1e-4 * (1.0 + p.abs()), "col {c}: {s} vs {p}");
            }
        }
        // Row 5 computed in a batch of 7 equals row 5 computed alone, bit for bit.
        let together = w.matmul(&x, m);
        let alone = w.matmul(&x[5 * cols..6 * cols], 1);
        assert_eq!(&together[5 * rows..6 * rows], &alone[..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn q4_1_vnni_equals_avx2_bit_for_bit() {
        if !(avx2_available() && x86::vnni_available()) {
            println!("no AVX-512 VNNI here: nothing to compare");
            return;
        }
        let (rows, cols, m) = (8, 256, 4);
        let w = QMatrix::from_gguf(QKind::Q4_1, &q4_1_bytes(rows, cols, 41), rows, cols).unwrap_or_else(|| panic!("sizes"));
        let a = Q8Rows::quantize(&fill(m * cols, 42), m, cols);
        let nb = cols / QBLOCK;
        for c in 0..rows {
            let col = Column { kind: QKind::Q4_1, d: &w.d[c * nb..], mins: &w.m[c * nb..], qs: &w.qs[c * nb * 16..] };
            let (mut plain, mut vnni) = ([0f32; 4], [0f32; 4]);
            // SAFETY: both feature sets were detected above; `col` and `a` hold the blocks.
            unsafe {
                x86::q4_1_tile::<4>(&col, &a, 0, &mut plain);
                x86::q4_1_tile_vnni::<4>(&col, &a, 0, &mut vnni);
            }
            assert_eq!(plain, vnni, "column {c}");
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let h = Heads { heads: 4, kv_heads: 4, head_dim: 64 };
        let slots: Vec<u32> = (0..30).collect();
        let k = fill(30 * 4 * 64, 5);
        let v = fill(30 * 4 * 64, 6);
        let q = fill(3 * 4 * 64, 7);
        let rows = [Row { pos: 29, slots: &slots }, Row { pos: 3, slots: &slots }, Row { pos: 12, slots: &slots }];
        let mut together = vec![0f32; q.len()];
        attention(h, &rows, &q, &k, &v, &mut together);
        let mut alone = vec![0f32; 4 * 64];
        attention(h, &rows[2..], &q[2 * 4 * 64..], &k, &v, &mut alone);
        assert_eq!(&together[2 * 4 * 64..], &alone[..], "bit-identical");
    }
}
