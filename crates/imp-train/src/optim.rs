//! AdamW with parameter groups, as `torch.optim.AdamW` computes it (decoupled weight decay,
//! bias-corrected moments), with moments kept in f32 whatever the parameters' dtype, and a
//! state that can be saved and restored exactly.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Parameters trained at one learning rate and weight decay.
pub struct ParamGroup {
    pub name: String,
    pub lr: f64,
    pub weight_decay: f64,
    pub params: Vec<Param>,
}

pub struct Param {
    pub name: String,
    pub var: Var,
    m: Tensor,
    v: Tensor,
}

impl Param {
    pub fn new(name: impl Into<String>, var: Var) -> Result<Self> {
        let zeros = var.zeros_like()?.to_dtype(DType::F32)?;
        Ok(Self {
            name: name.into(),
            var,
            m: zeros.clone(),
            v: zeros,
        })
    }
}

pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    /// Optimizer steps taken.
    steps: u64,
}

impl AdamW {
    pub fn new(config: AdamWConfig, groups: Vec<ParamGroup>) -> Self {
        Self {
            config,
            groups,
            steps: 0,
        }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn params(&self) -> impl Iterator<Item = &Param> {
        self.groups.iter().flat_map(|g| &g.params)
    }

    /// One update with each group's lr times `lr_multiplier`; `grads` by parameter name, every
    /// parameter must have one.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr_multiplier: f64) -> Result<()> {
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps } = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for group in &mut self.groups {
            let lr = group.lr * lr_multiplier;
            for param in &mut group.params {
                let grad = grads
                    .get(&param.name)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("no gradient for `{}`", param.name))
                    })?
                    .to_dtype(DType::F32)?;
                let theta = param.var.as_tensor().to_dtype(DType::F32)?;
                let theta = if group.weight_decay != 0.0 {
                    (theta * (1.0 - lr * group.weight_decay))?
                } else {
                    theta
                };
                param.m = ((&param.m * beta1)? + (&grad * (1.0 - beta1))?)?;
                param.v = ((&param.v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
                let denom = ((param.v.sqrt()? / bias2_sqrt)? + eps)?;
                let update = ((&param.m / denom)? * (lr / bias1))?;
                let theta = (theta - update)?;
                param.var.set(&theta.to_dtype(param.var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Moments by `m.<name>` / `v.<name>`, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.params()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.clone()),
                    (format!("v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores what [`state_tensors`](Self::state_tensors) saved after `steps` steps.
    pub fn restore(&mut self, steps: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for param in self.groups.iter_mut().flat_map(|g| &mut g.params) {
            let get = |key: String| -> Result<Tensor> {
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "the checkpoint's optimizer state lacks `{key}`"
                    ))
                })?;
                if t.dims() != param.var.dims() {
                    return Err(Error::InvalidArgument(format!(
                        "the checkpoint's `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        param.var.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?.to_device(param.var.device())?)
            };
            param.m = get(format!("m.{}", param.name))?;
            param.v = get(format!("v.{}", param.name))?;
        }
        self.steps = steps;
        Ok(())
    }
}
