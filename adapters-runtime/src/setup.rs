//! Adapter setups: which adapters are active and how they compose, in the Python `repr` syntax
//! (`Stack[a, b]`) and the `adapter_setup.json` form.

use std::fmt;

use serde_json::{json, Value};

use crate::error::{AdapterError, Result};

/// A composition of adapters, as the Python library's composition blocks.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterSetup {
    Single(String),
    /// Adapters applied one after the other.
    Stack(Vec<AdapterSetup>),
    /// The same input through each child; the batch is replicated once per child (channel).
    Parallel(Vec<AdapterSetup>),
    /// AdapterFusion over the children (`name` defaults to the children's names joined by `,`).
    Fuse {
        children: Vec<AdapterSetup>,
        name: Option<String>,
    },
    /// Sequence positions split between the children (`splits` positions each).
    Split {
        children: Vec<AdapterSetup>,
        splits: Vec<usize>,
    },
    /// Batch rows split between the children (`batch_sizes` rows each).
    BatchSplit {
        children: Vec<AdapterSetup>,
        batch_sizes: Vec<usize>,
    },
    /// The children's outputs averaged with `weights` (normalised to sum to 1 unless the setup
    /// says otherwise; see [`AdapterSetup::average`]).
    Average {
        children: Vec<AdapterSetup>,
        weights: Vec<f64>,
    },
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

/// The block kinds, for nesting rules and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Single,
    Stack,
    Parallel,
    Fuse,
    Split,
    BatchSplit,
    Average,
}

impl BlockKind {
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Single => "str",
            BlockKind::Stack => "Stack",
            BlockKind::Parallel => "Parallel",
            BlockKind::Fuse => "Fuse",
            BlockKind::Split => "Split",
            BlockKind::BatchSplit => "BatchSplit",
            BlockKind::Average => "Average",
        }
    }

    /// What each block may contain: the Python library's `ALLOWED_NESTINGS`.
    pub fn allowed_children(self) -> &'static [BlockKind] {
        use BlockKind::*;
        match self {
            Single => &[],
            Stack => &[Single, Fuse, Split, Parallel, BatchSplit, Average],
            Fuse => &[Single, Stack],
            Split => &[Single, Split, Stack, BatchSplit, Average],
            Parallel => &[Single, Stack, BatchSplit, Average],
            BatchSplit => &[Single, Stack, Split, BatchSplit, Average],
            Average => &[Single, Stack, Split, BatchSplit],
        }
    }
}

