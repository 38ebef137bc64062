//! Attribute macros that wire adapter slots into a candle model at compile time.
//!
//! - `#[adapter_mixin(lora(q = path, ...), bottleneck(mh_adapter = path, ...))]` on a layer
//!   struct: marks where adapters attach and generates the slot walk and the mixin entry.
//! - `#[with_adapters(model_type = "...", layers = path, layer_mixin = Type, config = field)]` on
//!   a base model struct: generates layer iteration, the config view and the mapping entry.
//! - `#[adapter_config(hidden_size = dim, ...)]` on a config struct: maps its key names onto the
//!   names adapters need.
//!
//! Each takes `crate = path` for a crate that reaches the runtime under another path.
//!
//! Each macro parses, validates and expands; every error carries the span of the offending token
//! and says what to write. On error the item is still emitted with a fallback impl of the macro's
//! trait, so one mistake gives one error and IDEs keep working.

mod ast;
mod config;
mod expand;
mod mixin;
mod model;
mod suggest;

use proc_macro::TokenStream;

/// Marks the adapter insertion points of a transformer layer. See the crate docs.
#[proc_macro_attribute]
pub fn adapter_mixin(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::run::<mixin::AdapterMixinMacro>(args, item)
}

/// Makes a base model adapter-aware. See the crate docs.
#[proc_macro_attribute]
pub fn with_adapters(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::run::<model::WithAdaptersMacro>(args, item)
}

/// Maps a model config's key names onto the names adapters need. See the crate docs.
#[proc_macro_attribute]
pub fn adapter_config(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::run::<config::AdapterConfigMacro>(args, item)
}
