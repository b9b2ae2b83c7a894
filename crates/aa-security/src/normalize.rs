//! Normalisation before scanning, because the text may be crafted to slip past: compatibility
//! forms folded with NFKC (fullwidth `ｇｈｐ＿` → `ghp_`), invisible characters removed
//! (zero-width, bidi controls, soft hyphens, variation selectors, tags). The map back to the
//! original keeps every finding's span in original bytes.

use unicode_normalization::UnicodeNormalization;

/// Normalised text and, for each of its bytes, the offset of the original character it came
/// from.
#[derive(Debug)]
pub(crate) struct Normalized {
    pub(crate) text: String,
    origin: Vec<u32>,
    /// Whether invisible characters were met: the text then also reads with each one as a
    /// space ([`Invisible::Space`]).
    pub(crate) had_invisible: bool,
}

impl Normalized {
    /// The original byte range of normalised `start..end`.
    pub(crate) fn original_span(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let from = self
            .origin
            .get(start)
            .map_or(original.len(), |o| *o as usize);
        let to = match end.checked_sub(1).and_then(|last| self.origin.get(last)) {
            Some(&o) => {
                let o = o as usize;
                o + original
                    .get(o..)
                    .and_then(|s| s.chars().next())
                    .map_or(0, char::len_utf8)
            }
            None => from,
        };
        (from, to.max(from))
    }
}

/// Characters that render as nothing and are dropped before scanning: Unicode's
/// `Default_Ignorable_Code_Point` set, whole (the variation selectors and tags of the
/// supplementary planes included).
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Hyphens and dashes (U+2010 to U+2015) and the minus sign.
fn is_dash(c: char) -> bool {
    matches!(c, '\u{2010}'..='\u{2015}' | '\u{2212}')
}

/// What an invisible character becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invisible {
    /// Nothing: a secret split by one (`ghp_R8xk\u{200B}Q2m…`) reads whole.
    Drop,
    /// A space: one used as a separator (`token\u{200B}ghp_…`) still parts two words, which
    /// dropping it glues into one.
    Space,
}

/// `None` when normalising changes nothing (always for ASCII), so the common case costs one
/// `is_ascii` pass.
pub(crate) fn normalize(text: &str, invisible: Invisible) -> Option<Normalized> {
    if text.is_ascii() || u32::try_from(text.len()).is_err() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut had_invisible = false;
    for (offset, c) in text.char_indices() {
        let before = out.len();
        if is_invisible(c) {
            had_invisible = true;
            if invisible == Invisible::Space {
                out.push(' ');
                origin.resize(out.len(), offset as u32);
            }
            continue;
        }
        let next = text
            .get(offset + c.len_utf8()..)
            .and_then(|t| t.chars().next());
        if c.is_ascii() {
            out.push(c);
        } else if is_dash(c)
            && out.as_bytes().last().is_some_and(u8::is_ascii_digit)
            && next.is_some_and(|n| n.is_ascii_digit())
        {
            // Between digits a dash reads as `-`: an SSN or a card written with en dashes
            // (`123–45–6789`), which NFKC leaves as they are.
            out.push('-');
            changed = true;
        } else {
            out.extend(std::iter::once(c).nfkc());
            changed |= out.get(before..) != Some(c.encode_utf8(&mut [0; 4]));
        }
        origin.resize(out.len(), offset as u32);
    }
    (changed || had_invisible).then_some(Normalized {
        text: out,
        origin,
        had_invisible,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_already_normal_text_is_left_alone() {
        assert!(normalize("plain ascii", Invisible::Drop).is_none());
        assert!(normalize("grüße", Invisible::Drop).is_none());
    }

    #[test]
    fn a_dash_between_digits_reads_as_a_hyphen() {
        let original = "ssn 123\u{2013}45\u{2212}6789, pages 1\u{2013}x, a\u{2014}b";
        let n = normalize(original, Invisible::Drop).unwrap();
        assert_eq!(n.text, "ssn 123-45-6789, pages 1\u{2013}x, a\u{2014}b");
        let (from, to) = n.original_span(original, 4, 15);
        assert_eq!(&original[from..to], "123\u{2013}45\u{2212}6789");
    }

    #[test]
    fn fullwidth_and_invisible_characters_fold_away_and_map_back() {
        let original = "key=ｇｈｐ＿ab\u{200B}cd!";
        let n = normalize(original, Invisible::Drop).unwrap();
        assert_eq!(n.text, "key=ghp_abcd!");
        let start = n.text.find("ghp").unwrap();
        let end = n.text.find('!').unwrap();
        let (from, to) = n.original_span(original, start, end);
        assert_eq!(&original[from..to], "ｇｈｐ＿ab\u{200B}cd");
        assert!(n.had_invisible);
    }

    #[test]
    fn invisible_characters_can_read_as_spaces() {
        let original = "token\u{200B}ghp_x\u{E0020}y";
        let n = normalize(original, Invisible::Space).unwrap();
        assert_eq!(n.text, "token ghp_x y");
        let (from, to) = n.original_span(original, 6, n.text.len());
        assert_eq!(&original[from..to], "ghp_x\u{E0020}y");
        assert!(!normalize("grüße", Invisible::Space).is_some_and(|n| n.had_invisible));
    }
}
