//! `#[with_adapters(model_type = "bert", layers = encoder.layers, layer_mixin = BertLayer,
//! config = config)]`: layer iteration, the config view and the mapping entry of a base model.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::ast::{self, FieldPath, Value};
use crate::expand::{AttributeMacro, Errors, Options};
use crate::suggest::hint;

const KEYS: &[&str] =
    &["model_type", "layers", "layer_mixin", "config", "layer_type", "embeddings", "prompt_tuning", "invertible", "decoder_layers", "decoder_mixin"];

pub(crate) struct WithAdaptersMacro;

/// The arguments of `#[with_adapters]`, checked.
pub(crate) struct ModelArgs {
    model_type: String,
    layers: FieldPath,
    layer_mixin: FieldPath,
    config_field: syn::Ident,
    config_ty: syn::Type,
    layer_type: Option<String>,
    embeddings: Option<FieldPath>,
    /// `prompt_tuning = false`: the embedding slot takes invertible adapters only (Python's
    /// `support_prompt_tuning = False`, e.g. on Llama).
    prompt_tuning: bool,
    /// `invertible = false`: the embedding slot takes prompts but no invertible adapters
    /// (Python's ViT, which has no `InvertibleAdaptersMixin`).
    invertible: bool,
    /// An encoder-decoder's decoder stack and its layer type (`decoder_layers = decoder.layers,
    /// decoder_mixin = BartDecoderLayer`), walked after `layers`.
    decoder: Option<(FieldPath, FieldPath)>,
}

impl AttributeMacro for WithAdaptersMacro {
    type Ast = syn::punctuated::Punctuated<ast::KeyValue, syn::Token![,]>;
    type Valid = ModelArgs;

    fn parse(args: TokenStream) -> syn::Result<Self::Ast> {
        ast::parse_key_values(args)
    }

    fn validate(entries: Self::Ast, strukt: &syn::ItemStruct) -> syn::Result<ModelArgs> {
        validate(entries, strukt)
    }

    fn expand(args: ModelArgs, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        expand(args, options, strukt)
    }

    fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
        fallback(options, strukt)
    }
}

