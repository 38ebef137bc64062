//! The forward context: what a forward pass needs to know about the adapters, passed explicitly
//! through the model instead of living in globals.

/// Per-forward state. Slots read the active adapters from here.
#[derive(Clone, Debug, Default)]
pub struct ForwardContext {
    stack: Vec<String>,
    train: bool,
}

impl ForwardContext {
    /// No adapter active, evaluation mode: the model computes exactly its original function.
    pub fn base() -> Self {
        Self::default()
    }

    /// Adapters applied in this order at every slot that holds them (a `Stack`; one name is a
    /// single adapter).
    pub fn with_stack(stack: Vec<String>, train: bool) -> Self {
        ForwardContext { stack, train }
    }

    pub fn active_stack(&self) -> &[String] {
        &self.stack
    }

    /// Training mode: dropout on.
    pub fn train(&self) -> bool {
        self.train
    }
}
