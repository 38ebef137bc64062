//! `adapters`: run candle transformer models with AdapterHub adapters from the command line.

mod continued;
mod convert;
mod forward;
mod generate;
mod inspect;
mod merge;
mod placement;
mod tokenizer;
mod train;
mod train_lm;

use std::process::ExitCode;

/// candle allocates a fresh buffer for every op; glibc hands large ones back to the kernel on
/// free, so each forward page-faults them in again. mimalloc keeps them for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "adapters", version, about = "AdapterHub adapters for candle transformer models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model (with adapters) on token ids and write `last_hidden_state`.
    Forward(forward::ForwardArgs),
    /// Continue a prompt with a decoder (and adapters), streaming the text to stdout.
    Generate(generate::GenerateArgs),
    /// Write an adapter folder in the other format (PEFT or AdapterHub; LoRA and IA3).
    Convert(convert::ConvertArgs),
    /// What a folder (adapter, head, fusion, PEFT adapter, checkpoint) or GGUF file holds.
    Inspect(inspect::InspectArgs),
    /// Merge a LoRA-family adapter into a checkpoint's weights and write the standalone checkpoint.
    Merge(merge::MergeArgs),
    /// Load a model and adapters and print the adapter summary (name, method, parameters, % of base).
    Summary(forward::SummaryArgs),
    /// Train an adapter (or the full model) with a classification head on labelled text, or an
    /// adapter of a decoder on text (`--task causal-lm`).
    Train(train::TrainArgs),
    /// Accuracy of a trained classifier on labelled text.
    Eval(train::EvalArgs),
    /// Classify sentences with a trained adapter and head.
    Predict(train::PredictArgs),
}

/// `--model`: a folder or file, or a hub id found in the local Hugging Face cache.
fn model_arg(text: &str) -> Result<std::path::PathBuf, String> {
    adapters_models::resolve_model_path(std::path::Path::new(text)).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    adapters_runtime::allocator::keep_freed_memory();
    adapters_runtime::nn::configure_threads();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap lays them out.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // A bad argument is an error like any other: one line, as the contract promises.
            let text = e.to_string();
            let line = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect::<Vec<_>>().join(" ");
            eprintln!("{}", line);
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Summary(args) => forward::summary(args),
        Command::Train(args) => train::train(args),
        Command::Eval(args) => train::eval(args),
        Command::Predict(args) => train::predict(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line, as the contract promises.
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
