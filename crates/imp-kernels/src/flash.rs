//! Fused ("flash") attention on the CPU: `softmax(q·kᵀ·scale)·v` per head without the
//! `[heads, queries, keys]` score tensor. Keys and values stream through in blocks of
//! `KEY_BLOCK`; each query row keeps a running maximum and sum (the online softmax), so that
//! only a small tile of scores exists at a time. All arithmetic is f32.
//!
//! Two schedules, both parallel over heads × query rows on rayon's pool (candle's thread count):
//! - tiled (prefill, the vision tower): each head's keys are repacked once, transposed, and
//!   blocks of query rows go through register-tiled score and `P·V` micro-kernels;
//! - per row (decode): each query row reads the key and value rows where they lie (the KV
//!   cache, strided), with dot products and axpys along the head dimension.
//!
//! Query heads share key/value heads in groups (grouped-query attention) when there are fewer
//! of the latter. The output is `[queries, heads, head_dim]`, the heads merged per token as the
//! output projection reads them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::Isa;
use crate::host::Element;
use crate::kv::CacheRow;
use crate::simd::{self, Kernel, Simd, MAX_LANES};
use crate::{Error, Result};

/// Keys per block.
const KEY_BLOCK: usize = 64;
/// Most query rows per tiled task.
const ROW_BLOCK: usize = 32;
/// Query rows of the score micro-kernel.
const SCORE_ROWS: usize = 4;
/// Query rows of the `P·V` micro-kernel; row blocks are padded to a multiple of it.
const PV_ROWS: usize = 8;
/// Fewer queries than this take the per-row schedule: repacking the keys would cost as much as
/// attending.
const TILED_MIN_QUERIES: usize = 8;

/// A `[heads, tokens, head_dim]` operand in storage: each row contiguous, heads and rows at any
/// stride (a narrowed KV cache, or q/k/v sliced out of one projection). A row is
/// `T::row_len(head_dim)` elements ([`CacheRow`]): `head_dim` floats, or a q8 row.
#[derive(Debug, Clone, Copy)]
pub struct Heads<'a, T> {
    data: &'a [T],
    offset: usize,
    heads: usize,
    tokens: usize,
    head_dim: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a, T: CacheRow> Heads<'a, T> {
    /// `[heads, tokens, head_dim]` starting at `offset`; `None` if it does not fit in `data`.
    pub fn new(
        data: &'a [T],
        offset: usize,
        (heads, tokens, head_dim): (usize, usize, usize),
        (head_stride, row_stride): (usize, usize),
    ) -> Option<Self> {
        let last = if heads == 0 || tokens == 0 || head_dim == 0 {
            offset
        } else {
            offset + (heads - 1) * head_stride + (tokens - 1) * row_stride + T::row_len(head_dim)
        };
        (last <= data.len()).then_some(Self {
            data,
            offset,
            heads,
            tokens,
            head_dim,
            head_stride,
            row_stride,
        })
    }

    /// A contiguous `[heads, tokens, head_dim]` slice.
    pub fn contiguous(data: &'a [T], heads: usize, tokens: usize, head_dim: usize) -> Option<Self> {
        let row_len = T::row_len(head_dim);
        Self::new(
            data,
            0,
            (heads, tokens, head_dim),
            (tokens * row_len, row_len),
        )
    }

    /// A candle layout `[heads, tokens, row_len]` or `[1, heads, tokens, row_len]` whose last
    /// dimension is contiguous.
    pub fn from_layout(data: &'a [T], layout: &Layout) -> Option<Self> {
        let (dims, strides) = match (layout.dims(), layout.stride()) {
            ([h, t, r], [hs, rs, 1]) => ((*h, *t, *r), (*hs, *rs)),
            ([1, h, t, r], [_, hs, rs, 1]) => ((*h, *t, *r), (*hs, *rs)),
            _ => return None,
        };
        let (heads, tokens, row_len) = dims;
        let head_dim = T::head_dim(row_len)?;
        Self::new(
            data,
            layout.start_offset(),
            (heads, tokens, head_dim),
            strides,
        )
    }

    /// Where row `token` of `head` starts, for a prefetch: any token, even past the end.
    fn row_address(&self, head: usize, token: usize) -> *const T {
        let start = self.offset + head * self.head_stride + token * self.row_stride;
        self.data.as_ptr().wrapping_add(start)
    }

    fn row(&self, head: usize, token: usize) -> &'a [T] {
        let start = self.offset + head * self.head_stride + token * self.row_stride;
        &self.data[start..start + T::row_len(self.head_dim)]
    }
}

