//! Native training: the optimiser step and the schedule, and (with the `train` feature) labelled
//! text, tokenisation and the classification training loop.

#[cfg(feature = "train")]
mod causal_lm;
mod data;
mod optim;
mod schedule;
mod seq2seq;
#[cfg(feature = "train")]
mod text;
#[cfg(feature = "train")]
mod trainer;

#[cfg(feature = "train")]
pub use causal_lm::{evaluate_lm, instruction_sequences, pack_texts, train_causal_lm, LmData, LmEvaluation, LmSequence, LmTrainConfig, LmTrainReport};
pub use data::{Dataset, Example};
pub use optim::AdamWStep;
pub use schedule::LinearSchedule;
pub use seq2seq::decoder_inputs_from_labels;
#[cfg(feature = "train")]
pub use text::{ByteLevelBpe, Encoded, TextEncoder, TOKENIZER_FILE};
#[cfg(feature = "train")]
pub use trainer::{evaluate, train_classifier, EpochReport, Evaluation, LabelledTexts, TrainConfig, TrainReport};
