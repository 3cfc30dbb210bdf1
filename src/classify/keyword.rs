//! The `keyword` request classifier: tag → keywords, matched by a filter
//! over hashed text windows.
//!
//! docs/routing.md: "the system prompt and every message's text, lowercased, checked
//! for a substring match of any keyword of each tag". Instead of lowercasing
//! (a copy per request) and running one search per keyword, the snapshot
//! holds one matcher over all keywords of all tags; each text span is walked
//! once, and the work per byte depends little on the number of keywords.
//!
//! # How a span is matched
//!
//! Every keyword has a *key*: the low five bits of each of its first `width`
//! bytes, where `width` is 6 for keywords of 5 bytes and more, 4 for 3–4 bytes
//! and 2 for 1–2 bytes (the *tiers*). The low five bits of an ASCII letter do
//! not depend on its case, so keys need no case folding. A keyword one byte
//! shorter than its width (1, 3 or 5 bytes) is entered under all 32 values of
//! the missing byte.
//!
//! 1. **Filter** (per byte, the hot loop). At every position of the span, for
//!    each tier present (usually one or two), the 8-byte window there is
//!    masked to the tier's key, hashed (one multiplication) and tested against
//!    one bit of a bitset sized at 64 bits per key (4 KiB .. 256 KiB). Most
//!    positions stop here.
//! 2. **Head filter** (positions that pass). A second bitset, indexed like
//!    the first, holds one bit per key for its keyword's *head*: its first
//!    `len` bytes, `len` being its length clamped to its key width ..= 8
//!    (the key itself for a keyword shorter than its key). The bit is bits
//!    `8 * len - 6 .. 8 * len` of the head's five low bits per byte times a
//!    constant; the low bits of a product depend only on the low bytes, so
//!    one multiplication of the window gives its bit for every head length
//!    of the tier (6, 7 and 8 bytes at most), tested at once. This drops the
//!    positions where only the key matched (a shared prefix) without
//!    touching the table.
//! 3. **Table**. The window (ASCII-folded) is compared with the exact heads
//!    (first eight bytes) of the keywords of its key: four per 64-byte bucket,
//!    open addressing. A matching head is checked against the whole keyword
//!    (`eq_ignore_ascii_case`), and the keyword's tags are added.
//!
//! A longer key (6 bytes) keeps the filter selective when thousands of
//! keywords share prefixes; one probe per position for keywords of 5 bytes
//! and more keeps the loop short whatever their lengths.
//!
//! # Two scans: one position at a time, or in blocks
//!
//! A small matcher (fewer than 4,096 keys; 10 and 100 keywords are 10 and
//! 131) probes the filter and branches at every position: the few positions
//! that pass are confirmed at once, and the branch is predicted.
//!
//! A large matcher passes many positions: the bench's prompts, made of the
//! same syllables as its keywords, share a 6-byte key with one of 10,000
//! keywords about 30 times per KB (about 19 real shared prefixes, such as
//! "should" and the keyword "shouldaisbroustgru", and 11 false passes of a
//! filter filled to 1.4%). Branching on each cost a mispredicted branch,
//! resolved only when the filter word (128 KiB, in L2) arrived, and a head
//! filter load behind it. So a large matcher scans spans of 256 bytes and
//! more in blocks of 1,024 positions ([`Matcher::scan_blocks`]):
//!
//! 1. the 64 windows of a *group* are probed without a branch, their results
//!    collected as the bits of a `u64`;
//! 2. the set bits become the block's candidates (four per group without a
//!    branch, more in a loop);
//! 3. at the end of the block, the candidates go through the head filter
//!    without a branch, and the few left (4 per KB on the 1 MB prompt) are
//!    confirmed.
//!
//! The last 7–70 positions of a span, and shorter spans, are scanned one
//! position at a time: the block scan's fixed cost (a 2 KiB candidate array)
//! is not repaid on spans of ~80 bytes (measured).
//!
//! # Figures (measured)
//!
//! The Aho-Corasick automaton this replaced (ASCII case-insensitive,
//! overlapping) cost 1.8–1.9 µs per KB at 10 and 100 keywords, and 5.7 µs/KB
//! (1 KB prompt) to 10.7 µs/KB (1 MB) at 10,000 keywords: its 1.5 MiB NFA
//! missed the cache on most bytes (a DFA was 19 MiB).
//!
//! This matcher, `cargo bench --bench hot_path -- classify` (docs/benches.md
//! describes the inputs and has both sittings), µs per KB:
//!
//! | keywords | memory | 1 KB prompt | 1 MB prompt |
//! |---:|---:|---:|---:|
//! | 10 | 8 KiB | 0.96–1.03 | 0.83–0.84 |
//! | 100 | 21 KiB | 0.96–0.99 | 0.91 |
//! | 10,000 | 1,154 KiB | 1.46–1.56 | 1.28–1.29 |
//!
//! The block scan took the 1 MB prompt at 10,000 keywords from 1.59–1.62 to
//! 1.28–1.29 µs/KB; 10 and 100 keywords are unchanged (the same loop as
//! before). 10,000 keywords cost 1.53–1.55× the 10-keyword figure on the 1
//! MB prompt, and 1.41–1.63× on the 1 KB one (1.53× in the quietest run).
//!
//! What still grows with the number of keywords (breakdown measured in a
//! scratch harness, 10,000 keywords):
//!
//! - the filter: 128 KiB, out of L1, so most probes are L2 loads (+0.1
//!   µs/KB with every later stage removed);
//! - the candidates: the head filter and the blocks' bookkeeping cost
//!   0.2–0.3 µs/KB, and the table lookups of those left (4 per KB at 1 MB, 8
//!   at 1 KB) about 0.1–0.2: a cache miss on the bucket, more on a hit;
//! - on the bench's 1 KB prompt, scanned again and again, the branch
//!   predictor learns where the one-at-a-time loop's positions pass, so that
//!   loop costs no more there than the block scan (1.46 µs/KB either way);
//!   on 1 KB slices of the 1 MB prompt, each scanned once, the block scan
//!   was 10–15% cheaper.
//!
//! Measured and not taken: a two-bit filter (blocked Bloom) removes most
//! false passes but costs ~70% more per byte at every size; a 256 KiB filter
//! (half the false passes) or a 64 KiB one (in L1 more often) were no faster;
//! keys spread over 7–8 bytes (fewer shared prefixes) doubled the filter and
//! the table and were no faster; storing each candidate position in the
//! probe loop (instead of a bit) cost 10–20% more at every size; two
//! head-filter bits per key (fewer table lookups) cost as much in the head
//! filter as they saved.

use std::collections::HashMap;

/// Request keyword classifier, built once per config snapshot.
///
/// Matching rules:
/// - a tag is hit when any of its keywords occurs as a substring of a scanned
///   span (the system prompt, or one message's text);
/// - ASCII letters match case-insensitively;
/// - keywords are lowercased (Unicode `to_lowercase`) when built; the text
///   is not lowercased (that would copy it), only ASCII letters are folded
///   while matching. A non-ASCII letter therefore matches only as the bytes
///   of its lowercase form: the keyword `"Été"` matches `"un été"`, not
///   `"UN ÉTÉ"`;
/// - empty keywords are ignored; a keyword listed under several tags hits
///   all of them;
/// - matching is overlapping, so a keyword is never hidden by another
///   keyword overlapping it (`"ab"` and `"bc"` both occur in `"abc"`).
#[derive(Debug, Clone)]
pub struct KeywordClassifier {
    tags: Vec<String>,
    /// `None` when no tag has a non-empty keyword.
    matcher: Option<Matcher>,
}

