//! "Did you mean" suggestions for misspelt keys and names.

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    let lower = word.to_ascii_lowercase();
    if let Some(c) = candidates
        .iter()
        .find(|c| c.len() >= 3 && lower.starts_with(&c.to_ascii_lowercase()))
    {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Formats `; did you mean "x"?` or nothing.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["allow", "deny_if", "requires_approval_if", "limit_per_hour"];
        assert_eq!(closest("alow", &keys), Some("allow"));
        assert_eq!(closest("deny-if", &keys), Some("deny_if"));
        assert_eq!(closest("limit_per_hr", &keys), Some("limit_per_hour"));
        assert_eq!(closest("frobnicate", &keys), None);
        assert_eq!(
            closest("specification", &["metadata", "spec"]),
            Some("spec")
        );
        assert_eq!(did_you_mean("x", &keys), "");
    }
}
