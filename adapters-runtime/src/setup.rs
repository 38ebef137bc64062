//! Adapter setups: which adapters are active and how they compose, in the Python `repr` syntax
//! (`Stack[a, b]`) and the `adapter_setup.json` form.

use std::fmt;

use serde_json::{json, Value};

use crate::error::{AdapterError, Result};

/// A composition of adapters.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterSetup {
    Single(String),
    Stack(Vec<AdapterSetup>),
    Parallel(Vec<AdapterSetup>),
    Fuse(Vec<AdapterSetup>),
    Split(Vec<AdapterSetup>),
    BatchSplit(Vec<AdapterSetup>),
    Average(Vec<AdapterSetup>),
}

impl From<&str> for AdapterSetup {
    fn from(name: &str) -> Self {
        AdapterSetup::Single(name.to_string())
    }
}

impl From<String> for AdapterSetup {
    fn from(name: String) -> Self {
        AdapterSetup::Single(name)
    }
}

impl AdapterSetup {
    /// `Stack[a, b]` of single adapters.
    pub fn stack<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        AdapterSetup::Stack(names.into_iter().map(|n| AdapterSetup::Single(n.into())).collect())
    }

    /// Parses the Python repr syntax: `a`, `Stack[a, b]`, `Parallel[a, Stack[b, c]]`.
    ///
    /// ```
    /// use adapters_runtime::AdapterSetup;
    /// let setup = AdapterSetup::parse("Stack[lang, task]").unwrap();
    /// assert_eq!(setup.to_string(), "Stack[lang, task]");
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let mut parser = Parser { text, pos: 0 };
        let setup = parser.node()?;
        parser.skip_ws();
        if parser.pos != text.len() {
            return Err(parser.error("unexpected text after the setup"));
        }
        Ok(setup)
    }

    /// Reads the `adapter_setup.json` form: `{"type": "Stack", "children": [...]}`.
    pub fn from_json(value: &Value) -> Result<Self> {
        let bad = |reason: &str| AdapterError::Setup { setup: value.to_string(), reason: reason.into() };
        if let Some(name) = value.as_str() {
            return Ok(AdapterSetup::Single(name.into()));
        }
        let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| bad("missing string `type`"))?;
        let children = value.get("children").and_then(Value::as_array).ok_or_else(|| bad("missing list `children`"))?;
        if kind == "single" {
            let name = children.first().and_then(Value::as_str).ok_or_else(|| bad("`single` needs one adapter name"))?;
            return Ok(AdapterSetup::Single(name.into()));
        }
        let children = children.iter().map(Self::from_json).collect::<Result<Vec<_>>>()?;
        Self::block(kind, children).ok_or_else(|| bad(&format!("unknown block type `{kind}`")))
    }

    pub fn to_json(&self) -> Value {
        match self {
            AdapterSetup::Single(name) => json!({"type": "single", "children": [name]}),
            other => json!({
                "type": other.block_name(),
                "children": other.children().iter().map(Self::to_json).collect::<Vec<_>>(),
                "kwargs": {},
            }),
        }
    }

    fn block(kind: &str, children: Vec<AdapterSetup>) -> Option<Self> {
        Some(match kind {
            "Stack" => AdapterSetup::Stack(children),
            "Parallel" => AdapterSetup::Parallel(children),
            "Fuse" => AdapterSetup::Fuse(children),
            "Split" => AdapterSetup::Split(children),
            "BatchSplit" => AdapterSetup::BatchSplit(children),
            "Average" => AdapterSetup::Average(children),
            _ => return None,
        })
    }

    fn block_name(&self) -> &'static str {
        match self {
            AdapterSetup::Single(_) => "single",
            AdapterSetup::Stack(_) => "Stack",
            AdapterSetup::Parallel(_) => "Parallel",
            AdapterSetup::Fuse(_) => "Fuse",
            AdapterSetup::Split(_) => "Split",
            AdapterSetup::BatchSplit(_) => "BatchSplit",
            AdapterSetup::Average(_) => "Average",
        }
    }

    fn children(&self) -> &[AdapterSetup] {
        match self {
            AdapterSetup::Single(_) => &[],
            AdapterSetup::Stack(c)
            | AdapterSetup::Parallel(c)
            | AdapterSetup::Fuse(c)
            | AdapterSetup::Split(c)
            | AdapterSetup::BatchSplit(c)
            | AdapterSetup::Average(c) => c,
        }
    }

    /// Every adapter name in the setup, depth first.
    pub fn flatten(&self) -> Vec<&str> {
        match self {
            AdapterSetup::Single(name) => vec![name.as_str()],
            other => other.children().iter().flat_map(Self::flatten).collect(),
        }
    }

    /// The order in which adapters apply, for the setups this version executes: one adapter,
    /// or a `Stack` of single adapters.
    pub fn execution_stack(&self) -> Result<Vec<String>> {
        let not_yet = |block: &str| AdapterError::Setup {
            setup: self.to_string(),
            reason: format!("`{block}` blocks are not supported by this version yet (single adapters and Stack are)"),
        };
        match self {
            AdapterSetup::Single(name) => Ok(vec![name.clone()]),
            AdapterSetup::Stack(children) => children
                .iter()
                .map(|c| match c {
                    AdapterSetup::Single(name) => Ok(name.clone()),
                    other => Err(not_yet(&format!("{} inside Stack", other.block_name()))),
                })
                .collect(),
            other => Err(not_yet(other.block_name())),
        }
    }
}

impl fmt::Display for AdapterSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterSetup::Single(name) => f.write_str(name),
            other => {
                write!(f, "{}[", other.block_name())?;
                for (i, child) in other.children().iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{child}")?;
                }
                f.write_str("]")
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> AdapterError {
        AdapterError::Setup { setup: self.text.into(), reason: format!("{reason} at character {}", self.pos) }
    }

    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn node(&mut self) -> Result<AdapterSetup> {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.text[self.pos..];
        let len = rest.find(|c: char| matches!(c, '[' | ']' | ',') || c.is_whitespace()).unwrap_or(rest.len());
        let word = &rest[..len];
        // Quotes are allowed around names, as Python writes them in lists.
        let word_clean = word.trim_matches(|c| c == '\'' || c == '"');
        if word_clean.is_empty() {
            return Err(self.error("expected an adapter name or a block"));
        }
        self.pos += len;
        self.skip_ws();
        if !self.text[self.pos..].starts_with('[') {
            return Ok(AdapterSetup::Single(word_clean.to_string()));
        }
        self.pos += 1;
        let mut children = Vec::new();
        loop {
            children.push(self.node()?);
            self.skip_ws();
            match self.text[self.pos..].chars().next() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
        AdapterSetup::block(word, children).ok_or_else(|| {
            self.pos = start;
            self.error(&format!("unknown block `{word}`; blocks are Stack, Parallel, Fuse, Split, BatchSplit, Average"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_and_json_round_trip() {
        let setup = AdapterSetup::parse("Stack[a, Fuse[b, c]]").unwrap();
        assert_eq!(setup.to_string(), "Stack[a, Fuse[b, c]]");
        assert_eq!(AdapterSetup::from_json(&setup.to_json()).unwrap(), setup);
        assert_eq!(setup.flatten(), vec!["a", "b", "c"]);
        assert!(setup.execution_stack().unwrap_err().to_string().contains("Fuse"));
        assert_eq!(AdapterSetup::parse("Stack[a,b]").unwrap().execution_stack().unwrap(), vec!["a", "b"]);
        assert!(AdapterSetup::parse("Stak[a]").is_err());
        assert!(AdapterSetup::parse("Stack[a").is_err());
    }
}
