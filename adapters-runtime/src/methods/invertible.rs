//! Invertible adapters (NICE coupling blocks) on the embeddings output, run in reverse before a
//! language-modeling head's decoder. Follows `NICECouplingBlock` of `methods/modeling.py`.

use candle_core::{Result, Tensor, Var};

use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::activation::Activation;
use crate::nn::linear;

/// `Linear(d_in, d_in / rf) -> activation -> Linear(d_in / rf, d_out)` (Sequential indices 0, 2).
struct Subnet {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    activation: Activation,
}

impl Subnet {
    fn new(prefix: &str, d_in: usize, d_out: usize, reduction: f64, activation: Activation, params: &mut Vec<NamedParam>, init: &mut Init) -> Result<Self> {
        let hidden = crate::model::bottleneck_size(d_in, reduction);
        let mut push = |name: String, t: Tensor| -> Result<Var> {
            let p = NamedParam::new(name, t)?;
            let v = p.var.clone();
            params.push(p);
            Ok(v)
        };
        // Python initialises every Linear with N(0, 0.02) and zero bias.
        Ok(Subnet {
            w1: push(format!("{prefix}.0.weight"), init.normal(&[hidden, d_in], 0.02)?)?,
            b1: push(format!("{prefix}.0.bias"), init.zeros(hidden)?)?,
            w2: push(format!("{prefix}.2.weight"), init.normal(&[d_out, hidden], 0.02)?)?,
            b2: push(format!("{prefix}.2.bias"), init.zeros(d_out)?)?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.activation.forward(&linear(x, self.w1.as_tensor(), Some(self.b1.as_tensor()))?)?;
        linear(&h, self.w2.as_tensor(), Some(self.b2.as_tensor()))
    }
}

/// NICE: the channels split in `x1` (first `H / 2`) and `x2`; `y1 = x1 + F(x2)`,
/// `y2 = x2 + G(y1)`, and exactly inverted in reverse.
pub struct InvertibleAdapter {
    f: Subnet,
    g: Subnet,
    split: usize,
    params: Vec<NamedParam>,
}

impl InvertibleAdapter {
    pub fn nice(hidden: usize, reduction: f64, activation: Activation, init: &mut Init) -> Result<Self> {
        let (l1, l2) = (hidden / 2, hidden - hidden / 2);
        let mut params = Vec::new();
        let f = Subnet::new("F", l2, l1, reduction, activation, &mut params, init)?;
        let g = Subnet::new("G", l1, l2, reduction, activation, &mut params, init)?;
        Ok(InvertibleAdapter { f, g, split: l1, params })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    fn halves(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let last = x.rank() - 1;
        let width = x.dim(last)?;
        Ok((x.narrow(last, 0, self.split)?, x.narrow(last, self.split, width - self.split)?))
    }

    /// The forward direction (on the embeddings output).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x1, x2) = self.halves(x)?;
        let y1 = (x1 + self.f.forward(&x2)?)?;
        let y2 = (x2 + self.g.forward(&y1)?)?;
        Tensor::cat(&[&y1, &y2], x.rank() - 1)
    }

    /// The reverse direction (before a language-modeling decoder).
    pub fn reverse(&self, x: &Tensor) -> Result<Tensor> {
        let (x1, x2) = self.halves(x)?;
        let y2 = (x2 - self.g.forward(&x1)?)?;
        let y1 = (x1 - self.f.forward(&y2)?)?;
        Tensor::cat(&[&y1, &y2], x.rank() - 1)
    }
}
