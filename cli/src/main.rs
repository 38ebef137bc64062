//! `adapters`: run candle transformer models with AdapterHub adapters from the command line.

mod forward;

use std::process::ExitCode;

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
    /// Load a model and adapters and print the adapter summary (name, method, parameters, % of base).
    Summary(forward::SummaryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Summary(args) => forward::summary(args),
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