impl KeywordClassifier {
    /// Builds the matcher from `(tag, keywords)` pairs in config order.
    /// The tag index used by [`TagSet`] is the position in `tags`.
    pub fn new(tags: &[(String, Vec<String>)]) -> Result<Self, String> {
        if u32::try_from(tags.len()).is_err() {
            return Err("too many tags".to_string());
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut tags_of: Vec<Vec<u32>> = Vec::new();
        for (tag_index, (_, keywords)) in tags.iter().enumerate() {
            let tag_index = tag_index as u32; // checked above
            for keyword in keywords {
                if keyword.is_empty() {
                    continue;
                }
                let lower = keyword.to_lowercase();
                let id = match index.get(&lower) {
                    Some(&id) => id,
                    None => {
                        index.insert(lower.clone(), patterns.len());
                        patterns.push(lower);
                        tags_of.push(Vec::new());
                        patterns.len() - 1
                    }
                };
                let owners = &mut tags_of[id];
                if !owners.contains(&tag_index) {
                    owners.push(tag_index);
                }
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(Matcher::new(&patterns, &tags_of)?)
        };
        Ok(Self {
            tags: tags.iter().map(|(name, _)| name.clone()).collect(),
            matcher,
        })
    }

    /// Heap bytes the matcher uses: filters, table and keyword bytes (benches
    /// report it).
    pub fn memory_usage(&self) -> usize {
        self.matcher.as_ref().map_or(0, Matcher::memory_usage)
    }

    /// Tag names in config order; a [`TagSet`] index is a position here.
    pub fn tag_names(&self) -> &[String] {
        &self.tags
    }

    /// Names of the tags in `hits`, in config order.
    pub fn names<'s>(&'s self, hits: &'s TagSet) -> impl Iterator<Item = &'s str> + 's {
        hits.iter()
            .filter_map(|i| self.tags.get(i).map(String::as_str))
    }

    /// Scans one text span (the system prompt, or one message's text) and
    /// adds the tags whose keywords occur in it to `hits`. Call once per
    /// span, with the same `hits`, so a keyword never matches across two
    /// spans. Returns early once every tag is hit.
    pub fn scan(&self, text: &[u8], hits: &mut TagSet) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        let missing = self.tags.len().saturating_sub(hits.len());
        if missing == 0 || text.is_empty() {
            return;
        }
        let mut found = Found { hits, missing };
        let found = &mut found;
        if matcher.blocks && text.len() >= BLOCK_SCAN_BYTES {
            match matcher.classes.len() {
                1 => matcher.scan_large::<1>(text, found),
                2 => matcher.scan_large::<2>(text, found),
                _ => matcher.scan_large::<3>(text, found),
            }
        } else {
            match matcher.classes.len() {
                1 => matcher.scan::<1>(text, found),
                2 => matcher.scan::<2>(text, found),
                _ => matcher.scan::<3>(text, found),
            }
        }
    }
}

/// Low five bits of each byte: the part of an ASCII letter that does not
/// depend on its case (`A` = 0x41, `a` = 0x61).
const LOW5: u64 = 0x1f1f_1f1f_1f1f_1f1f;

/// Key width (bytes) of each tier; see [`tier`].
const KEY_WIDTHS: [usize; 3] = [2, 4, 6];

/// Hash multipliers (odd, random), one per tier.
const MULTIPLIERS: [u64; 3] = [
    0xf2a7_4de4_52e6_b439,
    0x6513_270e_269e_0d37,
    0xd23f_0824_128b_2f33,
];
/// Hash multiplier of keyword heads (odd, random).
const HEAD_MULTIPLIER: u64 = 0x9531_985d_5d9d_c9f9;

/// Filter bits per key: about 1 false pass in 64 per probe when full.
const FILTER_BITS_PER_KEY: usize = 64;
/// log2 of the filter's bits: 4 KiB (always in L1) to 256 KiB.
const FILTER_LOG2: (u32, u32) = (15, 21);

/// Matchers with at least this many keys scan spans of `BLOCK_SCAN_BYTES`
/// and more in blocks ([`Matcher::scan_blocks`]); others probe and branch at
/// every position ([`Matcher::scan_each`]), which costs less while few
/// positions pass (see the module doc).
const BLOCK_SCAN_KEYS: usize = 4096;
/// Shorter spans do not repay the block scan's fixed cost (its 2 KiB
/// candidate array, a block's bookkeeping).
const BLOCK_SCAN_BYTES: usize = 256;
/// Windows per group: the filter results of a group are the bits of a `u64`.
const GROUP: usize = 64;
/// Windows per block: the candidates of a block are checked together. Their
/// offsets in the block fit a `u16`.
const BLOCK: usize = 1024;
/// Candidates taken from a group without a branch per candidate; more take a
/// loop.
const FAST: usize = 4;

/// The tier of a keyword of `len` bytes: 1–2, 3–4, 5 and more.
fn tier(len: usize) -> usize {
    match len {
        0..=2 => 0,
        3..=4 => 1,
        _ => 2,
    }
}

/// All keywords, as filters and a table (see the module doc).
#[derive(Debug, Clone)]
struct Matcher {
    /// One filter probe per tier present, in tier order.
    classes: Vec<Class>,
    /// At least `BLOCK_SCAN_KEYS` keys: spans of `BLOCK_SCAN_BYTES` and more
    /// are scanned in blocks ([`Matcher::scan_large`]).
    blocks: bool,
    /// Bit `hash >> 58` of word `hash >> 32` (masked) is set for the hash of
    /// every key.
    filter: Vec<u64>,
    /// Same words as `filter`: one bit per key, [`head_bit`] of its head.
    heads_filter: Vec<u64>,
    /// For each class: [`head_shift`] of each head length of its keys (6, 7
    /// and 8 at most), repeated to fill the array. Not in [`Class`]: a larger
    /// `Class` made the scan loop keep fewer values in registers (measured).
    head_shifts: [[u32; 3]; 3],
    /// Keyword heads by key: a key's home bucket is `hash >> bucket_shift`;
    /// at most half the slots are used.
    buckets: Vec<Bucket>,
    bucket_shift: u32,
    /// Bit `b`: a key went past bucket `b` (full) to the next one.
    overflow: Vec<u64>,
    /// The pattern of each bucket slot (`bucket * 4 + slot`).
    entries: Vec<u32>,
    /// Pattern `p` is `keywords[starts[p]..starts[p + 1]]`, and belongs to the
    /// tags `pattern_tags[tag_at[p]..tag_at[p + 1]]` (a keyword listed under
    /// several tags is one pattern).
    keywords: Vec<u8>,
    starts: Vec<u32>,
    tag_at: Vec<u32>,
    pattern_tags: Vec<u32>,
}

