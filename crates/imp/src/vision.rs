//! SigLIP vision trunk as Imp uses it: patch embedding, learned positions, the stored encoder
//! layers (26 of so400m's 27) and no post-norm or pooling head. The output is the patch features
//! of the last stored layer, one row per patch in row-major order.

use candle_core::Tensor;
use imp_kernels::gelu::gelu;

use crate::attention::attend;

use crate::checkpoint::{NamingStyle, Weights};
use crate::linear::Linear;
use crate::norm::Norm;
use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// Layers stored in the checkpoint, all of which run.
    pub num_layers: usize,
    pub patch_size: usize,
    /// Pixels a side the image is resized to; may differ from the trained size.
    pub image_size: usize,
    /// Patches a side of the stored position table (the trained grid).
    pub position_grid: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// google/siglip-so400m-patch14-384 with Imp's last layer removed.
    pub fn so400m() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_heads: 16,
            num_layers: 26,
            patch_size: 14,
            image_size: 384,
            position_grid: 27,
            layer_norm_eps: 1e-6,
        }
    }

    /// Patches per side; pixels beyond `grid * patch` (6 of so400m's 384) are never seen.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Visual tokens per image: one per patch.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

struct EncoderLayer {
    norm1: Norm,
    qkv: Linear,
    attn_out: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

pub struct VisionTower {
    config: VisionConfig,
    /// The stride-`patch` convolution as a matmul over flattened `[3, p, p]` patches.
    patch_embedding: Linear,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
}

impl VisionTower {
    pub fn load(weights: &Weights, style: NamingStyle, config: &VisionConfig) -> Result<Self> {
        let c = config.hidden_size;
        let p = config.patch_size;
        let names = style.vision_embeddings();
        let patch_weight = weights
            .tensor(&names.patch_weight, &[c, 3, p, p])?
            .reshape((c, 3 * p * p))?;
        let patch_bias = weights.tensor(&names.patch_bias, &[c])?;
        let trained = config.position_grid;
        let mut position_embedding = weights.tensor(&names.position, &[trained * trained, c])?;
        if config.grid_size() != trained {
            position_embedding =
                interpolate_positions(&position_embedding, trained, config.grid_size())?;
        }
        let layers = (0..config.num_layers)
            .map(|i| {
                let n = style.vision_layer(i);
                let eps = config.layer_norm_eps;
                Ok(EncoderLayer {
                    norm1: weights.norm(&n.norm1, c, eps)?,
                    qkv: weights.linear(&n.qkv, 3 * c, c)?,
                    attn_out: weights.linear(&n.attn_out, c, c)?,
                    norm2: weights.norm(&n.norm2, c, eps)?,
                    fc1: weights.linear(&n.fc1, config.intermediate_size, c)?,
                    fc2: weights.linear(&n.fc2, c, config.intermediate_size)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            patch_embedding: Linear::new(patch_weight, Some(patch_bias))?,
            position_embedding,
            layers,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// `pixels[1, 3, S, S]` (normalised) -> patch features `[num_patches, hidden]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (g, p) = (cfg.grid_size(), cfg.patch_size);
        let dtype = self.position_embedding.dtype();
        // [1,3,g*p,g*p] -> [g, g, 3, p, p]: row-major patches, each flattened like the conv kernel.
        let covered = g * p;
        let patches = pixels
            .to_dtype(dtype)?
            .narrow(2, 0, covered)?
            .narrow(3, 0, covered)?
            .reshape((3, g, p, g, p))?
            .permute((1, 3, 0, 2, 4))?
            .reshape((g * g, 3 * p * p))?;
        let mut x = self
            .patch_embedding
            .forward(&patches)?
            .add(&self.position_embedding)?;
        for layer in &self.layers {
            x = layer.forward(&x, cfg)?;
        }
        Ok(x)
    }
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, cfg: &VisionConfig) -> Result<Tensor> {
        let attn = self.attention(&self.norm1.forward(x)?, cfg)?;
        let x = (x + attn)?;
        let h = gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        Ok((x + self.fc2.forward(&h)?)?)
    }

    fn attention(&self, x: &Tensor, cfg: &VisionConfig) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        let (heads, hd) = (cfg.num_heads, cfg.head_dim());
        let qkv = self.qkv.forward(x)?.reshape((n, 3, heads, hd))?;
        // Strided views: attention reads them in place.
        let split =
            |i: usize| -> Result<Tensor> { Ok(qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?) };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let out = attend(&q, &k, &v, None)?;
        self.attn_out
            .forward(&out.transpose(0, 1)?.reshape((n, c))?)
    }
}

/// The position table resized from `from x from` to `to x to` patches as transformers'
/// `interpolate_pos_encoding` does: torch's bicubic interpolation (A = -0.75,
/// `align_corners=False`, edge taps clamped), separable, in f32.
fn interpolate_positions(table: &Tensor, from: usize, to: usize) -> Result<Tensor> {
    let (_, dim) = table.dims2()?;
    let dtype = table.dtype();
    let values: Vec<f32> = table
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let taps = |out: usize| -> ([usize; 4], [f32; 4]) {
        let scale = from as f32 / to as f32;
        let real = scale * (out as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let a = -0.75f32;
        let near = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
        let far = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        let index = |k: i64| (base as i64 - 1 + k).clamp(0, from as i64 - 1) as usize;
        ([index(0), index(1), index(2), index(3)], weights)
    };
    let mut out = vec![0f32; to * to * dim];
    for oy in 0..to {
        let (ys, wy) = taps(oy);
        for ox in 0..to {
            let (xs, wx) = taps(ox);
            let cell = &mut out[(oy * to + ox) * dim..][..dim];
            for (channel, value) in cell.iter_mut().enumerate() {
                let row = |y: usize| -> f32 {
                    (0..4)
                        .map(|k| values[(y * from + xs[k]) * dim + channel] * wx[k])
                        .sum()
                };
                *value = (0..4).map(|k| row(ys[k]) * wy[k]).sum();
            }
        }
    }
    Ok(Tensor::from_vec(out, (to * to, dim), table.device())?.to_dtype(dtype)?)
}

/// Averages `k x k` neighbourhoods of the `grid x grid` patch features `[grid * grid, dim]`,
/// like torch's `avg_pool2d(k, stride=k, ceil_mode=True)`: windows at the far edges cover
/// what is left and average only that.
pub fn pool_patches(features: &Tensor, grid: usize, k: usize) -> Result<Tensor> {
    if k == 1 {
        return Ok(features.clone());
    }
    let (_, dim) = features.dims2()?;
    let out = grid.div_ceil(k);
    let padded = out * k;
    let x = features.reshape((grid, grid, dim))?;
    let x = x
        .pad_with_zeros(0, 0, padded - grid)?
        .pad_with_zeros(1, 0, padded - grid)?;
    let sums = x.reshape((out, k, out, k, dim))?.sum(3)?.sum(1)?;
    let counts: Vec<f32> = (0..out)
        .flat_map(|i| {
            let rows = k.min(grid - i * k);
            (0..out).map(move |j| (rows * k.min(grid - j * k)) as f32)
        })
        .collect();
    let counts =
        Tensor::from_vec(counts, (out, out, 1), features.device())?.to_dtype(features.dtype())?;
    Ok(sums.broadcast_div(&counts)?.reshape((out * out, dim))?)
}
