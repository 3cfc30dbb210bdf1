//! Classifiers (docs/routing.md): request classifiers add tags before routing,
//! response classifiers tag the reply (also while it streams).
//!
//! - [`KeywordClassifier`] (`[classifiers.keyword]`): a filter over hashed
//!   text windows and a table of keyword heads, over every keyword of every
//!   tag, built once per config snapshot on the control thread, run once over
//!   each text span of a request. Its cost per byte barely grows with the
//!   number of keywords (see `keyword.rs`); hits land in a [`TagSet`] (a
//!   bitset, no heap for ≤ 64 tags).
//! - [`RefusalClassifier`] (`[response_classifiers.refusal]`): a phrase
//!   automaton whose search state is carried across the chunks of a streamed
//!   reply in a [`RefusalScan`] (a few bytes, no buffer, no allocation).
//!
//! Both match ASCII letters case-insensitively; patterns are lowercased when
//! built, so a non-ASCII letter only matches the bytes of its lowercase form
//! (see [`KeywordClassifier`]).

mod keyword;
mod refusal;

pub use keyword::{KeywordClassifier, TagSet, TagSetIter};
pub use refusal::{DEFAULT_REFUSAL_PHRASES, REFUSAL_TAG, RefusalClassifier, RefusalScan};
