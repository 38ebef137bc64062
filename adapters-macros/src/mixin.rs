//! `#[adapter_mixin(lora(...), bottleneck(...))]`: parse the marks (groups of `location = field`),
//! validate them against the struct into [`Mark`]s, and expand them into the `AdapterMixin` impl
//! (slot walks, slot settings and the mixin entry).

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::ast::{self, FieldPath, Value};
use crate::expand::{AttributeMacro, Errors, Options};
use crate::suggest::hint;

const GROUPS: &[&str] = &["lora", "bottleneck", "prefix", "reft"];
/// Methods that attach after the embeddings (prompt tuning, invertible adapters): a model-level mark.
const MODEL_LEVEL_GROUPS: &[&str] = &["prompt", "embedding", "embeddings", "invertible"];
/// `attn_output` and `gate` are linears the Python library never adapts; PEFT adapters may. The
/// `cross_*` keys mark a decoder's cross-attention, which Python's LoRA targets as it targets
/// self-attention (the same `attn_matrices`).
const LORA_KEYS: &[(&str, &str)] = &[
    ("q", "Query"),
    ("k", "Key"),
    ("v", "Value"),
    ("cross_q", "Query"),
    ("cross_k", "Key"),
    ("cross_v", "Value"),
    ("cross_attn_output", "AttnOutput"),
    ("selfattn", "SelfAttn"),
    ("intermediate", "Intermediate"),
    ("output", "Output"),
    ("attn_output", "AttnOutput"),
    ("gate", "Gate"),
];
/// `cross_mh_adapter`: a cross-attention block whose output Python adapts at its `mh_adapter`
/// location (BERT's `crossattention.output`, which the same config flag switches).
const BOTTLENECK_KEYS: &[(&str, &str)] =
    &[("mh_adapter", "MhAdapter"), ("output_adapter", "OutputAdapter"), ("cross_adapter", "CrossAdapter"), ("cross_mh_adapter", "MhAdapter")];
const REFT_KEYS: &[(&str, &str)] = &[("output", "Output")];

#[derive(Clone, Copy)]
enum Family {
    Lora,
    Bottleneck,
    Prefix,
    Reft,
}

pub(crate) struct Mark {
    family: Family,
    location: String,
    variant: &'static str,
    path: FieldPath,
    /// A bottleneck location whose sublayer passes `(input, projected)`.
    input_first: bool,
}

/// `mh_adapter(input, projected)`: the order Python's `bottleneck_layer_forward` gets the two
/// tensors in. `Ok(true)` for `(input, projected)`, `Ok(false)` for the default order.
fn input_order(family: Family, entry: &ast::KeyValue) -> syn::Result<bool> {
    let Some(args) = &entry.args else { return Ok(false) };
    let key = &entry.key;
    if !matches!(family, Family::Bottleneck) {
        return Err(syn::Error::new(key.span(), format!("only bottleneck locations name their inputs; write `{key} = field.path`")));
    }
    let names: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match names.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["projected", "input"] => Ok(false),
        ["input", "projected"] => Ok(true),
        _ => Err(syn::Error::new(
            args.first().map_or(key.span(), |a| a.span()),
            format!(
                "name the two tensors in the order the Python library passes them to `bottleneck_layer_forward`: \
                 `{key}(projected, input) = ...` (the default, as BERT) or `{key}(input, projected) = ...` (as ALBERT's attention)"
            ),
        )),
    }
}

pub(crate) struct AdapterMixinMacro;

impl AttributeMacro for AdapterMixinMacro {
    type Ast = syn::punctuated::Punctuated<ast::Group, syn::Token![,]>;
    type Valid = Vec<Mark>;

    fn parse(args: TokenStream) -> syn::Result<Self::Ast> {
        ast::parse_groups(args)
    }

    fn validate(groups: Self::Ast, strukt: &syn::ItemStruct) -> syn::Result<Vec<Mark>> {
        validate(groups, strukt)
    }