fn validate(entries: syn::punctuated::Punctuated<ast::KeyValue, syn::Token![,]>, strukt: &syn::ItemStruct) -> syn::Result<ModelArgs> {
    let mut errors = Errors::default();
    let (mut model_type, mut layers, mut layer_mixin, mut config, mut layer_type, mut embeddings) = (None, None, None, None, None, None);
    let mut prompt_tuning = None;
    let mut invertible = None;
    let (mut decoder_layers, mut decoder_mixin) = (None, None);
    for entry in &entries {
        let key = entry.key.to_string();
        if entry.args.is_some() {
            errors.push(syn::Error::new(entry.key.span(), format!("`{key}` takes no arguments here; write `{key} = ...`")));
            continue;
        }
        let slot = match key.as_str() {
            "model_type" => &mut model_type,
            "layers" => &mut layers,
            "layer_mixin" => &mut layer_mixin,
            "config" => &mut config,
            "layer_type" => &mut layer_type,
            "embeddings" => &mut embeddings,
            "prompt_tuning" => &mut prompt_tuning,
            "invertible" => &mut invertible,
            "decoder_layers" => &mut decoder_layers,
            "decoder_mixin" => &mut decoder_mixin,
            other => {
                errors.push(syn::Error::new(entry.key.span(), format!("unknown `with_adapters` argument `{other}`{}", hint(other, KEYS))));
                continue;
            }
        };
        if slot.is_some() {
            errors.push(syn::Error::new(entry.key.span(), format!("`{key}` is given twice")));
            continue;
        }
        *slot = Some(&entry.value);
    }
    let ident = &strukt.ident;
    let missing = |key: &str, example: &str| syn::Error::new(ident.span(), format!("`#[with_adapters]` on `{ident}` needs `{key}`: {example}"));
    let model_type = match model_type {
        Some(Value::Lit(syn::Lit::Str(s))) => Some(s.value()),
        Some(other) => {
            errors.push(syn::Error::new(other.span(), "`model_type` is a string, e.g. `model_type = \"bert\"`"));
            None
        }
        None => {
            errors.push(missing("model_type", "the `model_type` of its config.json, e.g. `model_type = \"bert\"`"));
            None
        }
    };
    let layers = path_arg(&mut errors, strukt, layers, "layers", || {
        missing("layers", "a base model must say how to iterate its layers, e.g. `layers = encoder.layers` (a Vec of the layer type)")
    });
    let layer_mixin = match layer_mixin {
        Some(Value::Path(p)) => Some(p.clone()),
        Some(other) => {
            errors.push(syn::Error::new(other.span(), "`layer_mixin` names a type, e.g. `layer_mixin = BertLayer`"));
            None
        }
        None => {
            errors.push(missing("layer_mixin", "the layer type carrying `#[adapter_mixin]`, e.g. `layer_mixin = BertLayer`"));
            None
        }
    };
    let config = path_arg(&mut errors, strukt, config, "config", || missing("config", "the field holding the model config, e.g. `config = config`"));
    let layer_type = match layer_type {
        Some(Value::Lit(syn::Lit::Str(s))) => Some(s.value()),
        Some(other) => {
            errors.push(syn::Error::new(other.span(), "`layer_type` is a string, e.g. `layer_type = \"RobertaLayer\"`"));
            None
        }
        None => None,
    };
    // Optional: the `EmbeddingSlot` after the embeddings (prompt tuning).
    let embeddings = match embeddings {
        None => None,
        some => path_arg(&mut errors, strukt, some, "embeddings", || syn::Error::new(ident.span(), "`embeddings` needs a field path")),
    };
    let prompt_tuning = slot_switch(&mut errors, prompt_tuning, embeddings.is_some(), "prompt_tuning", "where the model cannot take a prompt");
    let invertible = slot_switch(&mut errors, invertible, embeddings.is_some(), "invertible", "where the model takes no invertible adapters");
    // Optional, together: the decoder stack of an encoder-decoder.
    let decoder = match (decoder_layers, decoder_mixin) {
        (None, None) => None,
        (Some(layers), Some(mixin)) => {
            let layers = path_arg(&mut errors, strukt, Some(layers), "decoder_layers", || syn::Error::new(ident.span(), "`decoder_layers` needs a field path"));
            let mixin = match mixin {
                Value::Path(p) => Some(p.clone()),
                other => {
                    errors.push(syn::Error::new(other.span(), "`decoder_mixin` names a type, e.g. `decoder_mixin = BartDecoderLayer`"));
                    None
                }
            };
            layers.zip(mixin)
        }
        (Some(layers), None) => {
            errors.push(syn::Error::new(
                layers.span(),
                "`decoder_layers` needs `decoder_mixin`: the decoder layer type carrying `#[adapter_mixin]`, e.g. `decoder_mixin = BartDecoderLayer`",
            ));
            None
        }
        (None, Some(mixin)) => {
            errors.push(syn::Error::new(
                mixin.span(),
                "`decoder_mixin` needs `decoder_layers`: the field path of the decoder's layers, e.g. `decoder_layers = decoder.layers`",
            ));
            None
        }
    };
    if let Some(config) = &config {
        if config.segments.len() != 1 {
            errors.push(syn::Error::new(config.span(), "`config` names a field of this struct directly, e.g. `config = config`"));
        }
    }
    errors.finish()?;
    let (Some(model_type), Some(layers), Some(layer_mixin), Some(config)) = (model_type, layers, layer_mixin, config) else { unreachable_error(ident)? };
    let config_field = config.first();
    let config_ty = strukt
        .fields
        .iter()
        .find(|f| f.ident.as_ref() == Some(config_field))
        .map(|f| f.ty.clone())
        .ok_or_else(|| syn::Error::new(config_field.span(), "no such field"))?;
    Ok(ModelArgs { model_type, layers, layer_mixin, config_field: config_field.clone(), config_ty, layer_type, embeddings, prompt_tuning, invertible, decoder })
}

