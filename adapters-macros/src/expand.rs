//! The shared driver: parse the item, run one macro, and on error emit the item unchanged plus
//! the `compile_error!`s, so one mistake does not bury the crate in follow-on errors.

use proc_macro2::TokenStream;
use quote::ToTokens;

pub(crate) type Expander = fn(TokenStream, &syn::ItemStruct) -> syn::Result<TokenStream>;

pub(crate) fn run(args: proc_macro::TokenStream, item: proc_macro::TokenStream, expander: Expander) -> proc_macro::TokenStream {
    let item: TokenStream = item.into();
    let parsed: syn::Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => return with_errors(item, e),
    };
    let syn::Item::Struct(strukt) = parsed else {
        let err = syn::Error::new_spanned(
            item_keyword(&parsed),
            "adapter macros go on a struct with named fields (a layer, a model or a config); \
             this item is not a struct",
        );
        return with_errors(item, err);
    };
    if !matches!(strukt.fields, syn::Fields::Named(_)) {
        let err = syn::Error::new_spanned(&strukt.fields, "adapter macros need named fields, e.g. `struct BertLayer { attention: BertAttention, ... }`");
        return with_errors(item, err);
    }
    match expander(args.into(), &strukt) {
        Ok(generated) => {
            let mut out = strukt.to_token_stream();
            out.extend(generated);
            out.into()
        }
        Err(e) => with_errors(item, e),
    }
}

fn with_errors(item: TokenStream, err: syn::Error) -> proc_macro::TokenStream {
    let mut out = item;
    out.extend(err.to_compile_error());
    out.into()
}

fn item_keyword(item: &syn::Item) -> TokenStream {
    match item {
        syn::Item::Enum(e) => e.enum_token.to_token_stream(),
        syn::Item::Fn(f) => f.sig.fn_token.to_token_stream(),
        syn::Item::Impl(i) => i.impl_token.to_token_stream(),
        syn::Item::Type(t) => t.type_token.to_token_stream(),
        syn::Item::Union(u) => u.union_token.to_token_stream(),
        syn::Item::Trait(t) => t.trait_token.to_token_stream(),
        other => other.to_token_stream(),
    }
}

/// Collects several errors before failing, so an author sees every mistake at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
