//! The paged KV cache: one budget of fixed-size blocks, set at load time, shared by every
//! sequence through per-sequence block tables, with reuse of blocks that hold the same
//! prompt prefix (the same system prompt) across requests.
//!
//! Why blocks: memory is bounded and known before the first request, a sequence holds only
//! the blocks it has filled, and a finished or cancelled one returns them at once.
//! Why exact-token keys for the prefix cache: a block is reused only when its parent block
//! (by id and allocation generation) and its own tokens are equal, compared in full, so no
//! hash collision, crafted or not, can hand one user another prompt's keys and values.
//! Trusts: callers pass block ids this pool handed out.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

/// Identifies a full block's content: parent block id and generation (`u32::MAX`, 0 for the
/// first block) and the block's tokens.
type PrefixKey = (u32, u64, Box<[u32]>);

/// Block accounting: reference counts, free lists and the prefix index. Holds no tensors,
/// so it is tested on its own.
#[derive(Debug)]
pub struct BlockPool {
    refs: Vec<u32>,
    /// Bumped each time a block is handed out: keys naming an older generation are stale.
    generation: Vec<u64>,
    /// Free blocks that hold nothing worth keeping.
    empty: Vec<u32>,
    /// Free blocks that still hold a cached prefix, oldest release first (evicted first).
    cached_free: BTreeMap<u64, u32>,
    /// When each block entered `cached_free`.
    released_at: Vec<u64>,
    clock: u64,
    key_of: Vec<Option<PrefixKey>>,
    index: HashMap<PrefixKey, u32>,
}

impl BlockPool {
    /// A pool of `blocks` blocks, all free.
    pub fn new(blocks: usize) -> Self {
        let n = blocks.min(u32::MAX as usize - 1);
        Self {
            refs: vec![0; n],
            generation: vec![0; n],
            empty: (0..n as u32).rev().collect(),
            cached_free: BTreeMap::new(),
            released_at: vec![0; n],
            clock: 0,
            key_of: vec![None; n],
            index: HashMap::new(),
        }
    }

    /// Blocks that can be handed out now (empty ones and evictable cached ones).
    pub fn free(&self) -> usize {
        self.empty.len() + self.cached_free.len()
    }

    /// Hands out a block (reference count 1), evicting the least recently released cached
    /// prefix when no empty block is left.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.cached_free.pop_first()?;
                if let Some(key) = self.key_of[b as usize].take() {
                    self.index.remove(&key);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        self.generation[b as usize] += 1;
        Some(b)
    }

    /// Drops one reference; the block becomes free when none is left.
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        let Some(r) = self.refs.get_mut(i) else { return };
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if self.key_of[i].is_some() {
            self.clock += 1;
            self.released_at[i] = self.clock;
            self.cached_free.insert(self.clock, b);
        } else {
            self.empty.push(b);
        }
    }

    fn key(&self, parent: Option<u32>, tokens: &[u32]) -> PrefixKey {
        match parent {
            Some(p) => (p, self.generation[p as usize], tokens.into()),
            None => (u32::MAX, 0, tokens.into()),
        }
    }

    /// The cached block holding `tokens` after `parent` (`None`: at the start of a
    /// sequence), with one more reference taken.
    pub fn lookup(&mut self, parent: Option<u32>, tokens: &[u32]) -> Option<u32> {
        let b = *self.index.get(&self.key(parent, tokens))?;
        let i = b as usize;
        if self.refs[i] == 0 {
            self.cached_free.remove(&self.released_at[i]);
        }
        self.refs[i] += 1;
        Some(b)
    }

    /// Records that block `b` (full, in use) holds `tokens` after `parent`, so later
    /// prompts with the same prefix can reuse it. A no-op when another block already
    /// holds that prefix.
    pub fn register(&mut self, b: u32, parent: Option<u32>, tokens: &[u32]) {
        let key = self.key(parent, tokens);
        if self.index.contains_key(&key) || self.key_of[b as usize].is_some() {
            return;
        }
        self.index.insert(key.clone(), b);
        self.key_of[b as usize] = Some(key);
    }
}

/// Shape of one layer's cache.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one block takes over all layers (keys and values).
    pub fn block_bytes(&self, dtype: DType) -> usize {
        2 * self.layers * BLOCK_SIZE * self.kv_heads * self.head_dim * dtype.size_in_bytes()
    }
}