/// A filter probe: the key of the window at a position is `window & mask`.
#[derive(Debug, Clone, Copy)]
struct Class {
    mask: u64,
    multiplier: u64,
}

impl Class {
    #[inline(always)]
    fn hash(&self, window: u64) -> u64 {
        (window & self.mask).wrapping_mul(self.multiplier)
    }
}

/// The bits a keyword head starting at `window` would have set in its
/// `heads_filter` word: one per head length of a class (`shifts`).
#[inline(always)]
fn head_probe(shifts: &[u32; 3], window: u64) -> u64 {
    let product = (window & LOW5).wrapping_mul(HEAD_MULTIPLIER);
    let mut probe = 0;
    for &shift in shifts {
        probe |= head_bit(product, shift);
    }
    probe
}

/// Four keyword heads (first eight bytes, little-endian, zero-padded): an
/// ASCII-folded window `w` matches slot `s` when `w & masks[s] == heads[s]`.
/// One cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    heads: [u64; 4],
    masks: [u64; 4],
}

impl Bucket {
    /// Empty slots match no window (`w & 0 != u64::MAX`); slots fill in order.
    const EMPTY: Bucket = Bucket {
        heads: [u64::MAX; 4],
        masks: [0; 4],
    };
}

/// Tags hit so far in one [`KeywordClassifier::scan`].
struct Found<'h> {
    hits: &'h mut TagSet,
    /// Tags not hit yet; the scan stops at 0.
    missing: usize,
}

/// Word index of a hash in `filter` and `heads_filter` (before masking).
#[inline(always)]
fn filter_word(hash: u64) -> usize {
    (hash >> 32) as usize
}

/// A keyword's *head* is its first `len` bytes, `len` = its length clamped
/// to its key width .. 8 (a keyword shorter than its key: the key). Its bit
/// is bits `8 * len - 6 .. 8 * len` of `product`, the head's five low bits of
/// each byte times `HEAD_MULTIPLIER`. Those low bits of a product depend only
/// on the first `len` bytes, so one product of a window gives the bit for
/// every head length.
#[inline(always)]
fn head_bit(product: u64, shift: u32) -> u64 {
    1 << (product >> shift & 63)
}

/// The `shift` of [`head_bit`] for a head of `len` bytes (2 ..= 8).
fn head_shift(len: usize) -> u32 {
    8 * len as u32 - 6
}

/// The window at `p`: eight bytes, zero-padded past the end.
#[inline(always)]
fn window(text: &[u8], p: usize) -> u64 {
    let rest = text.get(p..).unwrap_or_default();
    match rest.first_chunk::<8>() {
        Some(&bytes) => u64::from_le_bytes(bytes),
        None => word(rest),
    }
}

/// Mask of the first `n` bytes of a little-endian word.
fn first_bytes(n: usize) -> u64 {
    match n {
        0 => 0,
        8.. => u64::MAX,
        n => u64::MAX >> (8 * (8 - n)),
    }
}

/// The first (up to) eight bytes as a little-endian word, zero-padded.
fn word(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .enumerate()
        .fold(0, |w, (i, &b)| w | u64::from(b) << (8 * i))
}

/// ASCII uppercase letters of every byte to lowercase (SWAR; other bytes,
/// non-ASCII included, unchanged).
fn fold_ascii(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let seven = w & (0x7f * ONES);
    let at_least_a = seven.wrapping_add((0x80 - u64::from(b'A')) * ONES);
    let above_z = seven.wrapping_add((0x7f - u64::from(b'Z')) * ONES);
    let upper = at_least_a & !above_z & !w & (0x80 * ONES);
    w | upper >> 2
}

impl Matcher {
    /// `patterns`: distinct, lowercased, non-empty keywords; `tags_of[p]`:
    /// the tags of pattern `p`.
    fn new(patterns: &[String], tags_of: &[Vec<u32>]) -> Result<Self, String> {
        let too_many = |_| "too many keywords".to_string();
        let mut tag_at = Vec::with_capacity(tags_of.len() + 1);
        let mut pattern_tags = Vec::with_capacity(tags_of.len());
        tag_at.push(0u32);
        for owners in tags_of {
            pattern_tags.extend_from_slice(owners);
            tag_at.push(u32::try_from(pattern_tags.len()).map_err(too_many)?);
        }

        let mut present = [false; 3];
        for p in patterns {
            present[tier(p.len())] = true;
        }
        let mut class_of = [0; 3];
        let mut classes = Vec::new();
        for (t, &width) in KEY_WIDTHS.iter().enumerate() {
            if present[t] {
                class_of[t] = classes.len();
                classes.push(Class {
                    mask: LOW5 & first_bytes(width),
                    multiplier: MULTIPLIERS[t],
                });
            }
        }

        // Every key: (hash, head bit, head, head mask, pattern).
        let mut keys: Vec<(u64, u64, u64, u64, u32)> = Vec::with_capacity(patterns.len());
        let mut head_lens: [Vec<usize>; 3] = Default::default();
        let mut keywords = Vec::new();
        let mut starts = Vec::with_capacity(patterns.len() + 1);
        starts.push(0u32);
        for (id, p) in patterns.iter().enumerate() {
            let id = u32::try_from(id).map_err(too_many)?;
            let bytes = p.as_bytes();
            let t = tier(bytes.len());
            let (class, width) = (classes[class_of[t]], KEY_WIDTHS[t]);
            let head = word(bytes);
            let mask = first_bytes(bytes.len());
            let head_len = bytes.len().clamp(width, 8);
            if !head_lens[t].contains(&head_len) {
                head_lens[t].push(head_len);
            }
            let shift = head_shift(head_len);
            // A keyword shorter than its key (1, 3 or 5 bytes): every value of
            // the next byte's five low bits; its head is the key.
            let known = bytes.len().min(width);
            for v in 0..1u64 << (5 * (width - known)) {
                let key = head & class.mask | v << (8 * known);
                let head_key = if known < width {
                    key
                } else {
                    head & LOW5 & mask
                };
                let bit = head_bit(head_key.wrapping_mul(HEAD_MULTIPLIER), shift);
                keys.push((class.hash(key), bit, head, mask, id));
            }
            keywords.extend_from_slice(bytes);
            starts.push(u32::try_from(keywords.len()).map_err(too_many)?);
        }

        let mut head_shifts = [[0; 3]; 3];
        for (t, lens) in head_lens.iter().enumerate() {
            if let Some(shifts) = head_shifts.get_mut(class_of[t]).filter(|_| present[t]) {
                for (i, shift) in shifts.iter_mut().enumerate() {
                    *shift = head_shift(lens.get(i).or(lens.first()).copied().unwrap_or(2));
                }
            }
        }

        let filter_log2 = (keys.len() * FILTER_BITS_PER_KEY)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(FILTER_LOG2.0, FILTER_LOG2.1);
        let mut filter = vec![0u64; 1 << (filter_log2 - 6)];
        let mut heads_filter = vec![0u64; filter.len()];
        let word_mask = filter.len() - 1;
        // At least two slots per key, and two buckets.
        let buckets_log2 = keys
            .len()
            .div_ceil(2)
            .next_power_of_two()
            .max(2)
            .trailing_zeros();
        let bucket_shift = 64 - buckets_log2;
        let mut buckets = vec![Bucket::EMPTY; 1 << buckets_log2];
        let mut overflow = vec![0u64; buckets.len().div_ceil(64)];
        let mut entries = vec![u32::MAX; buckets.len() * 4];
        let bucket_mask = buckets.len() - 1;
        let blocks = keys.len() >= BLOCK_SCAN_KEYS;
        for (hash, head_bit, head, mask, id) in keys {
            let w = filter_word(hash) & word_mask;
            filter[w] |= 1 << (hash >> 58);
            heads_filter[w] |= head_bit;
            let mut b = (hash >> bucket_shift) as usize;
            for _ in 0..buckets.len() {
                let bucket = &mut buckets[b];
                if let Some(s) = bucket.masks.iter().position(|&m| m == 0) {
                    bucket.heads[s] = head;
                    bucket.masks[s] = mask;
                    entries[b * 4 + s] = id;
                    break;
                }
                overflow[b / 64] |= 1 << (b % 64);
                b = (b + 1) & bucket_mask;
            }
        }

        Ok(Self {
            classes,
            blocks,
            filter,
            heads_filter,
            head_shifts,
            buckets,
            bucket_shift,
            overflow,
            entries,
            keywords,
            starts,
            tag_at,
            pattern_tags,
        })
    }

