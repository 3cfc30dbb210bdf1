//! The `keyword` request classifier: tag → keywords, one automaton.
//!
//! docs/routing.md: "the system prompt and every message's text, lowercased, checked
//! for a substring match of any keyword of each tag". Instead of lowercasing
//! (a copy per request) and running one search per keyword, the snapshot
//! holds a single ASCII-case-insensitive automaton over all keywords of all
//! tags; each text span is walked once.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

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
    automaton: Option<AhoCorasick>,
    /// Pattern `p` belongs to the tags `pattern_tags[offsets[p]..offsets[p + 1]]`
    /// (a keyword listed under several tags is one pattern).
    offsets: Vec<u32>,
    pattern_tags: Vec<u32>,
}

impl KeywordClassifier {
    /// Builds the automaton from `(tag, keywords)` pairs in config order.
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

        let mut offsets = Vec::with_capacity(tags_of.len() + 1);
        let mut pattern_tags = Vec::with_capacity(tags_of.len());
        offsets.push(0u32);
        for owners in &tags_of {
            pattern_tags.extend_from_slice(owners);
            let end =
                u32::try_from(pattern_tags.len()).map_err(|_| "too many keywords".to_string())?;
            offsets.push(end);
        }

        let automaton = if patterns.is_empty() {
            None
        } else {
            // The crate picks a DFA for small keyword sets and a contiguous
            // NFA beyond (~100 keywords), which keeps memory sane at 10 000.
            let built = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(true)
                .build(&patterns)
                .map_err(|e| format!("cannot build the keyword automaton: {e}"))?;
            Some(built)
        };

        Ok(Self {
            tags: tags.iter().map(|(name, _)| name.clone()).collect(),
            automaton,
            offsets,
            pattern_tags,
        })
    }

    /// Heap bytes the automaton uses (benches report it).
    pub fn memory_usage(&self) -> usize {
        self.automaton.as_ref().map_or(0, AhoCorasick::memory_usage)
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
        let Some(automaton) = &self.automaton else {
            return;
        };
        let mut missing = self.tags.len().saturating_sub(hits.len());
        if missing == 0 || text.is_empty() {
            return;
        }
        // Standard match kind + overlapping iteration reports every keyword
        // occurrence, so no keyword hides an overlapping one of another tag.
        let Ok(matches) = automaton.try_find_overlapping_iter(text) else {
            return;
        };
        for m in matches {
            let p = m.pattern().as_usize();
            let (Some(&start), Some(&end)) = (self.offsets.get(p), self.offsets.get(p + 1)) else {
                continue;
            };
            let Some(owners) = self.pattern_tags.get(start as usize..end as usize) else {
                continue;
            };
            for &tag in owners {
                if hits.insert(tag as usize) {
                    missing = missing.saturating_sub(1);
                }
            }
            if missing == 0 {
                return;
            }
        }
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
}
