//! Which heads a forward runs, derived from the active adapter setup as Python's
//! `parse_heads_from_composition` derives it.

use crate::setup::AdapterSetup;

/// The active head(s).
#[derive(Clone, Debug, PartialEq)]
pub enum HeadSetup {
    /// One head over the whole batch.
    Single(String),
    /// One head per Parallel channel, each over its channel's rows.
    Parallel(Vec<String>),
    /// One head per BatchSplit part, each over its rows.
    BatchSplit { heads: Vec<String>, batch_sizes: Vec<usize> },
}

impl HeadSetup {
    /// The heads a setup selects: the last adapter of a Stack (or the name itself), the last
    /// adapter of each child of a final Parallel or BatchSplit block; `None` for other blocks.
    pub fn from_setup(setup: &AdapterSetup) -> Option<Self> {
        let last_block = match setup {
            AdapterSetup::Stack(children) => children.last()?,
            other => other,
        };
        let last_of = |c: &AdapterSetup| c.last().map(String::from);
        match last_block {
            AdapterSetup::Single(name) => Some(HeadSetup::Single(name.clone())),
            AdapterSetup::Parallel(children) => children.iter().map(last_of).collect::<Option<Vec<_>>>().map(HeadSetup::Parallel),
            AdapterSetup::BatchSplit { children, batch_sizes } => {
                children.iter().map(last_of).collect::<Option<Vec<_>>>().map(|heads| HeadSetup::BatchSplit { heads, batch_sizes: batch_sizes.clone() })
            }
            _ => None,
        }
    }

    /// The `head_setup` of Python's `adapter_setup.json`: a name, a list, or a BatchSplit dict.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            HeadSetup::Single(name) => serde_json::json!(name),
            HeadSetup::Parallel(heads) => serde_json::json!(heads),
            HeadSetup::BatchSplit { heads, batch_sizes } => {
                AdapterSetup::BatchSplit { children: heads.iter().map(|h| AdapterSetup::Single(h.clone())).collect(), batch_sizes: batch_sizes.clone() }
                    .to_json()
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        match self {
            HeadSetup::Single(name) => vec![name.as_str()],
            HeadSetup::Parallel(heads) | HeadSetup::BatchSplit { heads, .. } => heads.iter().map(String::as_str).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_follow_the_setup() {
        let parse = |s: &str| HeadSetup::from_setup(&AdapterSetup::parse(s).unwrap());
        assert_eq!(parse("a"), Some(HeadSetup::Single("a".into())));
        assert_eq!(parse("Stack[a, b]"), Some(HeadSetup::Single("b".into())));
        assert_eq!(parse("Stack[a, Parallel[b, Stack[c, d]]]"), Some(HeadSetup::Parallel(vec!["b".into(), "d".into()])));
        assert_eq!(parse("BatchSplit[a, b, batch_sizes=[1, 2]]"), Some(HeadSetup::BatchSplit { heads: vec!["a".into(), "b".into()], batch_sizes: vec![1, 2] }));
        assert_eq!(parse("Average[a, b]"), None);
    }
}
