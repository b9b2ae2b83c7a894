//! One pass over the bytes that finds what the keyword automaton cannot: runs of digits (for
//! phone numbers, cards, SSNs, IBANs) and long runs of base64/hex characters (candidate encoded
//! segments). The text is read in 64-byte blocks turned into bit masks (one bit a byte) by
//! 16-byte vector comparisons (`wide`, which is SSE2 on x86-64 and NEON on AArch64, and plain
//! code elsewhere); a block without digits and without a long run costs a handful of bit
//! operations, so clean text goes by at close to memory speed. The same pass notes whether the
//! text holds a `%` or a `\\`, which start percent-encoded and escaped segments.

use aa_core::lanes::Lane;
use wide::i8x16;

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
    /// Whether the text holds a `%`.
    pub(crate) has_percent: bool,
    /// Whether the text holds a `\\`.
    pub(crate) has_backslash: bool,
}

/// The shortest run worth decoding: 16 base64 characters hold 12 bytes.
pub(crate) const MIN_ENCODED: usize = 16;
/// The fewest digits that can make a phone number.
pub(crate) const MIN_DIGITS: usize = 7;
/// The most separator characters allowed between two digits (`) ` in `(415) 555`).
const MAX_GAP: usize = 2;

/// Bytes per block: one bit each in a `u64` mask.
const BLOCK: usize = 64;

pub(crate) fn find(bytes: &[u8]) -> Runs {
    // Room for a run of each kind a block up front: growing the lists a push at a time cost
    // the clean corpus 1.2 % more instructions, the 4 KiB event 1.6 %.
    let mut runs = Runs {
        digits: Vec::with_capacity(bytes.len() / BLOCK),
        encoded: Vec::with_capacity(bytes.len() / BLOCK),
        ..Runs::default()
    };
    let mut finder = Finder::default();
    let (mut percents, mut backslashes) = (0u64, 0u64);
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut base = 0;
    for block in &mut blocks {
        if let Ok(block) = <&[u8; BLOCK]>::try_from(block) {
            let masks = masks(block, BLOCK);
            (percents, backslashes) = (percents | masks.percent, backslashes | masks.backslash);
            finder.block(bytes, base, masks, &mut runs);
        }
        base += BLOCK;
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        // Zero padding is neither a digit nor a base64 character, so it ends any open run.
        let mut padded = [0u8; BLOCK];
        for (to, from) in padded.iter_mut().zip(rest) {
            *to = *from;
        }
        let masks = masks(&padded, rest.len());
        (percents, backslashes) = (percents | masks.percent, backslashes | masks.backslash);
        finder.block(bytes, base, masks, &mut runs);
    }
    finder.finish(bytes, &mut runs);
    runs.has_percent = percents != 0;
    runs.has_backslash = backslashes != 0;
    runs
}

/// Which bytes of a block are base64 characters (either alphabet), which are digits or the
/// separators allowed between them, and which are `%` or `\\`.
#[derive(Debug, Clone, Copy)]
struct Masks {
    code: u64,
    digitish: u64,
    percent: u64,
    backslash: u64,
}

/// Sixteen bytes at a time: each comparison gives a lane of all ones or zeros, and the lanes'
/// top bits are gathered into sixteen bits of the mask. Only the lanes holding the first
/// `len` bytes are read: the rest of a padded block is zeros, in no class.
fn masks(block: &[u8; BLOCK], len: usize) -> Masks {
    let mut masks = Masks {
        code: 0,
        digitish: 0,
        percent: 0,
        backslash: 0,
    };
    let lanes = block
        .chunks_exact(16)
        .take(len.div_ceil(16))
        .filter_map(|c| <[u8; 16]>::try_from(c).ok());
    for (k, lane) in lanes.enumerate() {
        let lane = Lane::new(lane);
        let digit = lane.in_range(b'0', b'9');
        let letter = lane.in_range_ignoring_case(b'a', b'z');
        let (dash, slash) = (lane.is(b'-'), lane.is(b'/'));
        let code = digit | letter | dash | slash | lane.is(b'+') | lane.is(b'_');
        let digitish =
            digit | dash | slash | lane.is(b' ') | lane.is(b'.') | lane.is(b'(') | lane.is(b')');
        let bits = |lanes: i8x16| u64::from(Lane::bits(lanes)) << (16 * k);
        masks.code |= bits(code);
        masks.digitish |= bits(digitish);
        masks.percent |= bits(lane.is(b'%'));
        masks.backslash |= bits(lane.is(b'\\'));
    }
    masks
}