/// Which keys each query row sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Every key (the vision tower).
    All,
    /// Query `i` sits at position `past + i` and sees keys `0..=past + i` (the decoder).
    Causal { past: usize },
}

/// The shape both schedules share.
#[derive(Debug, Clone, Copy)]
struct Problem {
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
    scale: f32,
    visibility: Visibility,
}

impl Problem {
    /// Keys query `i` sees: `0..visible(i)`.
    fn visible(&self, i: usize) -> usize {
        match self.visibility {
            Visibility::All => self.keys,
            Visibility::Causal { past } => past + i + 1,
        }
    }
}

/// `out[i, h, :] = softmax(q[h, i, :]·k[h', :, :]ᵀ·scale)·v[h', :, :]` where `h' = h / group`,
/// over the keys `visibility` allows; `out` is `[queries, heads, head_dim]`. Keys and values
/// may be stored in another format than the queries (a narrower cache, [`crate::kv`]).
pub fn attention<T: Element + CacheRow, C: CacheRow>(
    isa: Isa,
    q: Heads<'_, T>,
    k: Heads<'_, C>,
    v: Heads<'_, C>,
    scale: f32,
    visibility: Visibility,
    out: &mut [T],
) -> Result<()> {
    let shapes_agree = q.head_dim == k.head_dim
        && k.head_dim == v.head_dim
        && k.heads == v.heads
        && k.tokens == v.tokens
        && k.heads > 0
        && q.heads.is_multiple_of(k.heads);
    if !shapes_agree {
        return Err(Error::operands(
            "attention",
            format!(
                "q {:?}, k {:?} and v {:?} ([heads, tokens, head_dim]) do not fit together",
                (q.heads, q.tokens, q.head_dim),
                (k.heads, k.tokens, k.head_dim),
                (v.heads, v.tokens, v.head_dim),
            ),
        ));
    }
    let problem = Problem {
        heads: q.heads,
        group: q.heads / k.heads,
        queries: q.tokens,
        keys: k.tokens,
        head_dim: q.head_dim,
        scale,
        visibility,
    };
    if let Visibility::Causal { past } = visibility {
        if past + q.tokens > k.tokens {
            return Err(Error::operands(
                "attention",
                format!(
                    "{past} cached and {} new queries need that many keys, got {}",
                    q.tokens, k.tokens
                ),
            ));
        }
    }
    if out.len() != q.tokens * q.heads * q.head_dim {
        return Err(Error::operands(
            "attention",
            format!(
                "output of {} values for [{}, {}, {}]",
                out.len(),
                q.tokens,
                q.heads,
                q.head_dim
            ),
        ));
    }
    if q.tokens == 0 || q.head_dim == 0 {
        return Ok(());
    }
    if k.tokens == 0 {
        return Err(Error::operands("attention", "no keys"));
    }
    if q.tokens < TILED_MIN_QUERIES {
        per_row(isa, &problem, q, k, v, out);
    } else {
        tiled(isa, &problem, q, k, v, out);
    }
    Ok(())
}

/// Online-softmax state of one query row.
#[derive(Debug, Clone, Copy)]
struct Running {
    max: f32,
    sum: f32,
}

impl Running {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// Turns a block's scores into unnormalised probabilities `e^(score - max)` in place and
    /// returns the factor the row's accumulated output must be scaled by (`None` for 1).
    #[inline(always)]
    fn absorb<S: Simd>(&mut self, s: S, scores: &mut [f32]) -> Option<f32> {
        let max = self.max.max(simd::max(s, scores));
        if max == f32::NEG_INFINITY {
            // Nothing visible yet: every probability is 0 and the output stays 0.
            scores.fill(0.0);
            return None;
        }
        let rescale = (self.max - max).exp();
        let sum = simd::exp_sum(s, scores, max);
        self.sum = self.sum * rescale + sum;
        self.max = max;
        (rescale != 1.0).then_some(rescale)
    }
}

// ---- per-row schedule -------------------------------------------------------------------------