    fn memory_usage(&self) -> usize {
        use std::mem::size_of;
        self.classes.capacity() * size_of::<Class>()
            + (self.filter.capacity() + self.heads_filter.capacity() + self.overflow.capacity())
                * size_of::<u64>()
            + self.buckets.capacity() * size_of::<Bucket>()
            + self.keywords.capacity()
            + (self.entries.capacity()
                + self.starts.capacity()
                + self.tag_at.capacity()
                + self.pattern_tags.capacity())
                * size_of::<u32>()
    }

    /// Probes the filter with the `N` classes at every position of `text`,
    /// and confirms the positions that pass: a branch per position, taken
    /// rarely when the matcher is small.
    fn scan<const N: usize>(&self, text: &[u8], found: &mut Found<'_>) {
        if let Some(classes) = self.classes.first_chunk::<N>() {
            self.scan_each(classes, text, found);
        }
    }

    /// [`Matcher::scan`] for large matchers: [`Matcher::scan_blocks`], then
    /// the last positions (fewer than 71) one at a time. A span's tail is
    /// scanned as a span of its own: a keyword found at a position only
    /// reads the bytes after it. Out of line: [`Matcher::scan`]'s loop keeps
    /// more of its values in registers when this is not in the same function
    /// (measured).
    #[inline(never)]
    fn scan_large<const N: usize>(&self, text: &[u8], found: &mut Found<'_>) {
        if let Some(classes) = self.classes.first_chunk::<N>()
            && let Some(end) = self.scan_blocks(classes, text, found)
        {
            self.scan_each(classes, text.get(end..).unwrap_or_default(), found);
        }
    }

    /// The loop of [`Matcher::scan`].
    #[inline(always)]
    fn scan_each<const N: usize>(&self, classes: &[Class; N], text: &[u8], found: &mut Found<'_>) {
        // Copied out of `self`, so the probe constants can stay in registers.
        let classes = *classes;
        let filter = self.filter.as_slice();
        let word_mask = filter.len() - 1;
        let passes = |window: u64| {
            let mut any = false;
            for c in &classes {
                let hash = c.hash(window);
                any |= filter[filter_word(hash) & word_mask] >> (hash >> 58) & 1 != 0;
            }
            any
        };
        for (p, window) in text.windows(8).enumerate() {
            let Some(&bytes) = window.first_chunk::<8>() else {
                break;
            };
            let w = u64::from_le_bytes(bytes);
            if passes(w) && self.confirm(text, p, w, found) {
                return;
            }
        }
        // The last seven positions (or all, in a shorter span): the window
        // runs past the end, zero-padded.
        for p in text.len().saturating_sub(7)..text.len() {
            let w = word(text.get(p..).unwrap_or_default());
            if passes(w) && self.confirm(text, p, w, found) {
                return;
            }
        }
    }

    /// The groups of `text` (64 windows and the 7 bytes after them), in
    /// blocks of 16 groups, without a branch per position:
    ///
    /// 1. every window of a group is probed, the results collected as the
    ///    bits of a `u64` ([`Matcher::filter_group`]);
    /// 2. the windows that pass become the block's candidates (offsets);
    /// 3. at the end of the block, the candidates that also pass the head
    ///    filter are kept ([`Matcher::heads_block`]), and confirmed.
    ///
    /// Returns the first position not scanned (fewer than 71 bytes are
    /// left), or `None` once every tag is hit.
    #[inline(always)]
    fn scan_blocks<const N: usize>(
        &self,
        classes: &[Class; N],
        text: &[u8],
        found: &mut Found<'_>,
    ) -> Option<usize> {
        // One more slot: past the last candidate, a full block still writes
        // (and does not count) one.
        let mut candidates = [0u16; BLOCK + 1];
        let mut start = 0;
        while text.len() - start >= GROUP + 7 {
            let block_start = start;
            let mut n = 0;
            while start - block_start < BLOCK {
                let Some(group) = text
                    .get(start..)
                    .and_then(|t| t.first_chunk::<{ GROUP + 7 }>())
                else {
                    break;
                };
                // Bit 63 - i: window `start + i`.
                let mut passed = self.filter_group(classes, group);
                if passed != 0 {
                    let last = start - block_start + GROUP - 1;
                    // Branch-free: most groups have 0–4 candidates. Once
                    // `passed` is empty, the slot after the last candidate is
                    // written and not counted.
                    for _ in 0..FAST {
                        let i = last.wrapping_sub(passed.trailing_zeros() as usize);
                        candidates[n.min(BLOCK)] = i as u16;
                        n += usize::from(passed != 0);
                        passed &= passed.wrapping_sub(1);
                    }
                    while passed != 0 {
                        candidates[n.min(BLOCK)] = (last - passed.trailing_zeros() as usize) as u16;
                        n += 1;
                        passed &= passed - 1;
                    }
                }
                start += GROUP;
            }
            let block = text.get(block_start..).unwrap_or_default();
            let kept = self.heads_block(classes, block, &mut candidates, n);
            for &i in candidates.get(..kept).unwrap_or_default() {
                let p = block_start + usize::from(i);
                if self.confirm(text, p, window(text, p), found) {
                    return None;
                }
            }
        }
        Some(start)
    }

    /// Probes the 64 windows of `group` (bit `63 - i`: the window at `i`
    /// passes), without a branch.
    #[inline(always)]
    fn filter_group<const N: usize>(&self, classes: &[Class; N], group: &[u8; GROUP + 7]) -> u64 {
        let filter = self.filter.as_slice();
        let word_mask = filter.len() - 1;
        let mut bits = 0u64;
        for i in 0..GROUP {
            let Some(&bytes) = group.get(i..).and_then(|t| t.first_chunk::<8>()) else {
                break;
            };
            let w = u64::from_le_bytes(bytes);
            let mut pass = 0;
            for c in classes {
                let hash = c.hash(w);
                pass |= filter[filter_word(hash) & word_mask] >> (hash >> 58) & 1;
            }
            bits = bits << 1 | pass;
        }
        bits
    }