    fn expand(marks: Vec<Mark>, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        expand(marks, options, strukt)
    }

    fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        fallback(options, strukt)
    }
}

fn validate(groups: syn::punctuated::Punctuated<ast::Group, syn::Token![,]>, strukt: &syn::ItemStruct) -> syn::Result<Vec<Mark>> {
    if groups.is_empty() {
        return Err(syn::Error::new(
            strukt.ident.span(),
            format!(
                "`#[adapter_mixin]` on `{}` marks no insertion point; write e.g. \
                 `#[adapter_mixin(lora(q = attention.query, v = attention.value), bottleneck(output_adapter = output.layer_norm))]`",
                strukt.ident
            ),
        ));
    }
    let mut errors = Errors::default();
    let mut marks = Vec::new();
    let mut seen_keys: HashMap<String, proc_macro2::Span> = HashMap::new();
    let mut seen_paths: HashMap<String, String> = HashMap::new();
    for group in &groups {
        let name = group.name.to_string();
        let (family, keys) = match name.as_str() {
            "lora" => (Family::Lora, LORA_KEYS),
            "bottleneck" => (Family::Bottleneck, BOTTLENECK_KEYS),
            // Prefix location keys are the model's own (`self_prefix`, `cross_prefix`, `self`).
            "prefix" => (Family::Prefix, &[][..]),
            "reft" => (Family::Reft, REFT_KEYS),
            other if MODEL_LEVEL_GROUPS.contains(&other) => {
                errors.push(syn::Error::new(
                    group.name.span(),
                    format!("`{other}` is not a layer insertion point; mark the embeddings slot on the model instead: `#[with_adapters(..., embeddings = embeddings.adapters)]`"),
                ));
                continue;
            }
            other => {
                errors.push(syn::Error::new(group.name.span(), format!("unknown adapter method group `{other}`{}", hint(other, GROUPS))));
                continue;
            }
        };
        let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        for entry in &group.entries {
            let key = entry.key.to_string();
            let found = match family {
                Family::Prefix => Some((key.clone(), "")),
                _ => keys.iter().find(|(k, _)| *k == key).map(|(k, v)| (k.to_string(), *v)),
            };
            let Some((location, variant)) = found else {
                errors.push(syn::Error::new(entry.key.span(), format!("unknown {name} location `{key}`{}", hint(&key, &names))));
                continue;
            };
            let Value::Path(path) = &entry.value else {
                errors.push(syn::Error::new(entry.value.span(), format!("expected a field path, e.g. `{key} = attention.self_attention.query`")));
                continue;
            };
            let full_key = format!("{name}.{key}");
            if seen_keys.insert(full_key, entry.key.span()).is_some() {
                errors.push(syn::Error::new(entry.key.span(), format!("`{key}` is marked twice in `{name}(...)`; each location takes one field")));
                continue;
            }
            let dotted = path.dotted();
            if let Some(previous) = seen_paths.insert(dotted.clone(), key.clone()) {
                errors.push(syn::Error::new(
                    path.span(),
                    format!("one insertion point marked twice: `{dotted}` is already marked as `{previous}`; a field carries one slot"),
                ));
                continue;
            }
            if let Err(e) = ast::check_field(strukt, path) {
                errors.push(e);
                continue;
            }
            let input_first = match input_order(family, entry) {
                Ok(order) => order,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            marks.push(Mark { family, location, variant, path: path.clone(), input_first });
        }
    }
    errors.finish()?;
    Ok(marks)
}

fn expand(marks: Vec<Mark>, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ident = &strukt.ident;
    let name = ident.to_string();
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    let rt = options.mixin();
    let specs = marks.iter().map(|m| {
        let family = match m.family {
            Family::Lora => quote!(#rt::SlotFamily::Lora),
            Family::Bottleneck => quote!(#rt::SlotFamily::Bottleneck),
            Family::Prefix => quote!(#rt::SlotFamily::Prefix),
            Family::Reft => quote!(#rt::SlotFamily::Reft),
        };
        let (location, field) = (m.location.as_str(), m.path.dotted());
        quote!(#rt::SlotSpec { family: #family, location: #location, field: #field })
    });
    let mut visit = Vec::new();
    let mut visit_mut = Vec::new();
    let configure: Vec<TokenStream> = marks
        .iter()
        .filter(|m| m.input_first)
        .map(|m| {
            let (path, span) = (&m.path, m.path.span());
            quote_spanned!(span=> #rt::assert::bottleneck_mut(&mut self.#path).set_inputs(#rt::BottleneckInputs::InputFirst);)
        })
        .collect();
    let configure_fn = if configure.is_empty() {
        quote!()
    } else {
        quote! {
            fn configure_slots(&mut self) {
                #(#configure)*
            }
        }
    };
    for m in &marks {
        let path = &m.path;
        let span = m.path.span();
        // The location enum variant (`Query`, `MhAdapter`) of the LoRA and bottleneck families.
        let variant = || syn::Ident::new(m.variant, proc_macro2::Span::call_site());
        let location = m.location.as_str();
        let (slot, slot_mut) = match m.family {
            Family::Lora => {
                let variant = variant();
                (
                    quote_spanned!(span=> #rt::SlotRef::Lora(#rt::LoraLocation::#variant, #rt::assert::lora(&self.#path))),
                    quote_spanned!(span=> #rt::SlotMut::Lora(#rt::LoraLocation::#variant, #rt::assert::lora_mut(&mut self.#path))),
                )
            }
            Family::Bottleneck => {
                let variant = variant();
                (
                    quote_spanned!(span=> #rt::SlotRef::Bottleneck(#rt::BottleneckLocation::#variant, #rt::assert::bottleneck(&self.#path))),
                    quote_spanned!(span=> #rt::SlotMut::Bottleneck(#rt::BottleneckLocation::#variant, #rt::assert::bottleneck_mut(&mut self.#path))),
                )
            }
            // Prefix slots carry the model's own location key; ReFT has one location.
            Family::Prefix => (
                quote_spanned!(span=> #rt::SlotRef::Prefix(#location, #rt::assert::prefix(&self.#path))),
                quote_spanned!(span=> #rt::SlotMut::Prefix(#location, #rt::assert::prefix_mut(&mut self.#path))),
            ),
            Family::Reft => (
                quote_spanned!(span=> #rt::SlotRef::Reft(#rt::assert::reft(&self.#path))),
                quote_spanned!(span=> #rt::SlotMut::Reft(#rt::assert::reft_mut(&mut self.#path))),
            ),
        };
        visit.push(quote_spanned!(span=> f(#slot);));
        visit_mut.push(quote_spanned!(span=> f(#slot_mut);));
    }
    quote! {
        impl #impl_generics #rt::AdapterMixin for #ident #ty_generics #where_clause {
            const MIXIN: #rt::MixinInfo = #rt::MixinInfo { name: #name, slots: &[#(#specs),*] };
            fn for_each_slot(&self, f: &mut dyn FnMut(#rt::SlotRef<'_>)) {
                #(#visit)*
            }
            fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(#rt::SlotMut<'_>)) {
                #(#visit_mut)*
            }
            #configure_fn
        }
    }
}

/// What a layer with wrong marks still gets: the trait, with no slots, so that a model naming it
/// as its `layer_mixin` reports nothing more.
fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ident = &strukt.ident;
    let name = ident.to_string();
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    let rt = options.mixin();
    quote! {
        impl #impl_generics #rt::AdapterMixin for #ident #ty_generics #where_clause {
            const MIXIN: #rt::MixinInfo = #rt::MixinInfo { name: #name, slots: &[] };
            fn for_each_slot(&self, _f: &mut dyn FnMut(#rt::SlotRef<'_>)) {}
            fn for_each_slot_mut(&mut self, _f: &mut dyn FnMut(#rt::SlotMut<'_>)) {}
        }
    }
}