fn per_row<T: Element + CacheRow, C: CacheRow>(
    isa: Isa,
    p: &Problem,
    q: Heads<'_, T>,
    k: Heads<'_, C>,
    v: Heads<'_, C>,
    out: &mut [T],
) {
    out.par_chunks_mut(p.head_dim)
        .enumerate()
        .for_each(|(index, out)| {
            let (i, head) = (index / p.heads, index % p.heads);
            simd::run(
                isa,
                RowTask {
                    q: q.row(head, i),
                    k,
                    v,
                    kv_head: head / p.group,
                    keys: p.visible(i),
                    scale: p.scale,
                    out,
                },
            )
        });
}

/// One query row of one head against its visible keys, read in place.
struct RowTask<'a, 'b, T, C> {
    q: &'a [T],
    k: Heads<'a, C>,
    v: Heads<'a, C>,
    kv_head: usize,
    keys: usize,
    scale: f32,
    out: &'b mut [T],
}

impl<T: Element, C: CacheRow> Kernel for RowTask<'_, '_, T, C> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let hd = self.q.len();
        let mut q = vec![0f32; hd];
        T::to_f32(self.q, &mut q);
        simd::scale(s, self.scale, &mut q);
        let mut acc = vec![0f32; hd];
        let mut scores = [0f32; KEY_BLOCK];
        let mut running = Running::EMPTY;
        let in_registers = hd.is_multiple_of(S::LANES) && hd / S::LANES <= ROW_VECTORS;
        for start in (0..self.keys).step_by(KEY_BLOCK) {
            let n = (self.keys - start).min(KEY_BLOCK);
            let scores = &mut scores[..n];
            // The hardware prefetchers of some cores (Intel's) keep too few lines in flight for
            // one row after another: ask for the rows PREFETCH_ROWS ahead.
            for (j, score) in scores.iter_mut().enumerate() {
                prefetch_row(s, &self.k, self.kv_head, start + j + PREFETCH_ROWS);
                let (key, factor) = C::values(self.k.row(self.kv_head, start + j));
                *score = simd::dot_widening(s, &q, key) * factor;
            }
            if let Some(factor) = running.absorb(s, scores) {
                simd::scale(s, factor, &mut acc);
            }
            if in_registers {
                values_in_registers::<S, C>(s, &self.v, self.kv_head, start, scores, &mut acc);
            } else {
                for (j, &weight) in scores.iter().enumerate() {
                    prefetch_row(s, &self.v, self.kv_head, start + j + PREFETCH_ROWS);
                    let (value, factor) = C::values(self.v.row(self.kv_head, start + j));
                    simd::axpy_widening(s, weight * factor, value, &mut acc);
                }
            }
        }
        simd::scale(s, 1.0 / running.sum, &mut acc);
        T::from_f32(&acc, self.out);
    }
}

/// Most vectors of a row that decode attention keeps its output in, in registers (128 values
/// with AVX-512).
const ROW_VECTORS: usize = 8;

/// `acc += Σ_j weights[j] · v[first + j]` with `acc` (`head_dim / LANES <= ROW_VECTORS`
/// vectors) held in registers across the rows, instead of loaded and stored for each.
#[inline(always)]
fn values_in_registers<S: Simd, C: CacheRow>(
    s: S,
    v: &Heads<'_, C>,
    head: usize,
    first: usize,
    weights: &[f32],
    acc: &mut [f32],
) {
    let vectors = acc.len() / S::LANES;
    let mut sums = [s.splat(0.0); ROW_VECTORS];
    // Constant bounds, so that the loops unroll and `sums` lives in registers.
    for (c, sum) in sums.iter_mut().enumerate() {
        if c < vectors {
            *sum = s.load(&acc[c * S::LANES..]);
        }
    }
    for (j, &weight) in weights.iter().enumerate() {
        prefetch_row(s, v, head, first + j + PREFETCH_ROWS);
        let (value, factor) = C::values(v.row(head, first + j));
        let weight = s.splat(weight * factor);
        for (c, sum) in sums.iter_mut().enumerate() {
            if c < vectors {
                let x = <C::Value as simd::Widen>::load(s, &value[c * S::LANES..]);
                *sum = s.mul_add(weight, x, *sum);
            }
        }
    }
    for (c, sum) in sums.iter().enumerate() {
        if c < vectors {
            s.store(&mut acc[c * S::LANES..], *sum);
        }
    }
}

/// Rows ahead of the one being read that decode attention prefetches.
const PREFETCH_ROWS: usize = 8;

