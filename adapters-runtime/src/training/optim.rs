//! One optimiser step as PyTorch takes it: gradient-norm clipping (`clip_grad_norm_`), then
//! AdamW (candle's, which is PyTorch's decoupled weight decay with bias correction).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::error::Result;

/// AdamW over a fixed set of variables.
pub struct AdamWStep {
    vars: Vec<Var>,
    adamw: AdamW,
}

impl AdamWStep {
    pub fn new(vars: Vec<Var>, lr: f64, weight_decay: f64) -> Result<Self> {
        let params = ParamsAdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay };
        let adamw = AdamW::new(vars.clone(), params)?;
        Ok(AdamWStep { vars, adamw })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The total L2 norm of the gradients of the variables (those without a gradient count 0).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for var in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        Ok(total.sqrt())
    }

    /// Backpropagates `loss`, clips to `max_grad_norm` if given, and steps with rate `lr`.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, loss: &Tensor, lr: f64, max_grad_norm: Option<f64>) -> Result<f64> {
        let mut grads = loss.backward()?;
        let norm = self.grad_norm(&grads)?;
        if let Some(max) = max_grad_norm {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                for var in &self.vars {
                    if let Some(g) = grads.remove(var.as_tensor()) {
                        grads.insert(var.as_tensor(), (g * coef)?);
                    }
                }
            }
        }
        self.adamw.set_learning_rate(lr);
        self.adamw.step(&grads)?;
        Ok(norm)
    }
}
