//! "Did you mean" hints for misspelt keys.

pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().map(|c| (distance(word, c), *c)).filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1)).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

/// ` did you mean `x`?` or nothing; always followed by the list of what is allowed.
pub(crate) fn hint(word: &str, candidates: &[&str]) -> String {
    let near = nearest(word, candidates).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
    format!("{near} (allowed: {})", candidates.join(", "))
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