/// Prefetches the cache lines of one row (a row may straddle lines).
#[inline(always)]
fn prefetch_row<S: Simd, C: CacheRow>(s: S, heads: &Heads<'_, C>, head: usize, token: usize) {
    let start = heads.row_address(head, token);
    let bytes = C::row_len(heads.head_dim) * std::mem::size_of::<C>();
    for offset in (0..bytes).step_by(64) {
        s.prefetch(start.cast::<u8>().wrapping_add(offset));
    }
}

// ---- tiled schedule ---------------------------------------------------------------------------

/// Head dimension padded for the widest vector, the row length of packed values and outputs.
fn padded(head_dim: usize) -> usize {
    head_dim.next_multiple_of(MAX_LANES)
}

fn tiled<T: Element + CacheRow, C: CacheRow>(
    isa: Isa,
    p: &Problem,
    q: Heads<'_, T>,
    k: Heads<'_, C>,
    v: Heads<'_, C>,
    out: &mut [T],
) {
    let (hd, hdp) = (p.head_dim, padded(p.head_dim));
    let blocks = p.keys.div_ceil(KEY_BLOCK);
    // Per key/value head: keys as `[block][head_dim][KEY_BLOCK]` (transposed, so that a score
    // micro-kernel vectorises over keys) and values as `[key][hdp]`, zero-padded.
    let (kt_len, v_len) = (blocks * hd * KEY_BLOCK, blocks * KEY_BLOCK * hdp);
    let mut keys_t = vec![0f32; k.heads * kt_len];
    let mut values = vec![0f32; k.heads * v_len];
    keys_t
        .par_chunks_mut(kt_len)
        .zip(values.par_chunks_mut(v_len))
        .enumerate()
        .for_each(|(head, (kt, vp))| {
            let mut row_buf = Vec::new();
            for j in 0..p.keys {
                let key = C::decode(k.row(head, j), &mut row_buf);
                let block = &mut kt[j / KEY_BLOCK * hd * KEY_BLOCK..];
                for (d, &x) in key.iter().enumerate() {
                    block[d * KEY_BLOCK + j % KEY_BLOCK] = x;
                }
                let value = C::decode(v.row(head, j), &mut row_buf);
                vp[j * hdp..j * hdp + hd].copy_from_slice(value);
            }
        });

    let rows = ROW_BLOCK.min(p.queries.next_multiple_of(PV_ROWS));
    let row_blocks = p.queries.div_ceil(rows);
    let tiles: Vec<Vec<f32>> = (0..p.heads * row_blocks)
        .into_par_iter()
        .map(|task| {
            let (head, block) = (task / row_blocks, task % row_blocks);
            let first = block * rows;
            let kv = head / p.group;
            simd::run(
                isa,
                TileTask {
                    p,
                    q,
                    head,
                    first,
                    count: rows.min(p.queries - first),
                    keys_t: &keys_t[kv * kt_len..(kv + 1) * kt_len],
                    values: &values[kv * v_len..(kv + 1) * v_len],
                },
            )
        })
        .collect();

    out.par_chunks_mut(p.heads * hd)
        .enumerate()
        .for_each(|(i, out)| {
            for (head, out) in out.chunks_exact_mut(hd).enumerate() {
                let tile = &tiles[head * row_blocks + i / rows];
                let r = i % rows;
                T::from_f32(&tile[r * hdp..r * hdp + hd], out);
            }
        });
}

/// Query rows `first..first + count` of one head against their visible keys; returns their
/// outputs `[rows, hdp]` (rows padded to [`PV_ROWS`]).
struct TileTask<'a, T> {
    p: &'a Problem,
    q: Heads<'a, T>,
    head: usize,
    first: usize,
    count: usize,
    keys_t: &'a [f32],
    values: &'a [f32],
}

