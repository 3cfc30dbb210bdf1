//! The `refusal` response classifier (docs/routing.md): tags a reply `refusal` when
//! its text contains one of a list of phrases.
//!
//! Streamed replies arrive in chunks, and a phrase may straddle two of them.
//! Rather than keeping a tail of the previous chunk and searching it again,
//! the automaton's own state is carried from one chunk to the next in a
//! [`RefusalScan`]: the result is exactly that of scanning the concatenated
//! text, whatever the split, with no buffer and no allocation per stream.

use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

/// The tag a matching reply gets.
pub const REFUSAL_TAG: &str = "refusal";

/// The default phrase list; `phrases = [...]` in
/// `[response_classifiers.refusal]` replaces it.
pub const DEFAULT_REFUSAL_PHRASES: [&str; 8] = [
    "i cannot help with that",
    "i can't help with that",
    "i cannot assist with",
    "i can't assist with",
    "i'm not able to help with",
    "i am not able to help with",
    "as an ai language model",
    "i won't be able to help with that",
];

/// Distinguishes classifiers, so a [`RefusalScan`] started on one (say,
/// before a reload) is never stepped with another's state ids. Only touched
/// when a classifier is built, never per request.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Response phrase classifier.
///
/// Phrases are lowercased when built and matched ASCII-case-insensitively
/// (non-ASCII letters match only as their lowercase bytes). A phrase written
/// with a straight apostrophe (`'`) also matches the typographic one (`’`),
/// which models often emit. Empty phrases are ignored. Feed it decoded text
/// (not JSON-escaped bytes).
#[derive(Debug, Clone)]
pub struct RefusalClassifier {
    /// `None` when there is no (non-empty) phrase: nothing ever matches.
    dfa: Option<DFA>,
    start: StateID,
    id: u64,
}

/// Per-reply scan state: a few bytes, created per stream without allocating.
#[derive(Debug, Clone, Default)]
pub struct RefusalScan {
    /// Id of the classifier `state` belongs to; 0 = not started.
    owner: u64,
    state: StateID,
    matched: bool,
}

impl RefusalScan {
    pub const fn new() -> Self {
        Self {
            owner: 0,
            state: StateID::ZERO,
            matched: false,
        }
    }

    /// Whether a phrase has been seen so far.
    pub fn matched(&self) -> bool {
        self.matched
    }
}

impl RefusalClassifier {
    /// `phrases`: `None` = [`DEFAULT_REFUSAL_PHRASES`], `Some` replaces them.
    pub fn new(phrases: Option<&[String]>) -> Result<Self, String> {
        let mut patterns: Vec<String> = Vec::new();
        let mut add = |phrase: &str| {
            if phrase.is_empty() {
                return;
            }
            let lower = phrase.to_lowercase();
            let curly = lower
                .contains('\'')
                .then(|| lower.replace('\'', "\u{2019}"));
            for p in std::iter::once(lower).chain(curly) {
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        };
        match phrases {
            None => DEFAULT_REFUSAL_PHRASES.iter().for_each(|p| add(p)),
            Some(list) => list.iter().for_each(|p| add(p)),
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if patterns.is_empty() {
            return Ok(Self {
                dfa: None,
                start: StateID::ZERO,
                id,
            });
        }
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .prefilter(false)
            .build(&patterns)
            .map_err(|e| format!("cannot build the phrase automaton: {e}"))?;
        let start = dfa
            .start_state(Anchored::No)
            .map_err(|e| format!("phrase automaton: {e}"))?;
        Ok(Self {
            dfa: Some(dfa),
            start,
            id,
        })
    }

    /// Feeds the next chunk of a reply's text; returns whether a phrase has
    /// been seen in all the text fed so far (chunk boundaries do not matter).
    pub fn scan(&self, scan: &mut RefusalScan, chunk: &[u8]) -> bool {
        let Some(dfa) = &self.dfa else {
            return false;
        };
        if scan.matched {
            return true;
        }
        if scan.owner != self.id {
            scan.owner = self.id;
            scan.state = self.start;
        }
        let mut sid = scan.state;
        for &byte in chunk {
            sid = dfa.next_state(Anchored::No, sid, byte);
            if dfa.is_special(sid) && dfa.is_match(sid) {
                scan.matched = true;
                break;
            }
        }
        scan.state = sid;
        scan.matched
    }

    /// Whether a whole (non-streamed) text contains a phrase.
    pub fn is_match(&self, text: &[u8]) -> bool {
        self.scan(&mut RefusalScan::new(), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_phrases_match_case_insensitively() {
        let c = RefusalClassifier::new(None).unwrap();
        assert!(c.is_match(b"Sorry, I CAN'T HELP WITH THAT request."));
        assert!(c.is_match(b"As an AI language model, I..."));
        assert!(!c.is_match(b"Sure, here is the code."));
        assert!(!c.is_match(b""));
    }

    #[test]
    fn typographic_apostrophe_matches() {
        let c = RefusalClassifier::new(None).unwrap();
        assert!(c.is_match("I can\u{2019}t assist with that.".as_bytes()));
    }

    #[test]
    fn phrases_replace_the_defaults() {
        let c = RefusalClassifier::new(Some(&["Nope".to_string(), String::new()])).unwrap();
        assert!(c.is_match(b"nope, not today"));
        assert!(!c.is_match(b"I cannot help with that"));
        let none = RefusalClassifier::new(Some(&[])).unwrap();
        assert!(!none.is_match(b"I cannot help with that"));
        assert!(!none.scan(&mut RefusalScan::new(), b"anything"));
    }

    #[test]
    fn phrase_split_across_chunks_at_every_point() {
        let c = RefusalClassifier::new(None).unwrap();
        let text = b"Well... I'm not able to help with this one.";
        let end = text.len() - b" this one.".len();
        for split in 0..=text.len() {
            let mut scan = RefusalScan::new();
            let (a, b) = text.split_at(split);
            let first = c.scan(&mut scan, a);
            let second = c.scan(&mut scan, b);
            assert_eq!(first, split >= end, "split {split}");
            assert!(second, "split {split}");
            assert!(scan.matched());
        }
    }

    #[test]
    fn phrase_split_into_single_bytes() {
        let c = RefusalClassifier::new(None).unwrap();
        let mut scan = RefusalScan::new();
        let text = b"xx as an ai LANGUAGE model yy";
        let mut seen = false;
        for byte in text.chunks(1) {
            seen = c.scan(&mut scan, byte);
        }
        assert!(seen);

        let mut scan = RefusalScan::new();
        for part in [&b"i cannot help "[..], b"", b"you with that"] {
            assert!(!c.scan(&mut scan, part));
        }
    }

    #[test]
    fn scan_state_does_not_cross_classifiers() {
        let a = RefusalClassifier::new(Some(&["abcdef".to_string()])).unwrap();
        let b = RefusalClassifier::new(Some(&["def".to_string(), "zz".to_string()])).unwrap();
        let mut scan = RefusalScan::new();
        assert!(!a.scan(&mut scan, b"abc"));
        // A different classifier restarts from its own start state.
        assert!(!b.scan(&mut scan, b"de"));
        assert!(b.scan(&mut scan, b"f"));
    }
}