fn names(kinds: &[BlockKind]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

impl AdapterSetup {
    /// `Stack[a, b]` of single adapters.
    pub fn stack<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        AdapterSetup::Stack(names.into_iter().map(|n| AdapterSetup::Single(n.into())).collect())
    }

    /// `Parallel[a, b]` of single adapters.
    pub fn parallel<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        AdapterSetup::Parallel(names.into_iter().map(|n| AdapterSetup::Single(n.into())).collect())
    }

    /// `Average[...]` with weights normalised to sum to 1 (Python's default) or taken as given;
    /// without weights, `1 / N` each.
    pub fn average(children: Vec<AdapterSetup>, weights: Option<Vec<f64>>, normalize: bool) -> Self {
        let n = children.len().max(1);
        let weights = match weights {
            None => vec![1.0 / n as f64; children.len()],
            Some(w) if normalize => {
                let sum: f64 = w.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                w.iter().map(|x| x / sum).collect()
            }
            Some(w) => w,
        };
        AdapterSetup::Average { children, weights }
    }

    pub fn kind(&self) -> BlockKind {
        match self {
            AdapterSetup::Single(_) => BlockKind::Single,
            AdapterSetup::Stack(_) => BlockKind::Stack,
            AdapterSetup::Parallel(_) => BlockKind::Parallel,
            AdapterSetup::Fuse { .. } => BlockKind::Fuse,
            AdapterSetup::Split { .. } => BlockKind::Split,
            AdapterSetup::BatchSplit { .. } => BlockKind::BatchSplit,
            AdapterSetup::Average { .. } => BlockKind::Average,
        }
    }

    /// Parses the Python repr syntax: `a`, `Stack[a, b]`, `Parallel[a, Stack[b, c]]`. Python's
    /// repr leaves out block arguments; here they may follow the children:
    /// `BatchSplit[a, b, batch_sizes=[2, 2]]`, `Split[a, b, splits=[4, 5]]`,
    /// `Average[a, b, weights=[0.3, 0.7]]`, `Fuse[a, b, name=ab]`.
    ///
    /// ```
    /// use adapters_runtime::AdapterSetup;
    /// let setup = AdapterSetup::parse("Stack[lang, task]").unwrap();
    /// assert_eq!(setup.to_string(), "Stack[lang, task]");
    /// let split = AdapterSetup::parse("BatchSplit[a, b, batch_sizes=[1, 3]]").unwrap();
    /// assert_eq!(split.to_string(), "BatchSplit[a, b, batch_sizes=[1, 3]]");
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

    /// Reads the `adapter_setup.json` form: `{"type": "Stack", "children": [...], "kwargs": {...}}`,
    /// or the whole file Python's `save_adapter_setup` writes (`{"adapter_setup": {...},
    /// "head_setup": ..., "version": ...}`).
    pub fn from_json(value: &Value) -> Result<Self> {
        if let Some(inner) = value.get("adapter_setup") {
            return Self::from_json(inner);
        }
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
        let kwargs: Vec<(String, Value)> =
            value.get("kwargs").and_then(Value::as_object).map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        Self::block(kind, children, kwargs).map_err(|e| match e {
            AdapterError::Setup { reason, .. } => bad(&reason),
            other => other,
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            AdapterSetup::Single(name) => json!({"type": "single", "children": [name]}),
            other => {
                let mut kwargs = serde_json::Map::new();
                for (k, v) in other.kwargs() {
                    kwargs.insert(k.to_string(), v);
                }
                json!({
                    "type": other.kind().name(),
                    "children": other.children().iter().map(Self::to_json).collect::<Vec<_>>(),
                    "kwargs": kwargs,
                })
            }
        }
    }

    /// The block arguments as Python's `_get_save_kwargs` writes them.
    fn kwargs(&self) -> Vec<(&'static str, Value)> {
        match self {
            AdapterSetup::Split { splits, .. } => vec![("splits", json!(splits))],
            AdapterSetup::BatchSplit { batch_sizes, .. } => vec![("batch_sizes", json!(batch_sizes))],
            AdapterSetup::Average { weights, .. } => vec![("weights", json!(weights))],
            AdapterSetup::Fuse { name: Some(name), .. } => vec![("name", json!(name))],
            _ => Vec::new(),
        }
    }

    /// A block from its kind, children and keyword arguments; a broken rule is a `Setup` error
    /// naming the block (callers add where it was written).
    fn block(kind: &str, children: Vec<AdapterSetup>, kwargs: Vec<(String, Value)>) -> Result<Self> {
        let rule = |reason: String| AdapterError::Setup { setup: kind.to_string(), reason };
        let n = children.len();
        // The keyword arguments each block's Python constructor takes (an unknown one is a
        // TypeError there).
        let allowed: &[&str] = match kind {
            "Fuse" => &["name"],
            "Split" => &["splits"],
            "BatchSplit" => &["batch_sizes"],
            "Average" => &["weights", "normalize_weights"],
            _ => &[],
        };
        if let Some((key, _)) = kwargs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(rule(match allowed {
                [] => format!("{kind} takes no argument `{key}`"),
                _ => format!("{kind} takes no argument `{key}`; it takes {}", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")),
            }));
        }
        if n == 0 {
            return Err(rule(format!("{kind} needs at least one child")));
        }
        let get = |key: &str| kwargs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let sizes = |v: Value, key: &str| -> Result<Vec<usize>> {
            match v {
                Value::Number(x) => x.as_u64().map(|x| vec![x as usize; n]).ok_or_else(|| rule(format!("`{key}` must be non-negative integers"))),
                Value::Array(items) => {
                    items.iter().map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| rule(format!("`{key}` must be non-negative integers")))).collect()
                }
                _ => Err(rule(format!("`{key}` must be an integer or a list of integers"))),
            }
        };
        let check_len = |v: &[usize], key: &str| -> Result<()> {
            if v.len() == n {
                Ok(())
            } else {
                Err(rule(format!("`{key}` has {} entries for {n} children", v.len())))
            }
        };
        Ok(match kind {
            "Stack" => AdapterSetup::Stack(children),
            "Parallel" => AdapterSetup::Parallel(children),
            "Fuse" => AdapterSetup::Fuse { children, name: get("name").and_then(|v| v.as_str().map(String::from)) },
            "Split" => {
                let splits = sizes(get("splits").ok_or_else(|| rule("Split needs `splits` (positions per child)".into()))?, "splits")?;
                check_len(&splits, "splits")?;
                AdapterSetup::Split { children, splits }
            }
            "BatchSplit" => {
                let batch_sizes = sizes(get("batch_sizes").ok_or_else(|| rule("BatchSplit needs `batch_sizes` (rows per child)".into()))?, "batch_sizes")?;
                check_len(&batch_sizes, "batch_sizes")?;
                AdapterSetup::BatchSplit { children, batch_sizes }
            }
            "Average" => {
                let weights = match get("weights") {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(items)) => {
                        Some(items.iter().map(|x| x.as_f64().ok_or_else(|| rule("`weights` must be numbers".into()))).collect::<Result<Vec<f64>>>()?)
                    }
                    Some(_) => return Err(rule("`weights` must be a list of numbers".into())),
                };
                if let Some(w) = &weights {
                    if w.len() != n {
                        return Err(rule(format!("`weights` has {} entries for {n} children", w.len())));
                    }
                }
                let normalize = get("normalize_weights").and_then(|v| v.as_bool()).unwrap_or(true);
                AdapterSetup::average(children, weights, normalize)
            }
            other => return Err(rule(format!("unknown block `{other}`; blocks are Stack, Parallel, Fuse, Split, BatchSplit, Average"))),
        })
    }

    pub fn children(&self) -> &[AdapterSetup] {
        match self {
            AdapterSetup::Single(_) => &[],
            AdapterSetup::Stack(c) | AdapterSetup::Parallel(c) => c,
            AdapterSetup::Fuse { children, .. }
            | AdapterSetup::Split { children, .. }
            | AdapterSetup::BatchSplit { children, .. }
            | AdapterSetup::Average { children, .. } => children,
        }
    }

    /// Every adapter name in the setup, depth first.
    pub fn flatten(&self) -> Vec<&str> {
        match self {
            AdapterSetup::Single(name) => vec![name.as_str()],
            other => other.children().iter().flat_map(Self::flatten).collect(),
        }
    }

    /// Whether any adapter of the setup satisfies `f` (no allocation: slots ask this on every
    /// forward).
    pub fn any_adapter(&self, f: &impl Fn(&str) -> bool) -> bool {
        match self {
            AdapterSetup::Single(name) => f(name),
            other => other.children().iter().any(|c| c.any_adapter(f)),
        }
    }

    /// The first adapter (Python's `first()`): its `pre_forward` opens a block.
    pub fn first(&self) -> Option<&str> {
        match self {
            AdapterSetup::Single(name) => Some(name),
            other => other.children().first().and_then(Self::first),
        }
    }

    /// The last adapter (Python's `last()`): the head a setup activates, a Fuse's query adapter.
    pub fn last(&self) -> Option<&str> {
        match self {
            AdapterSetup::Single(name) => Some(name),
            other => other.children().last().and_then(Self::last),
        }
    }

    /// The name of a Fuse block's fusion layer: its `name`, else the children's last adapters
    /// joined by `,` (`a,b`).
    pub fn fusion_name(&self) -> Option<String> {
        match self {
            AdapterSetup::Fuse { name: Some(name), .. } => Some(name.clone()),
            AdapterSetup::Fuse { children, .. } => Some(children.iter().filter_map(Self::last).collect::<Vec<_>>().join(",")),
            _ => None,
        }
    }

    /// How many copies of the batch the setup runs (Python's `parallel_channels`): the number
    /// of children of a Parallel block, 1 without one.
    pub fn parallel_channels(&self) -> usize {
        match self {
            AdapterSetup::Single(_) => 1,
            AdapterSetup::Parallel(c) => c.len().max(c.iter().map(Self::parallel_channels).max().unwrap_or(1)),
            other => other.children().iter().map(Self::parallel_channels).max().unwrap_or(1),
        }
    }

    /// Checks the Python library's composition rules: which block may contain which
    /// (`ALLOWED_NESTINGS`), and depth (below the second level only Stack blocks and names).
    /// The error names the rule that is broken.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(0)
    }

    fn validate_at(&self, level: usize) -> Result<()> {
        let kind = self.kind();
        if level > 1 && !matches!(kind, BlockKind::Single | BlockKind::Stack) {
            return Err(AdapterError::Setup {
                setup: self.to_string(),
                reason: format!(
                    "the setup is too deep: a {} block cannot sit at nesting level {level} (below level 1 only Stack blocks and adapter names)",
                    kind.name()
                ),
            });
        }
        if kind != BlockKind::Single && self.children().is_empty() {
            return Err(AdapterError::Setup { setup: self.to_string(), reason: format!("a {} block needs at least one child", kind.name()) });
        }
        for child in self.children() {
            if !kind.allowed_children().contains(&child.kind()) {
                return Err(AdapterError::Setup {
                    setup: self.to_string(),
                    reason: format!(
                        "cannot nest {} inside {}; {} may contain only: {}",
                        child.kind().name(),
                        kind.name(),
                        kind.name(),
                        names(kind.allowed_children())
                    ),
                });
            }
            child.validate_at(level + 1)?;
        }
        Ok(())
    }
}