fn expand(args: ModelArgs, options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ModelArgs { model_type, layers, layer_mixin, config_field, config_ty, layer_type, embeddings, prompt_tuning, invertible, decoder } = args;
    let ident = &strukt.ident;
    let mixin_segments = &layer_mixin.segments;
    let mixin_ty = quote!(#(#mixin_segments)::*);
    let class = ident.to_string();
    let layer_type = layer_type.unwrap_or_else(|| format!("{}Layer", class.trim_end_matches("Model")));
    let adapter_class = format!("{}AdapterModel", class.strip_suffix("Model").unwrap_or(&class));
    let alias = syn::Ident::new(&adapter_class, ident.span());
    let vis = &strukt.vis;
    let alias_doc = format!("`{class}` with adapters and prediction heads: Python's `{adapter_class}`.");
    let alias_item = alias_item(options, strukt, &alias, &alias_doc, vis);
    let rt = options.mixin();
    let krate = &options.krate;
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    // Each stack is walked as its own mixin type (the assertion names the wrong one on its token).
    let walk = |path: &FieldPath, mixin: &FieldPath| {
        let span = path.span();
        let segments = &mixin.segments;
        let mixin_span = mixin.span();
        let ty = quote_spanned!(mixin_span=> #(#segments)::*);
        let (as_layer, as_layer_mut) = (quote_spanned!(mixin_span=> #rt::assert::layer::<#ty>), quote_spanned!(mixin_span=> #rt::assert::layer_mut::<#ty>));
        (
            quote_spanned! {span=>
                ::std::iter::Iterator::for_each(::std::iter::IntoIterator::into_iter(&self.#path), |layer| {
                    f(index, #as_layer(layer));
                    index += 1;
                });
            },
            quote_spanned! {span=>
                ::std::iter::Iterator::for_each(::std::iter::IntoIterator::into_iter(&mut self.#path), |layer| {
                    f(index, #as_layer_mut(layer));
                    index += 1;
                });
            },
        )
    };
    let (mut layers_ref, mut layers_mut) = walk(&layers, &layer_mixin);
    let decoder_mixin = match &decoder {
        Some((path, mixin)) => {
            let segments = &mixin.segments;
            let decoder_ty = quote!(#(#segments)::*);
            let (walk_ref, walk_mut) = walk(path, mixin);
            layers_ref.extend(walk_ref);
            layers_mut.extend(walk_mut);
            quote!(::std::option::Option::Some(<#decoder_ty as #rt::AdapterMixin>::MIXIN))
        }
        None => quote!(::std::option::Option::None),
    };
    let has_embedding_slot = embeddings.is_some();
    let supports_prompt_tuning = has_embedding_slot && prompt_tuning;
    let supports_invertible = has_embedding_slot && invertible;
    let embedding_fns = match &embeddings {
        Some(path) => {
            let span = path.span();
            quote_spanned! {span=>
                fn embedding_slot(&self) -> ::std::option::Option<&#krate::EmbeddingSlot> {
                    ::std::option::Option::Some(#rt::assert::embedding(&self.#path))
                }
                fn embedding_slot_mut(&mut self) -> ::std::option::Option<&mut #krate::EmbeddingSlot> {
                    ::std::option::Option::Some(#rt::assert::embedding_mut(&mut self.#path))
                }
            }
        }
        None => quote!(),
    };
    quote! {
        impl #impl_generics #rt::AdaptableModel for #ident #ty_generics #where_clause {
            const MAPPING: #rt::ModelMapping = #rt::ModelMapping {
                model_type: #model_type,
                model_class: #class,
                adapter_model_class: #adapter_class,
                layer_type: #layer_type,
                layer_mixin: <#mixin_ty as #rt::AdapterMixin>::MIXIN,
                decoder_mixin: #decoder_mixin,
                config_keys: <#config_ty as #rt::AdapterModelConfig>::KEY_MAPPING,
                has_embedding_slot: #has_embedding_slot,
                supports_prompt_tuning: #supports_prompt_tuning,
                supports_invertible: #supports_invertible,
            };
            fn dims(&self) -> #rt::ModelDims {
                #rt::AdapterModelConfig::dims(&self.#config_field)
            }
            #[allow(unused_assignments)]
            fn for_each_layer(&self, f: &mut dyn FnMut(usize, &dyn #rt::LayerSlots)) {
                let mut index = 0usize;
                #layers_ref
            }
            #[allow(unused_assignments)]
            fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(usize, &mut dyn #rt::LayerSlots)) {
                let mut index = 0usize;
                #layers_mut
            }
            #embedding_fns
        }
        #alias_item
    }
}

/// A `true`/`false` refinement of the embedding slot (`prompt_tuning`, `invertible`): `true`
/// when absent; `false` only with `embeddings = ...`.
fn slot_switch(errors: &mut Errors, value: Option<&Value>, has_embeddings: bool, key: &str, when: &str) -> bool {
    match value {
        None => true,
        Some(Value::Lit(syn::Lit::Bool(b))) if has_embeddings || b.value => b.value,
        Some(Value::Lit(syn::Lit::Bool(b))) => {
            errors.push(syn::Error::new(b.span(), format!("`{key}` refines the embedding slot; add `embeddings = <field path of the EmbeddingSlot>` first")));
            false
        }
        Some(other) => {
            errors.push(syn::Error::new(other.span(), format!("`{key}` is `true` or `false`, e.g. `{key} = false` {when}")));
            false
        }
    }
}

fn path_arg(errors: &mut Errors, strukt: &syn::ItemStruct, value: Option<&Value>, key: &str, missing: impl FnOnce() -> syn::Error) -> Option<FieldPath> {
    match value {
        Some(Value::Path(p)) => match ast::check_field(strukt, p) {
            Ok(()) => Some(p.clone()),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Some(other) => {
            errors.push(syn::Error::new(other.span(), format!("`{key}` is a field path, not a literal")));
            None
        }
        None => {
            errors.push(missing());
            None
        }
    }
}

/// All arguments were checked above; this only turns an impossible state into an error, not a panic.
fn unreachable_error<T>(ident: &syn::Ident) -> syn::Result<T> {
    Err(syn::Error::new(ident.span(), "internal: incomplete `with_adapters` arguments"))
}

/// `pub type BertAdapterModel = AdaptedModel<BertModel>` (a generic model has no single type to
/// name).
fn alias_item(options: &Options, strukt: &syn::ItemStruct, alias: &syn::Ident, doc: &str, vis: &syn::Visibility) -> TokenStream {
    if !strukt.generics.params.is_empty() {
        return quote!();
    }
    let (ident, krate) = (&strukt.ident, &options.krate);
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #vis type #alias = #krate::AdaptedModel<#ident>;
    }
}

/// What a model with wrong arguments still gets: the trait over no layers (the model stands in
/// as its own slot-less layer type, so no helper type shows up in other errors) and its
/// `...AdapterModel` alias, so that code using the model reports nothing more.
fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream {
    let ident = &strukt.ident;
    let class = ident.to_string();
    let adapter_class = format!("{}AdapterModel", class.strip_suffix("Model").unwrap_or(&class));
    let alias_ident = syn::Ident::new(&adapter_class, ident.span());
    let alias_item = alias_item(options, strukt, &alias_ident, "(fallback after an error in `#[with_adapters]`)", &strukt.vis);
    let (impl_generics, ty_generics, where_clause) = strukt.generics.split_for_impl();
    let rt = options.mixin();
    quote! {
        impl #impl_generics #rt::AdapterMixin for #ident #ty_generics #where_clause {
            const MIXIN: #rt::MixinInfo = #rt::MixinInfo { name: #class, slots: &[] };
            fn for_each_slot(&self, _f: &mut dyn FnMut(#rt::SlotRef<'_>)) {}
            fn for_each_slot_mut(&mut self, _f: &mut dyn FnMut(#rt::SlotMut<'_>)) {}
        }
        impl #impl_generics #rt::AdaptableModel for #ident #ty_generics #where_clause {
            const MAPPING: #rt::ModelMapping = #rt::ModelMapping {
                model_type: "",
                model_class: #class,
                adapter_model_class: #adapter_class,
                layer_type: "",
                layer_mixin: <Self as #rt::AdapterMixin>::MIXIN,
                decoder_mixin: ::std::option::Option::None,
                config_keys: &[],
                has_embedding_slot: false,
                supports_prompt_tuning: false,
                supports_invertible: false,
            };
            fn dims(&self) -> #rt::ModelDims {
                #rt::ModelDims { hidden_size: 0, num_attention_heads: 0, num_hidden_layers: 0, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0 }
            }
            fn for_each_layer(&self, _f: &mut dyn FnMut(usize, &dyn #rt::LayerSlots)) {}
            fn for_each_layer_mut(&mut self, _f: &mut dyn FnMut(usize, &mut dyn #rt::LayerSlots)) {}
        }
        #alias_item
    }
}