    /// Keeps, in order, the first `n` candidates (offsets in `block`) whose
    /// window passes the head filter of some class; returns their number.
    /// Without a branch per candidate.
    #[inline(always)]
    fn heads_block<const N: usize>(
        &self,
        classes: &[Class; N],
        block: &[u8],
        candidates: &mut [u16; BLOCK + 1],
        n: usize,
    ) -> usize {
        let heads_filter = self.heads_filter.as_slice();
        let word_mask = heads_filter.len() - 1;
        let mut kept = 0;
        for k in 0..n.min(BLOCK) {
            let i = candidates[k];
            let w = window(block, usize::from(i));
            let mut pass = false;
            for (c, shifts) in classes.iter().zip(&self.head_shifts) {
                let heads = heads_filter[filter_word(c.hash(w)) & word_mask];
                pass |= heads & head_probe(shifts, w) != 0;
            }
            candidates[kept.min(BLOCK)] = i;
            kept += usize::from(pass);
        }
        kept
    }

    /// Finds the keywords at `p` (`w`: the window there) and adds their tags;
    /// true once every tag is hit. Out of line: the scan loop stays small.
    #[inline(never)]
    fn confirm(&self, text: &[u8], p: usize, w: u64, found: &mut Found<'_>) -> bool {
        let word_mask = self.filter.len() - 1;
        let bucket_mask = self.buckets.len() - 1;
        let folded = fold_ascii(w);
        for (c, shifts) in self.classes.iter().zip(&self.head_shifts) {
            let hash = c.hash(w);
            let heads = self
                .heads_filter
                .get(filter_word(hash) & word_mask)
                .copied()
                .unwrap_or(0);
            if heads & head_probe(shifts, w) == 0 {
                continue;
            }
            let mut b = (hash >> self.bucket_shift) as usize;
            for _ in 0..self.buckets.len() {
                let Some(bucket) = self.buckets.get(b) else {
                    break;
                };
                let mut hit = 0;
                for s in 0..4 {
                    hit |= u32::from(folded & bucket.masks[s] == bucket.heads[s]) << s;
                }
                if hit != 0 && self.verify(text, p, b * 4, hit, found) {
                    return true;
                }
                if self
                    .overflow
                    .get(b / 64)
                    .is_none_or(|o| o >> (b % 64) & 1 == 0)
                {
                    break;
                }
                b = (b + 1) & bucket_mask;
            }
        }
        false
    }

    /// The keywords of the slots `first + s` (each bit `s` of `hit`, their
    /// heads match at `p`): adds the tags of those that occur at `p`. True
    /// once every tag is hit.
    #[cold]
    #[inline(never)]
    fn verify(
        &self,
        text: &[u8],
        p: usize,
        first: usize,
        mut hit: u32,
        found: &mut Found<'_>,
    ) -> bool {
        while hit != 0 {
            let slot = first + hit.trailing_zeros() as usize;
            hit &= hit - 1;
            let Some(&id) = self.entries.get(slot) else {
                continue;
            };
            let pattern = id as usize;
            let keyword = self
                .starts
                .get(pattern..pattern + 2)
                .and_then(|r| self.keywords.get(r[0] as usize..r[1] as usize));
            let occurs = keyword.is_some_and(|k| {
                text.get(p..p + k.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(k))
            });
            if !occurs {
                continue;
            }
            let owners = self
                .tag_at
                .get(pattern..pattern + 2)
                .and_then(|r| self.pattern_tags.get(r[0] as usize..r[1] as usize))
                .unwrap_or_default();
            for &tag in owners {
                if found.hits.insert(tag as usize) {
                    found.missing = found.missing.saturating_sub(1);
                }
            }
            if found.missing == 0 {
                return true;
            }
        }
        false
    }
}

/// A set of tag indices: a bitset, inline for indices < 64 (no heap), a
/// growable tail beyond. [`TagSet::clear`] keeps the tail's capacity, so a
/// reused set stops allocating after the first request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagSet {
    low: u64,
    high: Vec<u64>,
    len: usize,
}

impl TagSet {
    pub const fn new() -> Self {
        Self {
            low: 0,
            high: Vec::new(),
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.low = 0;
        self.high.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }

    /// Adds `tag`; returns whether it was new.
    pub fn insert(&mut self, tag: usize) -> bool {
        let bit = 1u64 << (tag % 64);
        let word = if tag < 64 {
            &mut self.low
        } else {
            let i = tag / 64 - 1;
            if i >= self.high.len() {
                self.high.resize(i + 1, 0);
            }
            &mut self.high[i]
        };
        let new = *word & bit == 0;
        *word |= bit;
        self.len += usize::from(new);
        new
    }

    pub fn contains(&self, tag: usize) -> bool {
        let bit = 1u64 << (tag % 64);
        let word = if tag < 64 {
            Some(&self.low)
        } else {
            self.high.get(tag / 64 - 1)
        };
        word.is_some_and(|w| w & bit != 0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tag indices in ascending order, i.e. in tag config order.
    pub fn iter(&self) -> TagSetIter<'_> {
        TagSetIter {
            set: self,
            word_index: 0,
            bits: self.low,
        }
    }
}

impl<'s> IntoIterator for &'s TagSet {
    type Item = usize;
    type IntoIter = TagSetIter<'s>;

    fn into_iter(self) -> TagSetIter<'s> {
        self.iter()
    }
}

/// Iterator over a [`TagSet`], ascending.
#[derive(Debug, Clone)]
pub struct TagSetIter<'s> {
    set: &'s TagSet,
    /// 0 = `low`, i ≥ 1 = `high[i - 1]`.
    word_index: usize,
    /// Bits of the current word not yet yielded.
    bits: u64,
}