/// Bits below `n` (`n < 64`).
fn below(n: u32) -> u64 {
    (1u64 << n) - 1
}

/// Maximal runs of set bits across blocks, reported when at least `MIN` long.
#[derive(Debug, Default)]
struct Tracker<const MIN: usize> {
    /// Start of the run that reached the end of the previous block.
    open: Option<usize>,
}

impl<const MIN: usize> Tracker<MIN> {
    /// Bit `i` set when bits `i..i + MIN` of `mask` are all set: after each step, bit `i`
    /// says whether bits `i..i + len` are.
    fn long_run_starts(mask: u64) -> u64 {
        let (mut m, mut len) = (mask, 1);
        while len < MIN {
            let step = len.min(MIN - len);
            m &= m >> step;
            len += step;
        }
        m
    }

    fn block(&mut self, base: usize, mask: u64, found: &mut impl FnMut(usize, usize)) {
        let mut rest = mask;
        // The run that continues from the previous block.
        if let Some(start) = self.open {
            let ones = mask.trailing_ones();
            if ones == 64 {
                return;
            }
            Self::report(start, base + ones as usize, found);
            self.open = None;
            rest &= !below(ones);
        }
        // The run that reaches this block's end stays open.
        let top = rest.leading_ones();
        if top == 64 {
            self.open = Some(base);
            return;
        }
        if top > 0 {
            self.open = Some(base + 64 - top as usize);
            rest &= below(64 - top);
        }
        // Runs wholly inside the block that are long enough: each holds a long-run start.
        let mut long = Self::long_run_starts(rest);
        while long != 0 {
            let inside = long.trailing_zeros();
            let zeros_below = !rest & below(inside);
            let start = 64 - zeros_below.leading_zeros();
            let end = (!rest & !below(inside)).trailing_zeros();
            Self::report(base + start as usize, base + end as usize, found);
            long &= !below(end);
        }
    }

    fn finish(&mut self, len: usize, found: &mut impl FnMut(usize, usize)) {
        if let Some(start) = self.open.take() {
            Self::report(start, len, found);
        }
    }

    fn report(start: usize, end: usize, found: &mut impl FnMut(usize, usize)) {
        if end - start >= MIN {
            found(start, end);
        }
    }
}

/// The state carried from one block to the next: base64 runs, and runs of digits and
/// separators (which any digit run lies within).
#[derive(Debug, Default)]
struct Finder {
    code: Tracker<MIN_ENCODED>,
    digitish: Tracker<MIN_DIGITS>,
}

impl Finder {
    fn block(&mut self, bytes: &[u8], base: usize, masks: Masks, runs: &mut Runs) {
        self.code
            .block(base, masks.code, &mut |s, e| runs.encoded.push((s, e)));
        self.digitish.block(base, masks.digitish, &mut |s, e| {
            split_digits(bytes, s, e, &mut runs.digits)
        });
    }

    fn finish(&mut self, bytes: &[u8], runs: &mut Runs) {
        let len = bytes.len();
        self.code.finish(len, &mut |s, e| runs.encoded.push((s, e)));
        self.digitish
            .finish(len, &mut |s, e| split_digits(bytes, s, e, &mut runs.digits));
    }
}