impl<T: Element + CacheRow> Kernel for TileTask<'_, T> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> Vec<f32> {
        let p = self.p;
        let (hd, hdp) = (p.head_dim, padded(p.head_dim));
        let rows = self.count.next_multiple_of(PV_ROWS);
        // Query rows in groups of SCORE_ROWS, each group `[head_dim][SCORE_ROWS]`, pre-scaled.
        let mut q = vec![0f32; rows * hd];
        let mut row = vec![0f32; hd];
        for r in 0..self.count {
            T::to_f32(self.q.row(self.head, self.first + r), &mut row);
            let group = &mut q[r / SCORE_ROWS * SCORE_ROWS * hd..];
            for (d, &x) in row.iter().enumerate() {
                group[d * SCORE_ROWS + r % SCORE_ROWS] = x * p.scale;
            }
        }
        // Padding rows see what the last real row sees; their results are dropped.
        let visible = |r: usize| p.visible(self.first + r.min(self.count - 1));
        let mut out = vec![0f32; rows * hdp];
        let mut scores = vec![0f32; rows * KEY_BLOCK];
        let mut running = vec![Running::EMPTY; rows];
        let seen = visible(rows - 1);
        for block in 0..seen.div_ceil(KEY_BLOCK) {
            let base = block * KEY_BLOCK;
            let keys = (seen - base).min(KEY_BLOCK);
            let cols = keys.next_multiple_of(2 * S::LANES);
            let keys_t = &self.keys_t[block * hd * KEY_BLOCK..(block + 1) * hd * KEY_BLOCK];
            let values = &self.values[base * hdp..(base + KEY_BLOCK) * hdp];
            for (q, scores) in q
                .chunks_exact(SCORE_ROWS * hd)
                .zip(scores.chunks_exact_mut(SCORE_ROWS * KEY_BLOCK))
            {
                score_tile(s, q, keys_t, cols, scores);
            }
            for (r, (scores, running)) in scores
                .chunks_exact_mut(KEY_BLOCK)
                .zip(&mut running)
                .enumerate()
            {
                let row = &mut scores[..cols];
                let shown = visible(r).saturating_sub(base).min(cols);
                row[shown..].fill(f32::NEG_INFINITY);
                if let Some(factor) = running.absorb(s, row) {
                    simd::scale(s, factor, &mut out[r * hdp..(r + 1) * hdp]);
                }
            }
            for (probs, out) in scores
                .chunks_exact(PV_ROWS * KEY_BLOCK)
                .zip(out.chunks_exact_mut(PV_ROWS * hdp))
            {
                pv_tile(s, probs, values, keys, out);
            }
        }
        for (out, running) in out.chunks_exact_mut(hdp).zip(&running) {
            simd::scale(s, 1.0 / running.sum, out);
        }
        out
    }
}

