//! `#[adapter_config(hidden_size = dim, ...)]`: the config view adapters read, with key names
//! mapped as the Python library's `CONFIG_CLASS_KEYS_MAPPING` does.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::ast::{self, Value};
use crate::expand::{AttributeMacro, Errors, Options};
use crate::suggest::hint;

/// The keys adapters need, and whether each is an integer (else a float).
const NEEDED: &[(&str, bool)] = &[
    ("hidden_size", true),
    ("num_attention_heads", true),
    ("num_hidden_layers", true),
    ("hidden_dropout_prob", false),
    ("attention_probs_dropout_prob", false),
];

pub(crate) struct AdapterConfigMacro;

/// One key adapters read, the config field it comes from, and whether it is an integer.
pub(crate) struct ConfigKey {
    key: &'static str,
    field: syn::Ident,
    integer: bool,
}

impl AttributeMacro for AdapterConfigMacro {
    type Ast = syn::punctuated::Punctuated<ast::KeyValue, syn::Token![,]>;
    type Valid = Vec<ConfigKey>;

    fn parse(args: TokenStream) -> syn::Result<Self::Ast> {
        ast::parse_key_values(args)
    }

    fn validate(entries: Self::Ast, strukt: &syn::ItemStruct) -> syn::Result<Vec<ConfigKey>> {
        validate(entries, strukt)
    }

    fn expand(keys: Vec<ConfigKey>, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        expand(keys, options, strukt)
    }

    fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        fallback(options, strukt)
    }
}

fn validate(entries: syn::punctuated::Punctuated<ast::KeyValue, syn::Token![,]>, strukt: &syn::ItemStruct) -> syn::Result<Vec<ConfigKey>> {
    let names: Vec<&str> = NEEDED.iter().map(|(n, _)| *n).collect();
    let fields = ast::field_names(strukt);
    let mut errors = Errors::default();
    let mut mapped: Vec<(String, syn::Ident)> = Vec::new();
    for entry in &entries {
        let key = entry.key.to_string();
        if entry.args.is_some() {
            errors.push(syn::Error::new(entry.key.span(), format!("`{key}` takes no arguments here; write `{key} = ...`")));
            continue;
        }
        if !names.contains(&key.as_str()) {
            errors.push(syn::Error::new(entry.key.span(), format!("`{key}` is not a key adapters read{}", hint(&key, &names))));
            continue;
        }
        let field = match &entry.value {
            Value::Path(p) if p.segments.len() == 1 => p.first().clone(),
            other => {
                errors.push(syn::Error::new(other.span(), format!("map `{key}` to one field of this struct, e.g. `{key} = dim`")));
                continue;
            }
        };
        if let Err(e) = ast::check_field(strukt, &ast::FieldPath { segments: vec![field.clone()] }) {
            errors.push(e);
            continue;
        }
        if mapped.iter().any(|(k, _)| *k == key) {
            errors.push(syn::Error::new(entry.key.span(), format!("`{key}` is mapped twice")));
            continue;
        }
        mapped.push((key, field));
    }
    let ident = &strukt.ident;
    let mut keys = Vec::new();
    for (key, integer) in NEEDED {
        let field = match mapped.iter().find(|(k, _)| k == key) {
            Some((_, f)) => f.clone(),
            None if fields.iter().any(|f| f == key) => syn::Ident::new(key, proc_macro2::Span::call_site()),
            None => {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!("config `{ident}` has no field `{key}` and no mapping for it; name the field that holds it: `#[adapter_config({key} = <field>)]`"),
                ));
                continue;
            }
        };
        keys.push(ConfigKey { key, field, integer: *integer });
    }
    errors.finish()?;
    Ok(keys)
}

fn expand(keys: Vec<ConfigKey>, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ident = &strukt.ident;
    let mut getters = Vec::new();
    let mut mapping = Vec::new();
    for ConfigKey { key, field, integer } in &keys {
        let key_ident = syn::Ident::new(key, proc_macro2::Span::call_site());
        let span = field.span();
        getters.push(if *integer { quote_spanned!(span=> #key_ident: self.#field as usize,) } else { quote_spanned!(span=> #key_ident: self.#field as f64,) });
        let field_name = field.to_string();
        mapping.push(quote!((#key, #field_name)));
    }
    let rt = options.mixin();
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    quote! {
        impl #impl_generics #rt::AdapterModelConfig for #ident #ty_generics #where_clause {
            const KEY_MAPPING: &'static [(&'static str, &'static str)] = &[#(#mapping),*];
            // A config field may be any integer or float type; when it already is usize / f64
            // the `as` is a no-op.
            #[allow(clippy::unnecessary_cast)]
            fn dims(&self) -> #rt::ModelDims {
                #rt::ModelDims { #(#getters)* }
            }
        }
    }
}

/// What a config with wrong marks still gets: the trait with no key mapping and zero sizes
/// (never read: the crate does not compile), so that models using it report nothing more.
fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ident = &strukt.ident;
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    let rt = options.mixin();
    quote! {
        impl #impl_generics #rt::AdapterModelConfig for #ident #ty_generics #where_clause {
            const KEY_MAPPING: &'static [(&'static str, &'static str)] = &[];
            fn dims(&self) -> #rt::ModelDims {
                #rt::ModelDims { hidden_size: 0, num_attention_heads: 0, num_hidden_layers: 0, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0 }
            }
        }
    }
}