impl Iterator for TagSetIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.bits != 0 {
                let bit = self.bits.trailing_zeros() as usize;
                self.bits &= self.bits - 1;
                return Some(self.word_index * 64 + bit);
            }
            self.word_index += 1;
            self.bits = *self.set.high.get(self.word_index - 1)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(t, kws)| (t.to_string(), kws.iter().map(|k| k.to_string()).collect()))
            .collect()
    }

    /// The classifier of `spec` twice: scanning one position at a time, and
    /// in blocks (which `new` picks only for large matchers).
    fn both_scans(spec: &[(String, Vec<String>)]) -> [KeywordClassifier; 2] {
        let mut each = KeywordClassifier::new(spec).unwrap();
        let mut blocks = each.clone();
        each.matcher.iter_mut().for_each(|m| m.blocks = false);
        blocks.matcher.iter_mut().for_each(|m| m.blocks = true);
        [each, blocks]
    }

    fn classify(c: &KeywordClassifier, spans: &[&str]) -> Vec<String> {
        let mut hits = TagSet::new();
        for span in spans {
            c.scan(span.as_bytes(), &mut hits);
        }
        c.names(&hits).map(str::to_string).collect()
    }

    #[test]
    fn finds_overlapping_keywords_of_different_tags() {
        // Leftmost-first matching would report only "ab" in "abc" and
        // "import" in "important"; both tags must be found.
        let c = KeywordClassifier::new(&tags(&[("x", &["ab"]), ("y", &["bc"])])).unwrap();
        assert_eq!(classify(&c, &["abc"]), ["x", "y"]);

        let c = KeywordClassifier::new(&tags(&[("code", &["import"]), ("urgent", &["important"])]))
            .unwrap();
        assert_eq!(classify(&c, &["this is important"]), ["code", "urgent"]);

        // One keyword a prefix of another, and one inside another.
        let c = KeywordClassifier::new(&tags(&[
            ("a", &["photograph"]),
            ("b", &["photo"]),
            ("c", &["graph"]),
        ]))
        .unwrap();
        assert_eq!(classify(&c, &["a photograph"]), ["a", "b", "c"]);
    }

    #[test]
    fn ascii_case_insensitive_and_keywords_lowercased() {
        let c = KeywordClassifier::new(&tags(&[("vision", &["Screenshot"]), ("code", &["def "])]))
            .unwrap();
        assert_eq!(classify(&c, &["see this SCREENSHOT"]), ["vision"]);
        assert_eq!(classify(&c, &["DEF main():"]), ["code"]);
        assert_eq!(classify(&c, &["define"]), Vec::<String>::new());
    }

    #[test]
    fn non_ascii_matches_lowercased_bytes() {
        let c = KeywordClassifier::new(&tags(&[("fr", &["Été"])])).unwrap();
        assert_eq!(classify(&c, &["un été chaud"]), ["fr"]);
        assert_eq!(classify(&c, &["UN ÉTÉ"]), Vec::<String>::new());
    }

    #[test]
    fn dedupes_and_keeps_config_order() {
        let c = KeywordClassifier::new(&tags(&[
            ("first", &["zeta"]),
            ("second", &["alpha", "beta"]),
            ("third", &["alpha"]),
            ("unused", &["nothing-here"]),
        ]))
        .unwrap();
        // Text order is zeta-last, tag order wins; repeated hits are one tag.
        assert_eq!(
            classify(&c, &["alpha beta alpha", "ALPHA", "zeta"]),
            ["first", "second", "third"]
        );
        let mut hits = TagSet::new();
        c.scan(b"alpha alpha beta", &mut hits);
        assert_eq!(hits.len(), 2);
        assert_eq!(c.tag_names(), ["first", "second", "third", "unused"]);
    }

    #[test]
    fn duplicate_keyword_in_one_tag_and_across_case() {
        let c = KeywordClassifier::new(&tags(&[("t", &["Foo", "foo", "FOO"]), ("u", &["fOo"])]))
            .unwrap();
        assert_eq!(classify(&c, &["foo"]), ["t", "u"]);
    }

    #[test]
    fn spans_do_not_join() {
        let c = KeywordClassifier::new(&tags(&[("t", &["abcd"])])).unwrap();
        assert_eq!(classify(&c, &["ab", "cd"]), Vec::<String>::new());
    }

    #[test]
    fn empty_keywords_and_tags_are_ignored() {
        let c = KeywordClassifier::new(&tags(&[("t", &[""]), ("u", &[])])).unwrap();
        assert_eq!(classify(&c, &["anything"]), Vec::<String>::new());
        assert_eq!(c.tag_names().len(), 2);
        let c = KeywordClassifier::new(&[]).unwrap();
        assert_eq!(classify(&c, &["anything", ""]), Vec::<String>::new());
    }

    #[test]
    fn stops_once_every_tag_is_hit() {
        let c = KeywordClassifier::new(&tags(&[("t", &["a"]), ("u", &["b"])])).unwrap();
        let mut hits = TagSet::new();
        c.scan(b"ab", &mut hits);
        assert_eq!(hits.len(), 2);
        // Already complete: further scans change nothing.
        c.scan(b"abab", &mut hits);
        assert_eq!(hits.iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn ten_thousand_keywords_build_and_match() {
        let mut spec = Vec::new();
        for t in 0..100 {
            let keywords = (0..100).map(|k| format!("kw{t}x{k}y")).collect();
            spec.push((format!("tag{t}"), keywords));
        }
        let c = KeywordClassifier::new(&spec).unwrap();
        assert_eq!(c.tag_names().len(), 100);
        let mut hits = TagSet::new();
        c.scan(b"noise KW7X42Y noise kw99x0y", &mut hits);
        // 100 tags: indices beyond 63 live in the heap tail.
        assert_eq!(hits.iter().collect::<Vec<_>>(), [7, 99]);
        assert_eq!(c.names(&hits).collect::<Vec<_>>(), ["tag7", "tag99"]);
    }

    #[test]
    fn tag_set_basics() {
        let mut s = TagSet::new();
        assert!(s.is_empty());
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(200));
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 3, 63, 64, 200]);
        assert_eq!(s.len(), 5);
        assert!(s.contains(200) && s.contains(64) && !s.contains(65) && !s.contains(10_000));
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.iter().count(), 0);
        assert!(!s.contains(200));
        assert!(s.insert(200));
        assert_eq!((&s).into_iter().collect::<Vec<_>>(), [200]);
    }

    // ---- Edges of the filter: span ends, short spans, zero padding --------

    #[test]
    fn keywords_at_span_edges_and_in_short_spans() {
        // Every length around the key widths (2, 4, 6 bytes; 1, 3 and 5 are
        // entered under 32 keys) and the 8-byte heads.
        // Spans of 256 bytes and more go through the block scan (when forced).
        let letters = "abcdefghijklmnop";
        let pad = "-".repeat(300);
        for len in 1..=12 {
            let kw = &letters[..len];
            for c in both_scans(&tags(&[("t", &[kw])])) {
                let upper = kw.to_ascii_uppercase();
                for span in [
                    kw.to_string(),
                    upper.clone(),
                    format!("xx{kw}"),
                    format!("{kw}yy"),
                    format!("x{upper}y"),
                    format!("0123456789{kw}"),
                    format!("{upper}0123456789"),
                    format!("{pad}{kw}"),
                    format!("{upper}{pad}"),
                ] {
                    assert_eq!(classify(&c, &[&span]), ["t"], "{kw:?} in {span:?}");
                }
                // One byte short, at either end, or split over two spans.
                let (head, tail) = (&kw[..len - 1], &kw[1..]);
                for span in [
                    head,
                    tail,
                    &format!("xx{head}"),
                    &format!("{tail}yy"),
                    &format!("{pad}{head}"),
                    &format!("{tail}{pad}"),
                ] {
                    assert!(classify(&c, &[span]).is_empty(), "{kw:?} in {span:?}");
                }
                if len > 1 {
                    assert!(classify(&c, &[head, &kw[len - 1..]]).is_empty(), "{kw:?}");
                }
            }
        }
    }

    #[test]
    fn zero_padding_and_odd_bytes_never_match() {
        // Past the end of a span the window is zero-padded: a keyword ending
        // in NUL must not match a span that ends just before its NUL.
        let spec = tags(&[("nul", &["ab\0"]), ("long", &["abcdefgh\0"]), ("x", &["x"])]);
        let pad = "-".repeat(300);
        for c in both_scans(&spec) {
            for span in ["ab", "zab", "abcdefgh", "zzabcdefgh"] {
                assert!(classify(&c, &[span]).is_empty(), "{span:?}");
                assert!(
                    classify(&c, &[&format!("{pad}{span}")]).is_empty(),
                    "{span:?}"
                );
            }
            assert_eq!(classify(&c, &["zAB\0"]), ["nul"]);
            assert_eq!(classify(&c, &["zABCDEFGH\0"]), ["long"]);
            assert_eq!(classify(&c, &[&format!("{pad}AB\0{pad}")]), ["nul"]);
            // Bytes that are not UTF-8, or zeros: nothing matches (empty
            // table slots included).
            let mut hits = TagSet::new();
            for span in [
                &[0xff; 20][..],
                &[0; 20],
                &[0xff; 3],
                &[0; 300],
                &[0xff; 300],
            ] {
                c.scan(span, &mut hits);
            }
            assert!(hits.is_empty());
        }
    }

    #[test]
    fn only_ascii_letters_are_folded() {
        // Each pair differs by 0x20, the bit case folding flips, and has the
        // same five low bits (the filter's key): only the exact comparison
        // tells them apart.
        for (a, b) in [
            ('@', '`'),
            ('[', '{'),
            ('\\', '|'),
            (']', '}'),
            ('^', '~'),
            ('_', '\x7f'),
        ] {
            let (ka, kb) = (format!("x{a}y"), format!("x{b}y"));
            let c = KeywordClassifier::new(&tags(&[("a", &[ka.as_str()]), ("b", &[kb.as_str()])]))
                .unwrap();
            assert_eq!(classify(&c, &[&format!("-X{a}Y-")]), ["a"], "{a:?}");
            assert_eq!(classify(&c, &[&format!("-x{b}y-")]), ["b"], "{b:?}");
        }
        let c = KeywordClassifier::new(&tags(&[("z", &["z"]), ("a", &["a"])])).unwrap();
        assert_eq!(classify(&c, &["Z"]), ["z"]);
        assert_eq!(classify(&c, &["A"]), ["a"]);
        assert!(classify(&c, &["@[`{"]).is_empty());
    }

    // ---- Randomized equivalence with a straightforward reference ----------

    use crate::route::Rng;

    /// The matching rules, spelled out: keywords lowercased, each span
    /// ASCII-lowercased (a copy), then a substring search per keyword.
    fn reference(spec: &[(String, Vec<String>)], spans: &[Vec<u8>]) -> Vec<usize> {
        let spans: Vec<Vec<u8>> = spans.iter().map(|s| s.to_ascii_lowercase()).collect();
        let occurs = |keyword: &str| {
            let k = keyword.to_lowercase();
            let k = k.as_bytes();
            !k.is_empty() && spans.iter().any(|s| s.windows(k.len()).any(|w| w == k))
        };
        spec.iter()
            .enumerate()
            .filter(|(_, (_, keywords))| keywords.iter().any(|k| occurs(k)))
            .map(|(i, _)| i)
            .collect()
    }

    fn scan_spans(c: &KeywordClassifier, spans: &[Vec<u8>]) -> Vec<usize> {
        let mut hits = TagSet::new();
        for span in spans {
            c.scan(span, &mut hits);
        }
        hits.iter().collect()
    }

    /// Few distinct letters (keywords overlap and share prefixes), separators,
    /// a NUL, and non-ASCII letters in both cases.
    const PIECES: &[&str] = &[
        "a", "b", "c", "d", "e", "ab", "ba", "abc", " ", "-", ".", "\0", "é", "É", "été", "ü", "Z",
        "@", "`", "[", "{",
    ];

    fn random_case(rng: &mut Rng, s: &str) -> String {
        s.chars()
            .map(|ch| match rng.below(3) {
                0 => ch.to_ascii_uppercase(),
                1 => ch.to_ascii_lowercase(),
                _ => ch,
            })
            .collect()
    }

    /// A keyword of 1 to `max_len` bytes (cut at a char boundary).
    fn random_keyword(rng: &mut Rng, pieces: &[&str], max_len: usize) -> String {
        let len = 1 + rng.below(max_len);
        let mut k = String::new();
        while k.len() < len {
            k.push_str(pieces[rng.below(pieces.len())]);
        }
        let mut cut = len;
        while !k.is_char_boundary(cut) {
            cut += 1;
        }
        k.truncate(cut);
        random_case(rng, &k)
    }

    /// Up to `max_len` bytes: whole keywords and pieces of keywords in random
    /// ASCII case, and separators; sometimes cut at any byte.
    fn random_span(rng: &mut Rng, keywords: &[&String], max_len: usize) -> Vec<u8> {
        let target = rng.below(max_len + 1);
        let mut s = String::new();
        while s.len() < target {
            if keywords.is_empty() || rng.below(3) == 0 {
                s.push_str(PIECES[rng.below(PIECES.len())]);
                continue;
            }
            let chars: Vec<char> = keywords[rng.below(keywords.len())].chars().collect();
            let piece: String = if rng.below(2) == 0 {
                chars.iter().collect()
            } else {
                let from = rng.below(chars.len());
                let to = from + 1 + rng.below(chars.len() - from);
                chars[from..to].iter().collect()
            };
            s.push_str(&random_case(rng, &piece));
        }
        let mut bytes = s.into_bytes();
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        bytes
    }

    fn random_spec(
        rng: &mut Rng,
        tags: usize,
        per_tag: usize,
        max_len: usize,
    ) -> Vec<(String, Vec<String>)> {
        let mut spec: Vec<(String, Vec<String>)> = Vec::new();
        for t in 0..tags {
            let mut keywords = Vec::new();
            for _ in 0..rng.below(per_tag + 1) {
                let shared = spec.iter().flat_map(|(_, k)| k).count();
                keywords.push(match rng.below(10) {
                    // The same keyword under another tag, in another case.
                    0 if shared > 0 => {
                        let k = spec.iter().flat_map(|(_, k)| k).nth(rng.below(shared));
                        random_case(rng, k.map_or("", String::as_str))
                    }
                    1 => String::new(),
                    _ => random_keyword(rng, PIECES, max_len),
                });
            }
            spec.push((format!("t{t}"), keywords));
        }
        spec
    }

    #[test]
    fn random_keyword_sets_match_the_reference() {
        let mut rng = Rng::new(0x5eed_1234_abcd_0001);
        let mut hit_counts = 0;
        for round in 0..3000 {
            // Up to 70 tags: indices past 63 live in the heap tail.
            let n_tags = 1 + rng.below(if round % 10 == 0 { 70 } else { 8 });
            let spec = random_spec(&mut rng, n_tags, 5, 20);
            let c = KeywordClassifier::new(&spec).unwrap();
            let keywords: Vec<&String> = spec
                .iter()
                .flat_map(|(_, k)| k)
                .filter(|k| !k.is_empty())
                .collect();
            for _ in 0..4 {
                let n_spans = 1 + rng.below(3);
                let spans: Vec<Vec<u8>> = (0..n_spans)
                    .map(|_| random_span(&mut rng, &keywords, 40))
                    .collect();
                let want = reference(&spec, &spans);
                assert_eq!(
                    scan_spans(&c, &spans),
                    want,
                    "round {round}: {spec:?} {spans:?}"
                );
                hit_counts += want.len();
            }
        }
        // The generator makes both hits and misses.
        assert!(hit_counts > 3000, "{hit_counts}");
    }

    #[test]
    fn ten_thousand_random_keywords_match_the_reference() {
        let mut rng = Rng::new(0x5eed_1234_abcd_0002);
        // More letters than `PIECES`: 10,000 keywords of 1–20 bytes over 250
        // tags, mostly distinct, some shared, a few of 1–2 bytes.
        let letters: Vec<String> = (b'a'..=b'z')
            .map(|b| char::from(b).to_string())
            .chain(["é", "ü", " ", "-"].map(String::from))
            .collect();
        let pieces: Vec<&str> = letters.iter().map(String::as_str).collect();
        let spec: Vec<(String, Vec<String>)> = (0..250)
            .map(|t| {
                let keywords = (0..40)
                    .map(|_| {
                        let max_len = if rng.below(50) == 0 { 2 } else { 20 };
                        let k = random_keyword(&mut rng, &pieces, max_len);
                        // Ends as it starts: more overlaps between keywords.
                        let first = k.chars().next().unwrap_or('a');
                        if k.len() < 3 {
                            k
                        } else {
                            format!("{k}{first}")
                        }
                    })
                    .collect();
                (format!("t{t}"), keywords)
            })
            .collect();
        let c = KeywordClassifier::new(&spec).unwrap();
        assert!(c.memory_usage() > 0);
        // A matcher this large scans in blocks.
        assert!(c.matcher.as_ref().is_some_and(|m| m.blocks));
        let keywords: Vec<&String> = spec
            .iter()
            .flat_map(|(_, k)| k)
            .filter(|k| k.len() > 2)
            .collect();
        let scans = both_scans(&spec);
        for round in 0..6 {
            let spans: Vec<Vec<u8>> = (0..3)
                .map(|_| random_span(&mut rng, &keywords, 2500))
                .collect();
            let want = reference(&spec, &spans);
            assert!(
                !want.is_empty() && want.len() < spec.len(),
                "round {round}: {}",
                want.len()
            );
            for c in &scans {
                assert_eq!(scan_spans(c, &spans), want, "round {round}");
            }
        }
    }

    // ---- The block scan: groups, blocks, candidates ----------------------

    #[test]
    fn block_scan_finds_keywords_at_group_and_block_edges() {
        // Windows 63/64 end and start a group (64 windows), 1,023/1,024 a
        // block; spans from 256 bytes are scanned in blocks, a group needs 71
        // bytes, and a span's last 7–70 positions are scanned one at a time.
        let never = "zqzqzqzq";
        for kw in [
            "q",
            "ab",
            "abc",
            "abcde",
            "abcdef",
            "abcdefg",
            "abcdefghijk",
        ] {
            let [each, blocks] = both_scans(&tags(&[("t", &[kw]), ("never", &[never])]));
            for len in [
                70usize, 255, 256, 257, 262, 263, 264, 327, 328, 1094, 1095, 2200,
            ] {
                let mut at: Vec<usize> = vec![0, 1, 56, 57, 63, 64, 65, 70, 71, 127, 128];
                at.extend([1016, 1023, 1024, 1025, 1087, 1088, 2047, 2048]);
                at.extend((1..=8).map(|back| len.saturating_sub(kw.len() + back - 1)));
                for at in at.into_iter().filter(|&at| at + kw.len() <= len) {
                    let mut span = vec![b'x'; len];
                    span[at..at + kw.len()].copy_from_slice(kw.to_ascii_uppercase().as_bytes());
                    for c in [&each, &blocks] {
                        let mut hits = TagSet::new();
                        c.scan(&span, &mut hits);
                        assert_eq!(
                            hits.iter().collect::<Vec<_>>(),
                            [0],
                            "{kw:?} at {at} of {len}"
                        );
                    }
                    // Cut one byte short at the end of the span.
                    let cut = &span[..at + kw.len() - 1];
                    let mut hits = TagSet::new();
                    blocks.scan(cut, &mut hits);
                    assert!(hits.is_empty(), "{kw:?} at {at} of {}", cut.len());
                }
            }
        }
    }

    #[test]
    fn block_scan_with_a_candidate_at_every_position() {
        // Every window of "aaa…" passes the filter and the head filter of
        // "a" (more candidates per group than are taken without a branch, a
        // block full of candidates); "zz", at the end of a block or of the
        // span, must still be found, and "zzz" never.
        let spec = tags(&[("a", &["a"]), ("zz", &["zz"]), ("never", &["zzz"])]);
        let [_, blocks] = both_scans(&spec);
        for len in [256usize, 1095, 1100, 3000] {
            for at in [0, 62, 63, 64, 1022, 1023, 1024, len - 3, len - 2] {
                if at + 2 > len {
                    continue;
                }
                let mut span = vec![b'a'; len];
                span[at..at + 2].copy_from_slice(b"zz");
                let mut hits = TagSet::new();
                blocks.scan(&span, &mut hits);
                assert_eq!(
                    hits.iter().collect::<Vec<_>>(),
                    [0, 1],
                    "zz at {at} of {len}"
                );
            }
        }
    }

    #[test]
    fn block_scan_with_near_misses() {
        // Windows that share a keyword's key and head but not the whole
        // keyword, densely: every candidate reaches the table.
        let spec = tags(&[("t", &["abcdefghijk"]), ("u", &["abcdefghijx"])]);
        for c in both_scans(&spec) {
            let near = "abcdefghij-".repeat(300);
            assert!(classify(&c, &[&near]).is_empty());
            // The hit at every candidate of every block.
            for at in (0..300).map(|j| 11 * j) {
                let mut span = near.clone().into_bytes();
                span[at + 10] = b'K';
                let mut hits = TagSet::new();
                c.scan(&span, &mut hits);
                assert_eq!(hits.iter().collect::<Vec<_>>(), [0], "at {at}");
            }
        }
    }

    #[test]
    fn random_long_spans_match_the_reference_in_both_scans() {
        let mut rng = Rng::new(0x5eed_1234_abcd_0003);
        let mut hit_counts = 0;
        for round in 0..300 {
            let n_tags = 1 + rng.below(8);
            let spec = random_spec(&mut rng, n_tags, 6, 20);
            let keywords: Vec<&String> = spec
                .iter()
                .flat_map(|(_, k)| k)
                .filter(|k| !k.is_empty())
                .collect();
            let scans = both_scans(&spec);
            for _ in 0..2 {
                let n_spans = 1 + rng.below(2);
                let spans: Vec<Vec<u8>> = (0..n_spans)
                    .map(|_| random_span(&mut rng, &keywords, 2500))
                    .collect();
                let want = reference(&spec, &spans);
                for c in &scans {
                    assert_eq!(scan_spans(c, &spans), want, "round {round}: {spec:?}");
                }
                hit_counts += want.len();
            }
        }
        assert!(hit_counts > 300, "{hit_counts}");
    }
}