/// Splits a run of digits and separators into digit runs: digits more than [`MAX_GAP`]
/// separators apart belong to different runs.
fn split_digits(bytes: &[u8], start: usize, end: usize, out: &mut Vec<DigitRun>) {
    let mut current: Option<DigitRun> = None;
    let flush = |run: Option<DigitRun>, out: &mut Vec<DigitRun>| {
        if let Some(run) = run.filter(|r| r.digits >= MIN_DIGITS) {
            out.push(run);
        }
    };
    let run = bytes.get(start..end).unwrap_or_default();
    for (at, b) in (start..).zip(run) {
        if !b.is_ascii_digit() {
            continue;
        }
        match current.as_mut() {
            Some(run) if at - run.end <= MAX_GAP => {
                run.end = at + 1;
                run.digits += 1;
            }
            _ => {
                flush(current.take(), out);
                current = Some(DigitRun {
                    start: at,
                    end: at + 1,
                    digits: 1,
                });
            }
        }
    }
    flush(current, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definitions, byte by byte: maximal base64 runs, and digits joined by at most
    /// [`MAX_GAP`] separators.
    fn reference(bytes: &[u8]) -> Runs {
        let mut runs = Runs::default();
        let is_code = |b: u8| b.is_ascii_alphanumeric() || b"+/-_".contains(&b);
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && is_code(bytes[i]) {
                i += 1;
            }
            if i - start >= MIN_ENCODED {
                runs.encoded.push((start, i));
            }
            i = i.max(start + 1);
        }
        let digits: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i].is_ascii_digit())
            .collect();
        let mut group: Vec<usize> = Vec::new();
        let flush = |group: &mut Vec<usize>, runs: &mut Runs| {
            if group.len() >= MIN_DIGITS {
                runs.digits.push(DigitRun {
                    start: group[0],
                    end: group[group.len() - 1] + 1,
                    digits: group.len(),
                });
            }
            group.clear();
        };
        for &d in &digits {
            if let Some(&last) = group.last() {
                let between = &bytes[last + 1..d];
                if between.len() > MAX_GAP || !between.iter().all(|b| b" -./()".contains(b)) {
                    flush(&mut group, &mut runs);
                }
            }
            group.push(d);
        }
        flush(&mut group, &mut runs);
        runs
    }

    proptest! {
        #[test]
        fn blocks_agree_with_the_definitions(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'a'), Just(b'7'), Just(b' '), Just(b'-'), Just(b'('), Just(b'='),
                    Just(b'+'), Just(0xC3u8), Just(b'z'), Just(b'Z'), Just(b'9'), Just(b'0'),
                    Just(b'%'), Just(b'\\'), Just(b'@'), Just(b'['), Just(b'`'), Just(b'{'), Just(b':'),
                    any::<u8>()
                ],
                0..400,
            )
        ) {
            let got = find(&bytes);
            let want = reference(&bytes);
            prop_assert_eq!(got.encoded, want.encoded);
            prop_assert_eq!(got.digits, want.digits);
            prop_assert_eq!(got.has_percent, bytes.contains(&b'%'));
            prop_assert_eq!(got.has_backslash, bytes.contains(&b'\\'));
        }
    }

    #[test]
    fn runs_cross_block_boundaries() {
        for len in [15, 16, 63, 64, 65, 127, 128, 129, 200] {
            for offset in [0, 1, 48, 63, 64] {
                let mut text = vec![b' '; offset];
                text.extend(std::iter::repeat_n(b'x', len));
                text.extend(b" tail");
                let want = reference(&text);
                assert_eq!(
                    find(&text).encoded,
                    want.encoded,
                    "len {len} offset {offset}"
                );
                let digits: Vec<u8> = text
                    .iter()
                    .map(|&b| if b == b'x' { b'5' } else { b })
                    .collect();
                assert_eq!(
                    find(&digits).digits,
                    reference(&digits).digits,
                    "len {len} offset {offset}"
                );
            }
        }
    }

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
