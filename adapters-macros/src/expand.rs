//! The shared driver of the three macros, in thiserror's shape: split off the options every
//! macro takes (`crate = path`), then three passes: parse the arguments (syntax only, `ast`),
//! validate them against the struct (every error, with its span), expand (cannot fail). On
//! error it emits the item unchanged, the `compile_error!`s, and the macro's fallback impl, so
//! one mistake gives one error: code that uses the type (a model naming a broken layer as its
//! `layer_mixin`) still sees the trait implemented and reports nothing more.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, ToTokens};

/// Options shared by every macro.
pub(crate) struct Options {
    /// The path of the runtime crate in generated code: `::adapters_runtime`, or what
    /// `crate = path` names (for a crate that re-exports it under another name).
    pub krate: TokenStream,
}

impl Default for Options {
    fn default() -> Self {
        Options { krate: quote!(::adapters_runtime) }
    }
}

impl Options {
    /// `<krate>::mixin`, where the generated traits live.
    pub fn mixin(&self) -> TokenStream {
        let krate = &self.krate;
        quote!(#krate::mixin)
    }
}

/// One attribute macro, as three passes and a fallback.
pub(crate) trait AttributeMacro {
    /// The arguments as written.
    type Ast;
    /// The arguments checked against the struct: all the expansion needs.
    type Valid;
    fn parse(args: TokenStream) -> syn::Result<Self::Ast>;
    fn validate(ast: Self::Ast, strukt: &syn::ItemStruct) -> syn::Result<Self::Valid>;
    fn expand(valid: Self::Valid, options: &Options, strukt: &syn::ItemStruct) -> TokenStream;
    /// The trait impl emitted when the arguments are wrong.
    fn fallback(options: &Options, strukt: &syn::ItemStruct) -> TokenStream;
}

pub(crate) fn run<M: AttributeMacro>(args: proc_macro::TokenStream, item: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let item: TokenStream = item.into();
    let parsed: syn::Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => return with_errors(item, e, TokenStream::new()),
    };
    let syn::Item::Struct(strukt) = parsed else {
        let err = syn::Error::new_spanned(
            item_keyword(&parsed),
            "adapter macros go on a struct with named fields (a layer, a model or a config); \
             this item is not a struct",
        );
        return with_errors(item, err, TokenStream::new());
    };
    if !matches!(strukt.fields, syn::Fields::Named(_)) {
        let err = syn::Error::new_spanned(&strukt.fields, "adapter macros need named fields, e.g. `struct BertLayer { attention: BertAttention, ... }`");
        return with_errors(item, err, M::fallback(&Options::default(), &strukt));
    }
    let (options, args) = match split_options(args.into()) {
        Ok(split) => split,
        Err(e) => return with_errors(item, e, M::fallback(&Options::default(), &strukt)),
    };
    match M::parse(args).and_then(|ast| M::validate(ast, &strukt)) {
        Ok(valid) => {
            let mut out = strukt.to_token_stream();
            out.extend(M::expand(valid, &options, &strukt));
            out.into()
        }
        Err(e) => with_errors(item, e, M::fallback(&options, &strukt)),
    }
}

/// Takes `crate = path` out of the arguments (anywhere among the comma-separated entries).
pub(crate) fn split_options(args: TokenStream) -> syn::Result<(Options, TokenStream)> {
    let mut options = Options::default();
    let mut rest = TokenStream::new();
    let mut entries: Vec<Vec<TokenTree>> = vec![Vec::new()];
    for tt in args {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => entries.push(Vec::new()),
            _ => entries.last_mut().expect("one entry at least").push(tt),
        }
    }
    let mut first = true;
    for entry in entries.into_iter().filter(|e| !e.is_empty()) {
        if matches!(&entry[0], TokenTree::Ident(i) if i == "crate") {
            let key = entry[0].clone();
            let is_eq = matches!(entry.get(1), Some(TokenTree::Punct(p)) if p.as_char() == '=');
            let path: TokenStream = entry.iter().skip(2).cloned().collect();
            if !is_eq || path.is_empty() {
                return Err(syn::Error::new_spanned(key, "write `crate = path::to::adapters_runtime` (the path under which this crate can reach the runtime)"));
            }
            let path: syn::Path = syn::parse2(path.clone())
                .map_err(|_| syn::Error::new_spanned(&path, "`crate = ...` takes a path, e.g. `crate = my_crate::adapters_runtime`"))?;
            options.krate = path.to_token_stream();
            continue;
        }
        if !first {
            rest.extend(quote!(,));
        }
        first = false;
        rest.extend(entry);
    }
    Ok((options, rest))
}

fn with_errors(item: TokenStream, err: syn::Error, fallback: TokenStream) -> proc_macro::TokenStream {
    let mut out = item;
    out.extend(err.to_compile_error());
    out.extend(fallback);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_option_is_taken_from_anywhere_in_the_arguments() {
        let (options, rest) = split_options(quote!(lora(q = a.b), crate = my::rt, bottleneck(mh_adapter = c))).unwrap();
        assert_eq!(options.krate.to_string(), quote!(my::rt).to_string());
        assert_eq!(rest.to_string(), quote!(lora(q = a.b), bottleneck(mh_adapter = c)).to_string());
        let (options, rest) = split_options(quote!(model_type = "bert")).unwrap();
        assert_eq!(options.krate.to_string(), quote!(::adapters_runtime).to_string());
        assert_eq!(rest.to_string(), quote!(model_type = "bert").to_string());
        assert!(split_options(quote!(crate)).is_err());
        assert!(split_options(quote!(crate = 3)).is_err());
    }
}
