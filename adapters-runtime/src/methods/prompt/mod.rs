//! Prompt tuning: trainable embeddings inserted into the embedded input (`module`), at the slot
//! a model marks after its embeddings (`slot`).

mod module;
mod slot;

pub use module::PromptTuning;
pub use slot::EmbeddingSlot;