impl fmt::Display for AdapterSetup {
    /// Python's repr, plus the block arguments Python's repr leaves out (so it parses back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterSetup::Single(name) => f.write_str(name),
            other => {
                write!(f, "{}[", other.kind().name())?;
                for (i, child) in other.children().iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{child}")?;
                }
                match other {
                    AdapterSetup::Split { splits, .. } => write!(f, ", splits={}", list(splits))?,
                    AdapterSetup::BatchSplit { batch_sizes, .. } => write!(f, ", batch_sizes={}", list(batch_sizes))?,
                    AdapterSetup::Average { weights, children } if weights.iter().any(|w| (w - 1.0 / children.len() as f64).abs() > 1e-12) => {
                        write!(f, ", weights={}", list(weights))?
                    }
                    AdapterSetup::Fuse { name: Some(name), .. } => write!(f, ", name={name}")?,
                    _ => {}
                }
                f.write_str("]")
            }
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    format!("[{}]", items.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
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
        let mut kwargs = Vec::new();
        loop {
            match self.keyword()? {
                Some(kv) => kwargs.push(kv),
                None if kwargs.is_empty() => children.push(self.node()?),
                None => return Err(self.error("block arguments (`key=value`) come after the children")),
            }
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
        AdapterSetup::block(word, children, kwargs).map_err(|e| {
            self.pos = start;
            match e {
                AdapterError::Setup { reason, .. } => self.error(&reason),
                other => other,
            }
        })
    }

    /// `key=value` where value is a number, a name or a `[...]` list of numbers.
    fn keyword(&mut self) -> Result<Option<(String, Value)>> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let Some(eq) = rest.find('=') else { return Ok(None) };
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Ok(None);
        }
        let key = key.to_string();
        self.pos += eq + 1;
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let (raw, len) = if rest.starts_with('[') {
            let end = rest.find(']').ok_or_else(|| self.error("unclosed `[` in a block argument"))?;
            (&rest[..=end], end + 1)
        } else {
            let end = rest.find([',', ']']).unwrap_or(rest.len());
            (rest[..end].trim(), end)
        };
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.trim_matches(|c| c == '\'' || c == '"').to_string()));
        self.pos += len;
        Ok(Some((key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_and_json_round_trip() {
        for text in [
            "Stack[a, Fuse[b, c]]",
            "Parallel[Stack[a, b], c]",
            "BatchSplit[a, b, batch_sizes=[1, 3]]",
            "Split[a, b, splits=[4, 5]]",
            "Average[a, b, weights=[0.25, 0.75]]",
            "Average[a, b]",
        ] {
            let setup = AdapterSetup::parse(text).unwrap();
            assert_eq!(setup.to_string(), text);
            assert_eq!(AdapterSetup::from_json(&setup.to_json()).unwrap(), setup, "{text}");
        }
        let setup = AdapterSetup::parse("Stack[a, Fuse[b, c]]").unwrap();
        assert_eq!(setup.flatten(), vec!["a", "b", "c"]);
        assert_eq!(setup.children()[1].fusion_name().unwrap(), "b,c");
        assert!(AdapterSetup::parse("Stak[a]").is_err());
        assert!(AdapterSetup::parse("Stack[a").is_err());
        assert!(AdapterSetup::parse("BatchSplit[a, b]").unwrap_err().to_string().contains("batch_sizes"));
        // Python normalises Average weights.
        let avg = AdapterSetup::parse("Average[a, b, weights=[1, 3]]").unwrap();
        assert_eq!(avg, AdapterSetup::Average { children: vec!["a".into(), "b".into()], weights: vec![0.25, 0.75] });
        assert_eq!(AdapterSetup::parse("Parallel[a, b, c]").unwrap().parallel_channels(), 3);
    }

    #[test]
    fn nesting_rules_follow_python() {
        for ok in ["a", "Stack[a, Parallel[b, c]]", "Parallel[Stack[a, b], c]", "BatchSplit[Stack[a, b], c, batch_sizes=[1, 1]]", "Fuse[a, Stack[b, c]]"] {
            let checked = AdapterSetup::parse(ok).and_then(|s| s.validate());
            assert!(checked.is_ok(), "{ok}: {checked:?}");
        }
        let err = AdapterSetup::parse("Stack[a, Stack[b, c]]").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("cannot nest Stack inside Stack"), "{err}");
        let err = AdapterSetup::parse("Fuse[a, Parallel[b, c]]").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("cannot nest Parallel inside Fuse; Fuse may contain only: str, Stack"), "{err}");
        let err = AdapterSetup::parse("Stack[a, Parallel[b, BatchSplit[c, a, batch_sizes=[1, 1]]]]").unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("too deep"), "{err}");
    }
}
