//! CPU kernels of our own: attention over the paged KV cache, read in place.
//!
//! Why: candle's ops would gather every sequence's keys and values into new tensors each
//! layer and step, and pick different matmul kernels for different query counts, so one
//! sequence's numbers would depend on what else is in the batch (and a quantized model
//! amplifies such last-bit differences into different tokens). Here every output row is
//! computed by one task in one fixed order from that row's inputs only: a sequence gets
//! bit-identical attention whether it runs alone or in a batch, prefilled in one chunk or
//! many. No `unsafe`: plain slices, and 8 independent accumulators so the compiler
//! vectorizes the dot products.
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
