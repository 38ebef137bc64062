//! Argument syntax shared by the macros: `key = value` lists, field paths (`a.b.c`), groups
//! (`lora(q = a.b)`).

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Token};

/// `attention.self_attention.query`
#[derive(Clone)]
pub(crate) struct FieldPath {
    pub segments: Vec<Ident>,
}

impl FieldPath {
    pub fn first(&self) -> &Ident {
        &self.segments[0]
    }
    pub fn dotted(&self) -> String {
        self.segments.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(".")
    }
    pub fn span(&self) -> Span {
        let tokens = self.to_token_stream();
        syn::spanned::Spanned::span(&tokens)
    }
}

impl Parse for FieldPath {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut segments = vec![input.call(Ident::parse_any_ident)?];
        while input.peek(Token![.]) {
            input.parse::<Token![.]>()?;
            segments.push(input.call(Ident::parse_any_ident)?);
        }
        Ok(FieldPath { segments })
    }
}

impl ToTokens for FieldPath {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                <Token![.]>::default().to_tokens(tokens);
            }
            s.to_tokens(tokens);
        }
    }
}

trait ParseAnyIdent {
    fn parse_any_ident(input: ParseStream) -> syn::Result<Ident>;
}

impl ParseAnyIdent for Ident {
    fn parse_any_ident(input: ParseStream) -> syn::Result<Ident> {
        use syn::ext::IdentExt;
        Ident::parse_any(input)
    }
}

/// `key = value` where value is a field path, a type path or a literal; a key may name
/// arguments, `key(a, b) = value` (a bottleneck location naming its inputs).
pub(crate) struct KeyValue {
    pub key: Ident,
    pub args: Option<Punctuated<Ident, Token![,]>>,
    pub value: Value,
}

pub(crate) enum Value {
    Path(FieldPath),
    Lit(syn::Lit),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Path(p) => p.span(),
            Value::Lit(l) => l.span(),
        }
    }
}

impl Parse for KeyValue {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        use syn::ext::IdentExt;
        let key = Ident::parse_any(input)?;
        let args = if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            Some(content.parse_terminated(Ident::parse_any, Token![,])?)
        } else {
            None
        };
        input.parse::<Token![=]>().map_err(|e| syn::Error::new(e.span(), format!("expected `{key} = ...`")))?;
        let value = if input.peek(syn::Lit) { Value::Lit(input.parse()?) } else { Value::Path(input.parse()?) };
        Ok(KeyValue { key, args, value })
    }
}

/// `lora(q = a.b, v = a.c)`
pub(crate) struct Group {
    pub name: Ident,
    pub entries: Punctuated<KeyValue, Token![,]>,
}

impl Parse for Group {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        use syn::ext::IdentExt;
        let name = Ident::parse_any(input)?;
        if !input.peek(syn::token::Paren) {
            return Err(syn::Error::new(
                name.span(),
                format!("expected `{name}(location = field.path, ...)`, e.g. `lora(q = attention.self_attention.query)`"),
            ));
        }
        let content;
        syn::parenthesized!(content in input);
        let entries = content.parse_terminated(KeyValue::parse, Token![,])?;
        Ok(Group { name, entries })
    }
}

pub(crate) fn parse_groups(args: TokenStream) -> syn::Result<Punctuated<Group, Token![,]>> {
    syn::parse::Parser::parse2(Punctuated::<Group, Token![,]>::parse_terminated, args)
}

pub(crate) fn parse_key_values(args: TokenStream) -> syn::Result<Punctuated<KeyValue, Token![,]>> {
    syn::parse::Parser::parse2(Punctuated::<KeyValue, Token![,]>::parse_terminated, args)
}

/// The names of a struct's fields.
pub(crate) fn field_names(strukt: &syn::ItemStruct) -> Vec<String> {
    strukt.fields.iter().filter_map(|f| f.ident.as_ref().map(|i| i.to_string())).collect()
}

/// Checks that a path starts at a field of the struct; suggests the nearest field otherwise.
pub(crate) fn check_field(strukt: &syn::ItemStruct, path: &FieldPath) -> syn::Result<()> {
    let fields = field_names(strukt);
    let first = path.first().to_string();
    if fields.contains(&first) {
        return Ok(());
    }
    let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
    Err(syn::Error::new(path.first().span(), format!("`{}` has no field `{first}`{}", strukt.ident, crate::suggest::hint(&first, &refs))))
}