/// `scores[r][c] = Σ_d q[d][r] · keys_t[d][c]` for [`SCORE_ROWS`] query rows and the first
/// `cols` (a multiple of two vectors) keys of a block: each step loads two vectors of keys and
/// updates eight accumulators.
#[inline(always)]
fn score_tile<S: Simd>(s: S, q: &[f32], keys_t: &[f32], cols: usize, scores: &mut [f32]) {
    let w = S::LANES;
    let (q, _) = q.as_chunks::<SCORE_ROWS>();
    let (keys_t, _) = keys_t.as_chunks::<KEY_BLOCK>();
    for c in (0..cols).step_by(2 * w) {
        let mut acc = [[s.splat(0.0); 2]; SCORE_ROWS];
        for (keys, q) in keys_t.iter().zip(q) {
            let k0 = s.load(&keys[c..]);
            let k1 = s.load(&keys[c + w..]);
            for (acc, &x) in acc.iter_mut().zip(q) {
                let x = s.splat(x);
                acc[0] = s.mul_add(x, k0, acc[0]);
                acc[1] = s.mul_add(x, k1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            s.store(&mut scores[r * KEY_BLOCK + c..], acc[0]);
            s.store(&mut scores[r * KEY_BLOCK + c + w..], acc[1]);
        }
    }
}

/// `out[r][..] += Σ_j probs[r][j] · values[j][..]` for [`PV_ROWS`] rows and keys `0..keys`,
/// one vector of the head dimension at a time with eight accumulators.
#[inline(always)]
fn pv_tile<S: Simd>(s: S, probs: &[f32], values: &[f32], keys: usize, out: &mut [f32]) {
    let hdp = out.len() / PV_ROWS;
    let (probs, _) = probs.as_chunks::<KEY_BLOCK>();
    let keys = keys.min(KEY_BLOCK);
    for c in (0..hdp).step_by(S::LANES) {
        let mut acc = [s.splat(0.0); PV_ROWS];
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = s.load(&out[r * hdp + c..]);
        }
        for (j, value) in values.chunks_exact(hdp).take(keys).enumerate() {
            let x = s.load(&value[c..]);
            for (acc, probs) in acc.iter_mut().zip(probs) {
                *acc = s.mul_add(s.splat(probs[j]), x, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            s.store(&mut out[r * hdp + c..], *acc);
        }
    }
}

// ---- candle op --------------------------------------------------------------------------------

/// [`attention`] as a candle op on `q`, `k`, `v` (`[heads, tokens, head_dim]`, optionally with a
/// leading batch of 1); the result is `[tokens, heads, head_dim]` (with the same leading 1).
/// `q` is f32, f16 or bf16; `k` and `v` share one cache format ([`CacheRow`]).
struct FlashAttention {
    scale: f32,
    visibility: Visibility,
}

const NAME: &str = "imp-flash-attention";

impl FlashAttention {
    /// Picks the cache format of `k` and `v` for queries of type `T`.
    fn with_queries<T: Element + CacheRow>(
        &self,
        q: (&[T], &Layout),
        k: (&CpuStorage, &Layout),
        v: (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        macro_rules! try_format {
            ($($ty:ty),*) => {$(
                if let (Some(kd), Some(vd)) =
                    (<$ty as CacheRow>::from_storage(k.0), <$ty as CacheRow>::from_storage(v.0))
                {
                    return self.typed(q, (kd, k.1), (vd, v.1));
                }
            )*};
        }
        try_format!(f32, half::f16, half::bf16, u8);
        candle_core::bail!(
            "{NAME}: keys and values must share one cache format, not {:?} and {:?}",
            k.0.dtype(),
            v.0.dtype()
        )
    }

    fn typed<T: Element + CacheRow, C: CacheRow>(
        &self,
        q: (&[T], &Layout),
        k: (&[C], &Layout),
        v: (&[C], &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn heads<'a, T: CacheRow>(
            (data, layout): (&'a [T], &Layout),
        ) -> candle_core::Result<Heads<'a, T>> {
            Heads::from_layout(data, layout).ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: unsupported layout {layout:?}"))
            })
        }
        let (qh, kh, vh) = (heads(q)?, heads(k)?, heads(v)?);
        let mut out = vec![T::default(); qh.tokens * qh.heads * qh.head_dim];
        attention(
            simd::best(),
            qh,
            kh,
            vh,
            self.scale,
            self.visibility,
            &mut out,
        )
        .map_err(candle_core::Error::wrap)?;
        let merged = (qh.tokens, qh.heads, qh.head_dim);
        let shape = if q.1.dims().len() == 4 {
            Shape::from((1, merged.0, merged.1, merged.2))
        } else {
            Shape::from(merged)
        };
        Ok((T::into_storage(out), shape))
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (k, v) = ((k, lk), (v, lv));
        if let Some(q) = <f32 as Element>::from_storage(q) {
            self.with_queries((q, lq), k, v)
        } else if let Some(q) = <half::f16 as Element>::from_storage(q) {
            self.with_queries((q, lq), k, v)
        } else if let Some(q) = <half::bf16 as Element>::from_storage(q) {
            self.with_queries((q, lq), k, v)
        } else {
            candle_core::bail!("{NAME}: queries in {:?}", q.dtype())
        }
    }
}

/// Whether [`flash_attention`] takes this operand: `[heads, tokens, head_dim]`, or with a
/// leading batch of 1, its last dimension contiguous.
pub fn supports(x: &Tensor) -> bool {
    let dims = x.dims();
    let rank_ok = dims.len() == 3 || (dims.len() == 4 && dims[0] == 1);
    rank_ok && x.stride().last() == Some(&1)
}

/// Whether [`flash_attention`] may stand in for candle's ops on these operands: all of them
/// [`supports`]ed, on the CPU and tracking no gradients, the queries in a float dtype, the keys
/// and values in one cache format (a float dtype, or `u8` for q8 rows).
pub fn takes(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    use candle_core::DType;
    crate::host::fast_path(&[q])
        && [k, v]
            .iter()
            .all(|t| t.device().is_cpu() && !t.track_op() && t.dtype() == k.dtype())
        && matches!(k.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::U8)
        && [q, k, v].iter().all(|t| supports(t))
}

/// [`attention`] on CPU tensors `[.., heads, tokens, head_dim]` (see [`supports`]); returns the
/// same shape as `q`, as a transposed view of `[.., tokens, heads, head_dim]` storage so that
/// merging the heads afterwards copies nothing.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    visibility: Visibility,
) -> Result<Tensor> {
    let out = q.apply_op3_no_bwd(k, v, &FlashAttention { scale, visibility })?;
    let rank = out.rank();
    Ok(out.transpose(rank - 3, rank - 2)?)
}