/// The cache's memory, per layer.
#[derive(Debug)]
pub enum KvStore {
    /// On the CPU: plain memory, `[slots, kv_heads, head_dim]` f32, read in place by
    /// [`super::kernels::attention`]. Slot `block * BLOCK_SIZE + i` holds position `i` of
    /// that block.
    Host {
        /// Keys per layer.
        k: Vec<Vec<f32>>,
        /// Values per layer.
        v: Vec<Vec<f32>>,
    },
    /// On a GPU: tensors `[kv_heads, slots, head_dim]`, written with `scatter_set` and read
    /// with `index_select` by candle's ops.
    Device {
        /// Keys per layer.
        k: Vec<Tensor>,
        /// Values per layer.
        v: Vec<Tensor>,
    },
}

impl KvStore {
    /// Zeroed storage for `blocks` blocks. On the CPU the pages are committed only when
    /// written, so the unused part of the budget costs address space, not memory.
    pub fn new(shape: KvShape, blocks: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let slots = blocks * BLOCK_SIZE;
        if device.is_cpu() && dtype == DType::F32 {
            let n = slots * shape.kv_heads * shape.head_dim;
            let layer = || (0..shape.layers).map(|_| vec![0f32; n]).collect();
            return Ok(Self::Host { k: layer(), v: layer() });
        }
        let dims = (shape.kv_heads, slots, shape.head_dim);
        let mut k = Vec::with_capacity(shape.layers);
        let mut v = Vec::with_capacity(shape.layers);
        for _ in 0..shape.layers {
            k.push(Tensor::zeros(dims, dtype, device)?);
            v.push(Tensor::zeros(dims, dtype, device)?);
        }
        Ok(Self::Device { k, v })
    }
}

/// The cache slot of every position `0..len` of a sequence with block table `blocks`.
pub fn slots(blocks: &[u32], len: usize) -> Vec<u32> {
    (0..len).map(|p| blocks[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_exhaustion() {
        let mut p = BlockPool::new(3);
        let a: Vec<u32> = (0..3).filter_map(|_| p.allocate()).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(p.free(), 0);
        assert_eq!(p.allocate(), None, "an exhausted pool hands out nothing");
        p.release(a[1]);
        assert_eq!(p.free(), 1);
        assert_eq!(p.allocate(), Some(a[1]));
    }

    #[test]
    fn prefix_blocks_are_shared_and_evicted_last_used_last() {
        let mut p = BlockPool::new(4);
        let t1 = [1u32; BLOCK_SIZE];
        let t2 = [2u32; BLOCK_SIZE];
        let b1 = p.allocate().unwrap_or_default();
        let b2 = p.allocate().unwrap_or_default();
        p.register(b1, None, &t1);
        p.register(b2, Some(b1), &t2);
        // A second sequence with the same prefix shares both blocks.
        assert_eq!(p.lookup(None, &t1), Some(b1));
        assert_eq!(p.lookup(Some(b1), &t2), Some(b2));
        assert_eq!(p.lookup(Some(b1), &t1), None, "other tokens after the same parent");
        assert_eq!(p.lookup(None, &t2), None, "same tokens at another position");
        for b in [b1, b2, b1, b2] {
            p.release(b);
        }
        assert_eq!(p.free(), 4, "cached blocks count as free");
        // Empty blocks go first; then the oldest cached block (b1) is evicted.
        let _ = (p.allocate(), p.allocate());
        assert_eq!(p.allocate(), Some(b1));
        assert_eq!(p.lookup(None, &t1), None, "an evicted block is no longer found");
        // b2's key named b1's old generation: stale even though b1 is in use again.
        p.register(b1, None, &t1);
        assert_eq!(p.lookup(Some(b1), &t2), None, "a child of an evicted parent is stale");
    }

    #[test]
    fn slots_follow_the_block_table() {
        let s = slots(&[5, 2], BLOCK_SIZE + 2);
        assert_eq!(s[0], 5 * BLOCK_SIZE as u32);
        assert_eq!(s[BLOCK_SIZE - 1], 6 * BLOCK_SIZE as u32 - 1);
        assert_eq!(s[BLOCK_SIZE], 2 * BLOCK_SIZE as u32);
        assert_eq!(s.len(), BLOCK_SIZE + 2);
    }
}
