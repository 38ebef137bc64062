//! Native training: labelled text, tokenisation, the optimiser step, the schedule and the loop.

mod data;
mod optim;
mod schedule;
mod text;
mod trainer;

pub use data::{Dataset, Example};
pub use optim::AdamWStep;
pub use schedule::LinearSchedule;
pub use text::{Encoded, TextEncoder, TOKENIZER_FILE};
pub use trainer::{evaluate, train_classifier, EpochReport, Evaluation, LabelledTexts, TrainConfig, TrainReport};
