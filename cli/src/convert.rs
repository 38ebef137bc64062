//! `adapters convert --model DIR --to peft|adapterhub IN OUT`: an adapter folder in the other
//! format (LoRA and IA3). The model names the modules: AdapterHub files name them by location,
//! PEFT files by module path, and the model's marks relate the two.

use std::path::PathBuf;

use adapters_models::LoadOptions;
use clap::{Args, ValueEnum};

use crate::forward::load_with_adapters;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Peft,
    Adapterhub,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint the adapter belongs to (folder or hub id).
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    #[arg(long, value_enum)]
    to: Format,
    /// The adapter folder to convert (either format).
    input: PathBuf,
    /// The folder to write.
    output: PathBuf,
}

pub fn run(args: ConvertArgs) -> Result<(), String> {
    let spec = args.input.display().to_string();
    let (model, loaded) = load_with_adapters(&args.model, std::slice::from_ref(&spec), LoadOptions::default())?;
    let name = loaded.first().ok_or("no adapter loaded")?;
    match args.to {
        Format::Peft => model.save_adapter_peft(&args.output, name),
        Format::Adapterhub => model.save_adapter(&args.output, name),
    }
    .map_err(|e| format!("{}: {e}", args.output.display()))?;
    println!("wrote `{name}` as {:?} to {}", args.to, args.output.display());
    Ok(())
}
