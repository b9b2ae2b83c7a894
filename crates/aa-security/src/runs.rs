//! One pass over the bytes that finds what the keyword automaton cannot: runs of digits (for
//! phone numbers, cards, SSNs, IBANs) and long runs of base64/hex characters (candidate encoded
//! segments). The per-byte work is a table lookup and a few branch-free updates; only the end
//! of a qualifying run takes a branch.

/// A run of digits, possibly with single separators, at `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DigitRun {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) digits: usize,
}

/// What one pass found.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    pub(crate) digits: Vec<DigitRun>,
    /// `start..end` of runs of the base64 (standard or URL-safe) alphabet of at least
    /// [`MIN_ENCODED`] bytes.
    pub(crate) encoded: Vec<(usize, usize)>,
}

/// The shortest run worth decoding: 16 base64 characters hold 12 bytes.
pub(crate) const MIN_ENCODED: usize = 16;
/// The fewest digits that can make a phone number.
const MIN_DIGITS: usize = 7;
/// The most separator characters allowed between two digits (`) ` in `(415) 555`).
const MAX_GAP: usize = 2;

/// Byte classes, shared with `decode`: the base64 alphabets, hex digits, digits, and the
/// separators allowed inside a digit run.
pub(crate) const B64_STD: u8 = 1;
pub(crate) const B64_URL: u8 = 2;
pub(crate) const HEX: u8 = 4;
const DIGIT: u8 = 8;
const SEPARATOR: u8 = 16;
/// Either base64 alphabet.
const CODE: u8 = B64_STD | B64_URL;

pub(crate) static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        if alnum || c == b'+' || c == b'/' {
            t[b] |= B64_STD;
        }
        if alnum || c == b'-' || c == b'_' {
            t[b] |= B64_URL;
        }
        if c.is_ascii_hexdigit() {
            t[b] |= HEX;
        }
        if c.is_ascii_digit() {
            t[b] |= DIGIT;
        }
        if c == b' ' || c == b'-' || c == b'.' || c == b'/' || c == b'(' || c == b')' {
            t[b] |= SEPARATOR;
        }
        b += 1;
    }
    t
};

pub(crate) fn find(bytes: &[u8]) -> Runs {
    let mut runs = Runs::default();
    let mut code_len = 0usize;
    let (mut count, mut start, mut last) = (0usize, 0usize, 0usize);
    for (i, &b) in bytes.iter().enumerate() {
        let class = CLASS[usize::from(b)];
        let in_code = usize::from(class & CODE != 0);
        if in_code == 0 && code_len >= MIN_ENCODED {
            runs.encoded.push((i - code_len, i));
        }
        code_len = (code_len + 1) * in_code;
        // Most bytes are neither digits nor inside a digit run: one well-predicted test.
        if class & DIGIT == 0 && count == 0 {
            continue;
        }
        if class & DIGIT != 0 {
            start = if count == 0 { i } else { start };
            count += 1;
            last = i;
        } else if class & SEPARATOR == 0 || i - last > MAX_GAP {
            if count >= MIN_DIGITS {
                runs.digits.push(DigitRun {
                    start,
                    end: last + 1,
                    digits: count,
                });
            }
            count = 0;
        }
    }
    if code_len >= MIN_ENCODED {
        runs.encoded.push((bytes.len() - code_len, bytes.len()));
    }
    if count >= MIN_DIGITS {
        runs.digits.push(DigitRun {
            start,
            end: last + 1,
            digits: count,
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_digit_runs_and_encoded_runs() {
        let text =
            b"call +1 (415) 555-2671 now; id 12 34; blob aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ= end";
        let runs = find(text);
        assert_eq!(
            runs.digits,
            [DigitRun {
                start: 6,
                end: 22,
                digits: 11
            }]
        );
        assert_eq!(runs.encoded.len(), 1);
        let (s, e) = runs.encoded[0];
        assert_eq!(&text[s..e], b"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ");
        let tail = find(b"x 4111111111111111");
        assert_eq!(
            tail.digits,
            [DigitRun {
                start: 2,
                end: 18,
                digits: 16
            }]
        );
    }
}
