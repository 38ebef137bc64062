//! Labelled text files: UTF-8 TSV with a `label<TAB>text` header, one example a line (the format
//! of `data/*/*.tsv`).

use std::path::Path;

use crate::error::{AdapterError, Result};

/// One example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub label: String,
    pub text: String,
}

/// The examples of one file, in file order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
}

impl Dataset {
    /// Reads a TSV file; a bad line is an error naming the file, the line and what is wrong.
    ///
    /// ```no_run
    /// let train = adapters_runtime::training::Dataset::read_tsv("data/mr/train.tsv".as_ref())?;
    /// println!("{} examples, labels {:?}", train.len(), train.labels());
    /// # Ok::<(), adapters_runtime::AdapterError>(())
    /// ```
    pub fn read_tsv(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AdapterError::io(path, e))?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| AdapterError::file(&origin, format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
        Self::parse(&text, &origin)
    }

    /// Parses TSV text (see [`Dataset::read_tsv`]); `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, header)) if header.trim_end_matches('\r') == "label\ttext" => {}
            Some((_, header)) => {
                return Err(AdapterError::file(
                    origin,
                    format!("line 1: the header must be `label<TAB>text`, found `{}`", header.chars().take(60).collect::<String>()),
                ))
            }
            None => return Err(AdapterError::file(origin, "is empty; expected a `label<TAB>text` header and examples")),
        }
        let mut examples = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                return Err(AdapterError::file(origin, format!("line {n}: empty line; every line is `label<TAB>text`")));
            }
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 2 {
                return Err(AdapterError::file(origin, format!("line {n}: expected 2 tab-separated fields (label, text), found {}", fields.len())));
            }
            let (label, text) = (fields[0].trim(), fields[1].trim());
            if label.is_empty() {
                return Err(AdapterError::file(origin, format!("line {n}: the label is empty")));
            }
            if text.is_empty() {
                return Err(AdapterError::file(origin, format!("line {n}: the text is empty")));
            }
            examples.push(Example { label: label.to_string(), text: text.to_string() });
        }
        if examples.is_empty() {
            return Err(AdapterError::file(origin, "holds a header but no examples"));
        }
        Ok(Dataset { examples })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The distinct labels, sorted: class `i` of a head trained on this set is `labels()[i]`.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.examples.iter().map(|e| e.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Label ids by `labels` (a head's label order); an unknown label is an error naming it.
    pub fn label_ids(&self, labels: &[String], origin: &str) -> Result<Vec<u32>> {
        self.examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                labels
                    .iter()
                    .position(|l| *l == e.label)
                    .map(|p| p as u32)
                    .ok_or_else(|| AdapterError::file(origin, format!("line {}: label `{}` is not one of the head's labels {:?}", i + 2, e.label, labels)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_lines() {
        let d = Dataset::parse("label\ttext\npositive\tgood film\nnegative\tbad\n", "x.tsv").unwrap();
        assert_eq!(d.labels(), vec!["negative", "positive"]);
        assert_eq!(d.label_ids(&d.labels(), "x.tsv").unwrap(), vec![1, 0]);
        let err = Dataset::parse("label\ttext\npositive\tgood\tfilm\n", "x.tsv").unwrap_err().to_string();
        assert!(err.contains("x.tsv: line 2: expected 2 tab-separated fields"), "{err}");
        let err = Dataset::parse("text\tlabel\n", "x.tsv").unwrap_err().to_string();
        assert!(err.contains("line 1: the header"), "{err}");
        let err = Dataset::parse("label\ttext\n\tno label\n", "x.tsv").unwrap_err().to_string();
        assert!(err.contains("line 2: the label is empty"), "{err}");
        let err = d.label_ids(&["negative".into()], "x.tsv").unwrap_err().to_string();
        assert!(err.contains("line 2: label `positive`"), "{err}");
    }
}
