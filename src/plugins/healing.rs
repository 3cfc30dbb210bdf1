//! The `response-healing` repair engine (`docs/plugins.md`): turns a model's "almost
//! JSON" reply into JSON, or says why it will not.
//!
//! [`heal`] answers one of four things about a reply's text ([`Healed`]):
//! it already parses, a repair parses, it is prose (leave it alone), or it
//! looks like JSON but no repair parses. [`heal_arguments`] does the same for
//! tool-call arguments, which must be a JSON object. "Parses" always means
//! `serde_json::from_str::<serde_json::Value>` accepts it, with serde_json's
//! default nesting limit (128): text nested deeper is never `Valid` and never
//! `Repaired`, so whatever reads the reply next can parse it too.
//!
//! # Where the JSON is taken from
//!
//! The repair runs on one candidate, chosen in this order:
//!
//! 1. the whole text, when (after leading whitespace) it starts like a JSON
//!    object or array: `{` followed by a key (`"`, `'`, a bare name and `:`)
//!    or `}`; `[` followed by a value or `]`; either followed by a comment
//!    or by the end of the text (a reply cut short);
//! 2. else the first markdown fence (```` ``` ````) whose language tag is
//!    empty or starts with `json` and whose body starts with `{` or `[`
//!    (fences tagged `python` and the like are code, not the answer);
//! 3. else the first `{`/`[` outside fences that starts like JSON (as in 1)
//!    *and* begins a line or follows a colon ("Here you go: {...}").
//!
//! No candidate: [`Healed::Prose`]. The repair consumes one JSON value from
//! the candidate and stops; what follows is dropped ("Hope it helps", the
//! closing fence) unless it starts another value (`{"a":1} {"b":2}`: two
//! answers, no choice is made, [`Healed::Unrepairable`]). Prose around a
//! value that keeps no string and no key (`[1] shows`, `[ ] todo`, `Values:
//! [1, 2]`) makes the whole text [`Healed::Prose`]: brackets in prose are
//! far more often citations and checkboxes than answers. A candidate from a
//! `json` fence needs no such evidence.
//!
//! # What is repaired
//!
//! Each kind has a test fixture below (input → exact output). The repair
//! keeps the text's own whitespace and layout; it only changes what must
//! change.
//!
//! - Markdown fences and prose around the value: dropped (see above).
//! - Trailing commas (`[1, 2,]`, `{"a": 1,}`) and repeated ones (`[1,,2]`):
//!   dropped.
//! - Truncation (the reply hit its token limit): an unterminated string is
//!   closed (a half escape such as `\` or `\u12` and a lone high surrogate at
//!   its end are dropped), and open arrays and objects are closed innermost
//!   first. What cannot be finished without inventing data is dropped with
//!   its key: a dangling `"key"` or `"key":`, a half literal (`tr`), a half
//!   number (`1.`, `2e`, `-`). Dropping rather than `null` never invents a
//!   value that a schema could reject as the wrong type. A complete-looking
//!   number at the cut (`12` that may have been `123`) is kept.
//! - A closer that skips open containers (`{"a": [1, 2}`): the skipped ones
//!   are closed first (`{"a": [1, 2]}`). A closer with nothing of its kind
//!   open is not repaired.
//! - Unquoted keys (`{a: 1}`, `{max-tokens: 1}`): quoted.
//! - Single-quoted strings and keys: requoted with `"` (inner `"` escaped,
//!   `\'` unescaped). A `'` inside one ends it only when a delimiter (`,` `:`
//!   `}` `]`, the end, a comment) follows; otherwise it is an apostrophe, so
//!   `'it's'` is `"it's"`; a doubled `''` inside is one apostrophe
//!   (`'it''s'` → `"it's"`). Double-quoted strings are copied as they are:
//!   an apostrophe in them is just a character.
//! - Raw control characters inside strings (a literal newline): escaped.
//!   An unknown escape (`\x`) keeps its backslash as a character (`\\x`).
//! - Python literals `True`, `False`, `None`: `true`, `false`, `null`.
//! - Comments `// …` and `/* … */`: removed.
//!
//! Not repaired (the answer is [`Healed::Unrepairable`] and the caller keeps
//! the text): missing commas or colons, unquoted string values, unescaped
//! `"` inside a double-quoted string, `NaN`/`Infinity`, hex numbers. Each of
//! these needs a guess about what the model meant.
//!
//! # Cost
//!
//! One pass over the text with an explicit stack (no recursion), so time is
//! linear and a megabyte of `[` cannot overflow the thread's stack; the
//! stack is refused past serde_json's nesting limit, which no answer could
//! pass anyway. No lookahead rescans text: each look past a quote or a
//! bracket stops at the first byte that is not whitespace or name.

use serde_json::Value;

/// What [`heal`] found out about a reply's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healed {
    /// The text already parses as JSON: leave it. Any JSON value counts,
    /// bare scalars included (`42`, `"hi"`, `null`): such a text is JSON as
    /// it is, and nothing would be changed anyway.
    Valid,
    /// The text did not parse; this repair of it does (and is itself
    /// [`Healed::Valid`]). Always an object or an array.
    Repaired(String),
    /// The text is prose, not JSON: leave it.
    Prose,
    /// The text looks like it holds JSON, but no repair parses: leave it.
    Unrepairable,
}

/// Heals one reply text (see the module doc for what is repaired and how
/// the JSON is found).
pub fn heal(text: &str) -> Healed {
    if parses(text) {
        return Healed::Valid;
    }
    let Some((candidate, origin)) = find_candidate(text) else {
        return Healed::Prose;
    };
    let Some(repair) = repair(candidate) else {
        return Healed::Unrepairable;
    };
    if repair.trailing == Trailing::Value {
        return Healed::Unrepairable;
    }
    let prose_around = match origin {
        Origin::Whole => repair.trailing == Trailing::Prose,
        Origin::Fenced => false,
        Origin::Embedded => true,
    };
    if prose_around && !repair.has_text {
        return Healed::Prose;
    }
    if parses(&repair.json) {
        Healed::Repaired(repair.json)
    } else {
        Healed::Unrepairable
    }
}

/// Heals one tool call's arguments, which are meant to be a JSON object.
///
/// `None` means "keep the original": it already parses (whatever its type —
/// only invalid text is touched), or no repair of it is a JSON object.
/// `Some(object)` is the repair. Empty (or all-whitespace) arguments, which
/// some models send for a function without parameters, become `{}`.
pub fn heal_arguments(args: &str) -> Option<String> {
    if args.trim().is_empty() {
        return Some("{}".to_owned());
    }
    match heal(args) {
        Healed::Repaired(json) if json.starts_with('{') => Some(json),
        _ => None,
    }
}

/// Whether serde_json parses `text` as one JSON value (default depth limit).
fn parses(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok()
}

// ---------------------------------------------------------------------------
// Finding the candidate
// ---------------------------------------------------------------------------

/// Where the candidate was found, which decides how much evidence the repair
/// needs (see [`heal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The text itself starts like JSON.
    Whole,
    /// The body of a `json` (or untagged) markdown fence.
    Fenced,
    /// A value inside prose.
    Embedded,
}

/// The text from the start of the JSON value to heal, and where it was
/// found. The slice runs to the end of the text; the repair stops on its own.
fn find_candidate(text: &str) -> Option<(&str, Origin)> {
    let b = text.as_bytes();
    let trimmed = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let start = text.len().saturating_sub(trimmed.len());
    if starts_json(b, start) {
        return Some((text.get(start..)?, Origin::Whole));
    }
    if let Some(p) = fenced_json(b) {
        return Some((text.get(p..)?, Origin::Fenced));
    }
    let p = embedded_json(b)?;
    Some((text.get(p..)?, Origin::Embedded))
}

/// Whether the byte at `p` opens something that reads like a JSON object or
/// array rather than a bracket in prose: `{` then `"`, `'`, `}` or `name :`;
/// `[` then a value's first byte, a whole literal, or `]`; either then a
/// comment. The end of the text right after (or inside the name or literal)
/// counts: a reply cut there is truncated JSON.
fn starts_json(b: &[u8], p: usize) -> bool {
    let Some(&open) = b.get(p) else {
        return false;
    };
    let j = skip_blank(b, p + 1);
    let next = b.get(j).copied();
    // A comment right after the bracket is JSONC, not prose. It is not
    // looked into: scanning comments here could go quadratic on `{ /* { /*`.
    if next == Some(b'/') && matches!(b.get(j + 1), Some(b'/' | b'*')) {
        return matches!(open, b'{' | b'[');
    }
    match open {
        b'{' => match next {
            None | Some(b'"' | b'\'' | b'}') => true,
            Some(c) if is_name_start(c) => {
                let k = skip_blank(b, scan_while(b, j, is_name_byte));
                matches!(b.get(k), None | Some(b':'))
            }
            _ => false,
        },
        b'[' => match next {
            None | Some(b'{' | b'[' | b'"' | b'\'' | b']' | b'-' | b'0'..=b'9') => true,
            Some(c) if c.is_ascii_alphabetic() => {
                let k = scan_while(b, j, is_word_byte);
                let word = b.get(j..k).unwrap_or_default();
                literal(word).is_some() || (k == b.len() && is_literal_prefix(word))
            }
            _ => false,
        },
        _ => false,
    }
}

/// The start of the body of the first markdown fence tagged `json…` (or
/// untagged) whose body starts with `{` or `[`.
fn fenced_json(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(open) = find_fence(b, from) {
        let tag_start = open + 3;
        let tag_end = scan_while(b, tag_start, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'.')
        });
        let tag = b.get(tag_start..tag_end).unwrap_or_default();
        let body = skip_blank(b, tag_end);
        let json_tag = tag.is_empty()
            || tag
                .get(..4)
                .is_some_and(|t| t.eq_ignore_ascii_case(b"json"));
        if json_tag && matches!(b.get(body), Some(b'{' | b'[')) {
            return Some(body);
        }
        from = find_fence(b, tag_end)? + 3;
    }
    None
}

/// The first `{`/`[` outside markdown fences that starts like JSON and
/// begins a line or follows a colon.
fn embedded_json(b: &[u8]) -> Option<usize> {
    let mut p = 0;
    while let Some(&c) = b.get(p) {
        if c == b'`' && b.get(p..p + 3) == Some(&b"```"[..]) {
            // Code fences were looked at by `fenced_json`; their bodies are
            // code (`config = [{'a': 1}]`), not the answer.
            p = find_fence(b, p + 3)? + 3;
            continue;
        }
        if matches!(c, b'{' | b'[') && after_colon_or_line_start(b, p) && starts_json(b, p) {
            return Some(p);
        }
        p += 1;
    }
    None
}

/// Whether only spaces and tabs stand between `p` and the start of its line,
/// or between `p` and a preceding `:`.
fn after_colon_or_line_start(b: &[u8], p: usize) -> bool {
    let mut k = p;
    while let Some(k1) = k.checked_sub(1) {
        match b.get(k1) {
            Some(b' ' | b'\t') => k = k1,
            Some(b'\n' | b'\r' | b':') => return true,
            _ => return false,
        }
    }
    true
}

/// The index of the next "```" at or after `from`.
fn find_fence(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(3)
        .position(|w| w == b"```")
        .map(|i| i + from)
}

// ---------------------------------------------------------------------------
// The repair
// ---------------------------------------------------------------------------

/// serde_json's default nesting limit: deeper output could not be parsed.
const MAX_DEPTH: usize = 128;

/// What follows the repaired value in the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailing {
    /// Nothing but whitespace, stray closers or fence backticks (or the value
    /// was truncated).
    None,
    /// Another JSON value: two answers.
    Value,
    /// Anything else: prose.
    Prose,
}

/// A repaired value.
#[derive(Debug)]
struct Repair {
    /// The repaired JSON (not yet checked by serde_json).
    json: String,
    /// Whether the repaired value keeps at least one string or key (a key
    /// dropped with a truncated member does not count): evidence that a
    /// bracketed thing in prose is data.
    has_text: bool,
    trailing: Trailing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

impl Container {
    fn closer(self) -> u8 {
        match self {
            Container::Object => b'}',
            Container::Array => b']',
        }
    }
}

/// What an open container expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Just opened: a first member or element, or the closer.
    First,
    /// After a comma: a member or element (a closer here makes the comma a
    /// trailing one, which is dropped).
    Next,
    /// Objects: a key was read, its colon comes next.
    Colon,
    /// Objects: after the colon, the value comes next.
    Value,
    /// A member or element is complete: a comma or the closer comes next.
    CommaOrClose,
}

/// One open container.
#[derive(Debug)]
struct Frame {
    container: Container,
    expect: Expect,
    /// Output length where the current member began (just after the opener,
    /// or at its comma): truncating to it drops the member and its comma.
    member_start: usize,
}

/// How the main loop ended.
enum Finish {
    /// The top-level value closed; the loop stopped at the byte after it.
    Complete,
    /// The input ended (or a fence began) with containers still open;
    /// `partial` is set when it ended inside a member that cannot be
    /// finished (a key, a half literal or number), which is then dropped.
    Truncated { partial: bool },
}

/// How a string ended.
enum StrEnd {
    Closed,
    /// The input ended inside it; it was closed.
    Truncated,
}

/// The repair state: one pass over `src`, output built as it goes.
struct Repairer<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    stack: Vec<Frame>,
    /// Open objects and arrays, so a closer can tell in O(1) whether a
    /// container of its kind is open below the top.
    objects: usize,
    arrays: usize,
}

/// Repairs the JSON value at the start of `candidate` (which must start with
/// `{` or `[`). `None` when it cannot be repaired.
fn repair(candidate: &str) -> Option<Repair> {
    let mut r = Repairer {
        src: candidate.as_bytes(),
        pos: 0,
        out: Vec::with_capacity(candidate.len() + 8),
        stack: Vec::new(),
        objects: 0,
        arrays: 0,
    };
    let trailing = match r.run()? {
        Finish::Complete => trailing(r.src, r.pos),
        Finish::Truncated { partial } => {
            r.close_all(partial);
            Trailing::None
        }
    };
    // Every string and key in the output is double-quoted, and nothing else
    // in it contains a `"`.
    let has_text = r.out.contains(&b'"');
    Some(Repair {
        // Never fails: bytes are copied from a `str` in whole characters and
        // everything added is ASCII; checked rather than assumed all the same.
        json: String::from_utf8(r.out).ok()?,
        has_text,
        trailing,
    })
}

/// Classifies what follows a complete top-level value.
fn trailing(b: &[u8], from: usize) -> Trailing {
    let k = scan_while(b, from, |c| {
        c.is_ascii_whitespace() || matches!(c, b']' | b'}' | b'`')
    });
    match b.get(k) {
        None => Trailing::None,
        Some(b'{' | b'[') => Trailing::Value,
        Some(_) => Trailing::Prose,
    }
}

impl Repairer<'_> {
    /// The main loop: one byte decides what happens, strings, names, numbers
    /// and comments are consumed by their own loops. `None`: not repairable.
    fn run(&mut self) -> Option<Finish> {
        match self.src.first() {
            Some(&c) if c == b'{' || c == b'[' => {
                self.pos = 1;
                self.open(c)?;
            }
            _ => return None,
        }
        loop {
            let Some(&c) = self.src.get(self.pos) else {
                return Some(Finish::Truncated { partial: false });
            };
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.out.push(c);
                    self.pos += 1;
                    continue;
                }
                b'/' => {
                    self.skip_comment()?;
                    continue;
                }
                // A markdown fence ends the JSON: nothing after it is part
                // of the value (a backtick is never JSON outside strings).
                b'`' => return Some(Finish::Truncated { partial: false }),
                _ => {}
            }
            let top = self.stack.last()?;
            match (top.container, top.expect, c) {
                (_, _, b'}' | b']') => {
                    self.close(c)?;
                    if self.stack.is_empty() {
                        return Some(Finish::Complete);
                    }
                }
                (_, Expect::First | Expect::Next, b',') => self.pos += 1,
                (_, Expect::CommaOrClose, b',') => {
                    let at = self.out.len();
                    self.out.push(b',');
                    self.pos += 1;
                    if let Some(top) = self.stack.last_mut() {
                        top.expect = Expect::Next;
                        top.member_start = at;
                    }
                }
                (Container::Object, Expect::First | Expect::Next, _) => {
                    if let Some(finish) = self.key(c)? {
                        return Some(finish);
                    }
                }
                (Container::Object, Expect::Colon, b':') => {
                    self.out.push(b':');
                    self.pos += 1;
                    self.next_is(Expect::Value);
                }
                (Container::Array, Expect::First | Expect::Next, _)
                | (Container::Object, Expect::Value, _) => {
                    if let Some(finish) = self.value(c)? {
                        return Some(finish);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Sets what the innermost container expects next.
    fn next_is(&mut self, e: Expect) {
        if let Some(top) = self.stack.last_mut() {
            top.expect = e;
        }
    }

    /// Opens a container (`c` is its opener, already consumed).
    fn open(&mut self, c: u8) -> Option<()> {
        if self.stack.len() >= MAX_DEPTH {
            return None;
        }
        let container = if c == b'{' {
            self.objects += 1;
            Container::Object
        } else {
            self.arrays += 1;
            Container::Array
        };
        self.out.push(c);
        self.stack.push(Frame {
            container,
            expect: Expect::First,
            member_start: self.out.len(),
        });
        Some(())
    }

    /// Handles the closer `c` at `pos`: closes the innermost container of its
    /// kind and any opened after it. `None` when none of its kind is open or
    /// a closed object was left waiting for a value.
    fn close(&mut self, c: u8) -> Option<()> {
        let want = if c == b'}' {
            Container::Object
        } else {
            Container::Array
        };
        let open = match want {
            Container::Object => self.objects,
            Container::Array => self.arrays,
        };
        if open == 0 {
            return None;
        }
        loop {
            let frame = self.stack.pop()?;
            match frame.expect {
                Expect::Colon | Expect::Value => return None,
                Expect::Next => {
                    // A trailing comma: only whitespace follows it in the
                    // output (comments are not copied), so this shift is
                    // paid once per comma.
                    if self.out.get(frame.member_start) == Some(&b',') {
                        self.out.remove(frame.member_start);
                    }
                }
                Expect::First | Expect::CommaOrClose => {}
            }
            self.out.push(frame.container.closer());
            match frame.container {
                Container::Object => self.objects = self.objects.saturating_sub(1),
                Container::Array => self.arrays = self.arrays.saturating_sub(1),
            }
            if frame.container == want {
                break;
            }
        }
        self.pos += 1;
        Some(())
    }

    /// The input ended with containers open: drop an unfinished member of the
    /// innermost one, then close them all, innermost first. The outer ones
    /// always hold a complete member: the inner container.
    fn close_all(&mut self, partial: bool) {
        if let Some(top) = self.stack.last()
            && (partial || matches!(top.expect, Expect::Next | Expect::Colon | Expect::Value))
        {
            self.out.truncate(top.member_start);
        }
        while let Some(frame) = self.stack.pop() {
            self.out.push(frame.container.closer());
        }
        self.objects = 0;
        self.arrays = 0;
    }

    /// A key where an object expects one. `Some(finish)` when the input
    /// ended inside it.
    fn key(&mut self, c: u8) -> Option<Option<Finish>> {
        if matches!(c, b'"' | b'\'') {
            self.pos += 1;
            return Some(match self.string(c) {
                StrEnd::Closed => {
                    self.next_is(Expect::Colon);
                    None
                }
                StrEnd::Truncated => Some(Finish::Truncated { partial: true }),
            });
        }
        if !is_name_start(c) {
            return None;
        }
        let end = scan_while(self.src, self.pos, is_name_byte);
        if self.ends_at(end) {
            return Some(Some(Finish::Truncated { partial: true }));
        }
        let name = self.src.get(self.pos..end)?;
        self.out.push(b'"');
        self.out.extend_from_slice(name);
        self.out.push(b'"');
        self.pos = end;
        self.next_is(Expect::Colon);
        Some(None)
    }

    /// A value where a container expects one. `Some(finish)` when the input
    /// ended inside it.
    fn value(&mut self, c: u8) -> Option<Option<Finish>> {
        match c {
            b'{' | b'[' => {
                self.next_is(Expect::CommaOrClose);
                self.pos += 1;
                self.open(c)?;
                Some(None)
            }
            b'"' | b'\'' => {
                self.pos += 1;
                let end = self.string(c);
                self.next_is(Expect::CommaOrClose);
                Some(match end {
                    StrEnd::Closed => None,
                    StrEnd::Truncated => Some(Finish::Truncated { partial: false }),
                })
            }
            b'-' | b'0'..=b'9' => {
                let end = scan_while(self.src, self.pos, |d| {
                    d.is_ascii_digit() || matches!(d, b'-' | b'+' | b'.' | b'e' | b'E')
                });
                let token = self.src.get(self.pos..end)?;
                if is_json_number(token) {
                    self.out.extend_from_slice(token);
                    self.pos = end;
                    self.next_is(Expect::CommaOrClose);
                    Some(None)
                } else if self.ends_at(end) {
                    Some(Some(Finish::Truncated { partial: true }))
                } else {
                    None
                }
            }
            c if c.is_ascii_alphabetic() => {
                let end = scan_while(self.src, self.pos, is_word_byte);
                let word = self.src.get(self.pos..end)?;
                if let Some(lit) = literal(word) {
                    self.out.extend_from_slice(lit);
                    self.pos = end;
                    self.next_is(Expect::CommaOrClose);
                    Some(None)
                } else if self.ends_at(end) && is_literal_prefix(word) {
                    Some(Some(Finish::Truncated { partial: true }))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Whether the input ends at `i` for a token that reached it (the end of
    /// the text, or a fence).
    fn ends_at(&self, i: usize) -> bool {
        matches!(self.src.get(i), None | Some(b'`'))
    }

    /// Skips a `//` or `/* */` comment at `pos`. `None` for a lone `/`.
    fn skip_comment(&mut self) -> Option<()> {
        let from = self.pos + 2;
        match self.src.get(self.pos + 1) {
            Some(b'/') => {
                // Up to (not including) the newline, which is kept.
                self.pos = scan_while(self.src, from, |c| c != b'\n');
            }
            Some(b'*') => {
                let rest = self.src.get(from..).unwrap_or_default();
                self.pos = match rest.windows(2).position(|w| w == b"*/") {
                    Some(i) => from + i + 2,
                    None => self.src.len(),
                };
            }
            _ => return None,
        }
        Some(())
    }

    /// Copies a string whose opening quote `q` (`"` or `'`) was consumed,
    /// always emitting a valid double-quoted JSON string.
    fn string(&mut self, q: u8) -> StrEnd {
        self.out.push(b'"');
        // Output length right after a `\uD800`–`\uDBFF` escape: a high
        // surrogate whose low half the truncation cut off is dropped.
        let mut high_end: Option<usize> = None;
        loop {
            let Some(&c) = self.src.get(self.pos) else {
                return self.string_truncated(high_end);
            };
            match c {
                b'"' if q == b'"' => {
                    self.out.push(b'"');
                    self.pos += 1;
                    return StrEnd::Closed;
                }
                b'"' => {
                    self.out.extend_from_slice(b"\\\"");
                    self.pos += 1;
                }
                b'\'' if q == b'\'' => {
                    if self.src.get(self.pos + 1) == Some(&b'\'') {
                        self.out.push(b'\'');
                        self.pos += 2;
                    } else if closes_single_quote(self.src, self.pos + 1) {
                        self.out.push(b'"');
                        self.pos += 1;
                        return StrEnd::Closed;
                    } else {
                        self.out.push(b'\'');
                        self.pos += 1;
                    }
                }
                b'\\' => {
                    if !self.escape(&mut high_end) {
                        return self.string_truncated(high_end);
                    }
                }
                // A raw newline then a fence: the reply was cut inside this
                // string and the fence closed it. (Valid strings hold no raw
                // newline, so this never cuts one short.)
                b'\n' if fence_follows(self.src, self.pos + 1) => {
                    return self.string_truncated(high_end);
                }
                0x00..=0x1f => {
                    push_control_escape(&mut self.out, c);
                    self.pos += 1;
                }
                _ => {
                    self.out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Handles the backslash at `pos`. `false` when the input ends inside
    /// the escape (which is then dropped).
    fn escape(&mut self, high_end: &mut Option<usize>) -> bool {
        match self.src.get(self.pos + 1) {
            None => false,
            Some(&e @ (b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't')) => {
                self.out.push(b'\\');
                self.out.push(e);
                self.pos += 2;
                true
            }
            Some(b'\'') => {
                self.out.push(b'\'');
                self.pos += 2;
                true
            }
            Some(b'u') => {
                let hex = self.src.get(self.pos + 2..self.pos + 6);
                match hex {
                    Some(h) if h.iter().all(u8::is_ascii_hexdigit) => {
                        self.out.extend_from_slice(b"\\u");
                        self.out.extend_from_slice(h);
                        self.pos += 6;
                        if is_high_surrogate(h) {
                            *high_end = Some(self.out.len());
                        }
                        true
                    }
                    _ => {
                        let rest = self.src.get(self.pos + 2..).unwrap_or_default();
                        if rest.len() < 4 && rest.iter().all(u8::is_ascii_hexdigit) {
                            return false;
                        }
                        // Not an escape: the backslash is a character.
                        self.out.extend_from_slice(b"\\\\");
                        self.pos += 1;
                        true
                    }
                }
            }
            Some(_) => {
                // An unknown escape: the backslash is a character, and the
                // byte after it is copied by the string loop as usual.
                self.out.extend_from_slice(b"\\\\");
                self.pos += 1;
                true
            }
        }
    }

    /// Closes a string the input ended in.
    fn string_truncated(&mut self, high_end: Option<usize>) -> StrEnd {
        if high_end == Some(self.out.len()) {
            self.out.truncate(self.out.len().saturating_sub(6));
        }
        self.out.push(b'"');
        StrEnd::Truncated
    }
}

/// Whether the `'` before `i` ends a single-quoted string: a delimiter (or
/// the end) follows it.
fn closes_single_quote(b: &[u8], i: usize) -> bool {
    let k = skip_blank(b, i);
    match b.get(k) {
        None | Some(b',' | b':' | b'}' | b']' | b'`') => true,
        Some(b'/') => matches!(b.get(k + 1), Some(b'/' | b'*')),
        _ => false,
    }
}

/// Whether a markdown fence starts the line at `i` (after spaces or tabs).
fn fence_follows(b: &[u8], i: usize) -> bool {
    let k = scan_while(b, i, |c| matches!(c, b' ' | b'\t'));
    b.get(k..k + 3) == Some(&b"```"[..])
}

/// Appends the JSON escape of control byte `c`.
fn push_control_escape(out: &mut Vec<u8>, c: u8) {
    match c {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            for nibble in [c >> 4, c & 0x0f] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        }
    }
}

/// Whether four hex digits name a UTF-16 high (leading) surrogate.
fn is_high_surrogate(h: &[u8]) -> bool {
    matches!(h.first(), Some(b'd' | b'D'))
        && matches!(h.get(1), Some(b'8'..=b'9' | b'a'..=b'b' | b'A'..=b'B'))
}

/// The JSON spelling of a literal, JSON's own or Python's.
fn literal(word: &[u8]) -> Option<&'static [u8]> {
    match word {
        b"true" | b"True" => Some(b"true"),
        b"false" | b"False" => Some(b"false"),
        b"null" | b"None" => Some(b"null"),
        _ => None,
    }
}

/// Whether `word` is the start of a literal (a reply cut inside one).
fn is_literal_prefix(word: &[u8]) -> bool {
    [&b"true"[..], b"True", b"false", b"False", b"null", b"None"]
        .iter()
        .any(|l| l.starts_with(word))
}

/// Whether `t` is a JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    let mut i = 0;
    if t.first() == Some(&b'-') {
        i = 1;
    }
    let int_start = i;
    i = scan_while(t, i, |c| c.is_ascii_digit());
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && t.get(int_start) == Some(&b'0')) {
        return false;
    }
    if t.get(i) == Some(&b'.') {
        let frac_start = i + 1;
        i = scan_while(t, frac_start, |c| c.is_ascii_digit());
        if i == frac_start {
            return false;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        i = scan_while(t, exp_start, |c| c.is_ascii_digit());
        if i == exp_start {
            return false;
        }
    }
    i == t.len()
}

/// The first byte of an unquoted key (any non-ASCII byte belongs to a name:
/// multi-byte characters are kept whole).
fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || c >= 0x80
}

/// A later byte of an unquoted key.
fn is_name_byte(c: u8) -> bool {
    is_name_start(c) || matches!(c, b'-' | b'.')
}

/// A byte of a bare word in value position (a literal).
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first index at or after `i` whose byte fails `keep` (or the length).
fn scan_while(b: &[u8], i: usize, keep: impl Fn(u8) -> bool) -> usize {
    let rest = b.get(i..).unwrap_or_default();
    i + rest.iter().position(|&c| !keep(c)).unwrap_or(rest.len())
}

/// The first index at or after `i` that is not JSON whitespace.
fn skip_blank(b: &[u8], i: usize) -> usize {
    scan_while(b, i, |c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `input` heals to exactly `expected`.
    #[track_caller]
    fn repaired(input: &str, expected: &str) {
        assert_eq!(
            heal(input),
            Healed::Repaired(expected.to_owned()),
            "input: {input:?}"
        );
        assert_eq!(heal(expected), Healed::Valid, "output of {input:?}");
    }

    #[track_caller]
    fn prose(input: &str) {
        assert_eq!(heal(input), Healed::Prose, "input: {input:?}");
    }

    #[track_caller]
    fn unrepairable(input: &str) {
        assert_eq!(heal(input), Healed::Unrepairable, "input: {input:?}");
    }

    #[test]
    fn valid_json_is_left_alone() {
        for text in [
            r#"{"a": 1}"#,
            "  [1, 2, 3]\n",
            r#"{"a": "it's // not a comment, [} ```"}"#,
            r#"{"a": "\u00e9\ud83d\ude00", "b": [true, false, null, -1.5e3]}"#,
            // Bare scalars are JSON too.
            "42",
            r#""just a string""#,
            "null",
        ] {
            assert_eq!(heal(text), Healed::Valid, "{text:?}");
        }
        // The empty text is not JSON and holds none.
        prose("");
    }

    #[test]
    fn markdown_fences() {
        repaired("```json\n{\"a\": 1}\n```", r#"{"a": 1}"#);
        repaired("```\n[1, 2]\n```", "[1, 2]");
        repaired("```JSON\n{\"a\": 1}```", r#"{"a": 1}"#);
        repaired("```json {\"a\": 1} ```", r#"{"a": 1}"#);
        repaired(
            "Here is the result:\n```json\n{\"ok\": true}\n```\nLet me know if you need more!",
            r#"{"ok": true}"#,
        );
        // A fence with no JSON tag is code: skipped for the next one.
        repaired(
            "First the code:\n```python\nx = {'a': 1}\n```\nAnd the data:\n```json\n{\"x\": 1}\n```",
            r#"{"x": 1}"#,
        );
        // Truncated inside the fence, with and without its closing line.
        repaired("```json\n{\"a\": [1, 2", r#"{"a": [1, 2]}"#);
        repaired("```json\n{\"a\": [1, 2\n```", "{\"a\": [1, 2\n]}");
        repaired("```json\n{\"a\": \"hel\n```", r#"{"a": "hel"}"#);
        // A fence inside a JSON string does not end anything.
        repaired(
            "```json\n{\"md\": \"```py x```\"}\n```",
            r#"{"md": "```py x```"}"#,
        );
        // Even a value without strings counts inside a json fence.
        repaired("```json\n[1, 2]\n```", "[1, 2]");
        // Only code fences: prose.
        prose("Here:\n```python\nd = {'a': True}\nprint(d)\n```\nRun it.");
    }

    #[test]
    fn prose_around_the_value() {
        repaired("Here you go: {\"a\": 1} Hope it helps", r#"{"a": 1}"#);
        repaired(
            "Sure, here it is.\n\n[{\"id\": 1}, {\"id\": 2}]\n\nAnything else?",
            r#"[{"id": 1}, {"id": 2}]"#,
        );
        repaired("{\"a\": 1}\nThat's the object.", r#"{"a": 1}"#);
        repaired("Result:{name: 'x'}", r#"{"name": "x"}"#);
        // Stray closers after the value are dropped too.
        repaired(r#"{"a": [1]}]}"#, r#"{"a": [1]}"#);
        // Two values: no choice is made.
        unrepairable(r#"{"a": 1} {"b": 2}"#);
        unrepairable("{\"a\": 1}\n[2]");
    }

    #[test]
    fn prose_is_left_alone() {
        for text in [
            "Sure! Here is a poem about the sea.",
            "I think [this] is fine.",
            "As shown in [1], the effect is small.",
            "[1] Smith, J. (2020). A paper.",
            "[ ] buy milk\n[x] walk the dog",
            "Values: [1, 2, 3] are all odd.",
            "Format: {name} is {age} years old.",
            "Use a body like {\"name\": \"x\"} and set the content type.",
            "Use `{\"a\": 1}` as the input.",
            "The set {1, 2} has two elements.",
            "{name} is a placeholder.",
            "\"unterminated quote",
            "''''",
            // Only a key that the truncation drops: nothing is left.
            "Here it is:\n{'unfinished",
            "Here it is:\n{\"a\": tr",
            "x\n{'a x\n{'a x",
        ] {
            prose(text);
        }
    }

    #[test]
    fn trailing_commas() {
        repaired(r#"{"a": [1, 2,], "b": 3,}"#, r#"{"a": [1, 2], "b": 3}"#);
        repaired("{\n  \"a\": 1,\n}", "{\n  \"a\": 1\n}");
        repaired("[1,,2,,]", "[1,2]");
        repaired(r#"{"a": [,1]}"#, r#"{"a": [1]}"#);
        repaired("[1, 2, // last\n]", "[1, 2 \n]");
    }

    #[test]
    fn truncation() {
        repaired(r#"{"a": "hel"#, r#"{"a": "hel"}"#);
        repaired(r#"{"a": [1, {"b": [2, 3"#, r#"{"a": [1, {"b": [2, 3]}]}"#);
        repaired("[[[1], [2", "[[[1], [2]]]");
        repaired(r#"{"a": {"#, r#"{"a": {}}"#);
        repaired("{", "{}");
        repaired("[", "[]");
        repaired(r#"["a","#, r#"["a"]"#);
        repaired("{\"a\": 1,\n", r#"{"a": 1}"#);
        repaired("[1, 2\n", "[1, 2\n]");
        // Dangling keys and unfinished scalars are dropped with their key.
        repaired(r#"{"a": 1, "b":"#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, "b""#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, "b"#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, b"#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, "b": tr"#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, "b": 2."#, r#"{"a": 1}"#);
        repaired(r#"{"a": 1, "b": -"#, r#"{"a": 1}"#);
        repaired("[1, 2e", "[1]");
        repaired("[nu", "[]");
        // A number that looks complete is kept.
        repaired(r#"{"a": 12"#, r#"{"a": 12}"#);
        // Half escapes and lone high surrogates at the cut are dropped.
        repaired(r#"{"a": "x\"#, r#"{"a": "x"}"#);
        repaired(r#"{"a": "x\u00"#, r#"{"a": "x"}"#);
        repaired(r#"{"a": "😀 \ud83d"#, r#"{"a": "😀 "}"#);
        repaired(r#"{"a": "😀 \ud83d\"#, r#"{"a": "😀 "}"#);
        repaired(r#"{"a": "\ud83d\ude00"#, r#"{"a": "\ud83d\ude00"}"#);
        // A closer that skips an open container closes it first.
        repaired(r#"{"a": [1, 2}"#, r#"{"a": [1, 2]}"#);
        repaired(r#"[{"a": 1]"#, r#"[{"a": 1}]"#);
    }

    #[test]
    fn unquoted_keys() {
        repaired(
            "{a: 1, b_c: {d: true}, $e: null}",
            r#"{"a": 1, "b_c": {"d": true}, "$e": null}"#,
        );
        repaired(
            "{max-tokens: 5, v1.2: 'x'}",
            r#"{"max-tokens": 5, "v1.2": "x"}"#,
        );
        repaired("{clé: 1}", r#"{"clé": 1}"#);
        repaired("{1: 'one'}", r#"{"1": "one"}"#);
    }

    #[test]
    fn single_quotes() {
        repaired("{'a': 'b'}", r#"{"a": "b"}"#);
        repaired("{'a': 'it''s'}", r#"{"a": "it's"}"#);
        repaired("{'a': 'it's'}", r#"{"a": "it's"}"#);
        repaired(r"{'a': 'it\'s'}", r#"{"a": "it's"}"#);
        repaired(r#"{'a': 'say "hi"'}"#, r#"{"a": "say \"hi\""}"#);
        repaired(
            "{'a': '', 'b': ['x', 'y']}",
            r#"{"a": "", "b": ["x", "y"]}"#,
        );
        repaired("{'msg': 'I can't, sorry'}", r#"{"msg": "I can't, sorry"}"#);
        repaired("['it's", r#"["it's"]"#);
        // An apostrophe in a double-quoted string is left as it is.
        repaired(r#"{"a": "it's", "b": 'x',}"#, r#"{"a": "it's", "b": "x"}"#);
        repaired(
            r#"{"a": "don't 'quote' me",}"#,
            r#"{"a": "don't 'quote' me"}"#,
        );
    }

    #[test]
    fn python_literals() {
        repaired(
            "{'a': True, 'b': False, 'c': None, 'd': [True]}",
            r#"{"a": true, "b": false, "c": null, "d": [true]}"#,
        );
    }

    #[test]
    fn comments() {
        repaired(
            "{\n  // the id\n  \"id\": 1, /* inline */ \"x\": 2\n}",
            "{\n  \n  \"id\": 1,  \"x\": 2\n}",
        );
        repaired("[1 /* unterminated", "[1 ]");
        repaired("{\"a\": 1} // done", r#"{"a": 1}"#);
    }

    #[test]
    fn control_characters_and_escapes_in_strings() {
        repaired(
            "{\"a\": \"line1\nline2\ttab\"}",
            r#"{"a": "line1\nline2\ttab"}"#,
        );
        repaired("{\"a\": \"\u{1}\"}", r#"{"a": "\u0001"}"#);
        repaired(r#"{"a": "C:\dir\x", }"#, r#"{"a": "C:\\dir\\x" }"#);
        repaired(r#"{"a": "\uZZ", }"#, r#"{"a": "\\uZZ" }"#);
    }

    #[test]
    fn not_repairable() {
        for text in [
            r#"{"a" 1}"#,
            r#"{"a": hello}"#,
            r#"{"a": 1 "b": 2}"#,
            r#"{"a": NaN}"#,
            r#"{"a": 0x1F}"#,
            r#"{"a": 01}"#,
            r#"{"a": }"#,
            r#"["a" }"#,
            "{'a', 'b'}",
            "{x: 1 for x in y}",
            r#"{"a": "b" / 2}"#,
            r#"{"a": 1} {"b": 2}"#,
        ] {
            unrepairable(text);
        }
    }

    #[test]
    fn arguments() {
        assert_eq!(heal_arguments(r#"{"a": 1}"#), None);
        assert_eq!(heal_arguments("[1, 2]"), None, "valid, whatever its type");
        assert_eq!(
            heal_arguments(r#"{"a": 1,"#),
            Some(r#"{"a": 1}"#.to_owned())
        );
        assert_eq!(
            heal_arguments("{location: 'Paris', unit: 'C'}"),
            Some(r#"{"location": "Paris", "unit": "C"}"#.to_owned())
        );
        assert_eq!(
            heal_arguments("```json\n{\"q\": \"rust\"}\n```"),
            Some(r#"{"q": "rust"}"#.to_owned())
        );
        assert_eq!(heal_arguments(""), Some("{}".to_owned()));
        assert_eq!(heal_arguments("  "), Some("{}".to_owned()));
        assert_eq!(heal_arguments("[1, 2"), None, "an array is not arguments");
        assert_eq!(heal_arguments("garbage"), None);
        assert_eq!(heal_arguments(r#"{"a" 1}"#), None);
    }

    #[test]
    fn json_numbers() {
        for ok in ["0", "-0", "12", "1.5", "-1.5e-3", "2E+10", "0.0"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1-2", "--1"] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }

    // -----------------------------------------------------------------------
    // Robustness
    // -----------------------------------------------------------------------

    use crate::route::Rng;

    /// Valid documents whose truncations and mutations the fuzz test heals.
    const DOCUMENTS: &[&str] = &[
        r#"{"a": 1, "b": [true, false, null], "c": {"d": "e"}}"#,
        r#"[{"id": 1, "name": "it's"}, {"id": -2.5e3, "tags": ["x", "y"]}]"#,
        r#"{"text": "line\nbreak \"quoted\" \\ back \/ slash \u00e9 \ud83d\ude00", "n": 0}"#,
        r#"{"nested": [[[[{"deep": [1, [2, [3]]]}]]]], "empty": {}, "list": []}"#,
        r#"{"unicode": "héllo wörld 日本語 😀", "k\"ey": "v"}"#,
        "{\n  \"pretty\": [\n    1,\n    2\n  ],\n  \"done\": true\n}",
        r#"[1, 2.5, -0, 1e10, "s", null]"#,
    ];

    /// The JSON-ish alphabet random strings are built from, plus a few
    /// characters that reach the other branches (comments, fences, escapes,
    /// multi-byte UTF-8).
    const ALPHABET: &[&str] = &[
        "{", "}", "[", "]", "\"", ",", ":", "'", "\\", " ", "a", "1", "t", "n", "\n", "/", "*",
        "`", "```", "-", ".", "e", "u", "T", "N", "é", "😀", "\t", "0", "true", "d8",
    ];

    /// How many inputs [`check`] saw of each outcome.
    #[derive(Debug, Default)]
    struct Outcomes {
        valid: usize,
        repaired: usize,
        prose: usize,
        unrepairable: usize,
    }

    /// Checks the invariants on one input: no panic (implicit), a repair
    /// parses and is itself `Valid`, argument repairs are objects.
    fn check(input: &str, seen: &mut Outcomes) {
        let healed = heal(input);
        match &healed {
            Healed::Valid => seen.valid += 1,
            Healed::Repaired(_) => seen.repaired += 1,
            Healed::Prose => seen.prose += 1,
            Healed::Unrepairable => seen.unrepairable += 1,
        }
        match healed {
            Healed::Repaired(s) => {
                assert!(
                    serde_json::from_str::<Value>(&s).is_ok(),
                    "{input:?} -> {s:?}"
                );
                assert_eq!(
                    heal(&s),
                    Healed::Valid,
                    "not idempotent: {input:?} -> {s:?}"
                );
                assert!(s.starts_with('{') || s.starts_with('['), "{s:?}");
            }
            Healed::Valid => assert!(serde_json::from_str::<Value>(input).is_ok()),
            Healed::Prose | Healed::Unrepairable => {}
        }
        if let Some(a) = heal_arguments(input) {
            assert!(
                matches!(serde_json::from_str::<Value>(&a), Ok(Value::Object(_))),
                "{input:?} -> {a:?}"
            );
        }
    }

    #[test]
    fn fuzz_random_jsonish_strings() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut seen = Outcomes::default();
        for _ in 0..50_000 {
            let len = rng.below(40);
            // Most start like JSON, so they get past the prose detection
            // into the repair.
            let mut s = String::from(["{", "[", "{\"", "[{", ""][rng.below(5)]);
            for _ in 0..len {
                s.push_str(ALPHABET[rng.below(ALPHABET.len())]);
            }
            check(&s, &mut seen);
        }
        eprintln!("random strings: {seen:?}");
        // The cases reach the repair, not only the prose detection.
        assert!(
            seen.repaired > 2_000 && seen.unrepairable > 2_000,
            "{seen:?}"
        );
    }

    #[test]
    fn fuzz_mutated_documents() {
        let mut rng = Rng::new(0x0123_4567_89ab_cdef);
        let mut seen = Outcomes::default();
        for _ in 0..20_000 {
            let doc = DOCUMENTS[rng.below(DOCUMENTS.len())];
            let mut chars: Vec<char> = doc.chars().collect();
            for _ in 0..=rng.below(3) {
                let at = rng.below(chars.len() + 1);
                match rng.below(4) {
                    0 => chars.truncate(at),
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    2 => {
                        let piece = ALPHABET[rng.below(ALPHABET.len())];
                        for (k, c) in piece.chars().enumerate() {
                            chars.insert((at + k).min(chars.len()), c);
                        }
                    }
                    _ if at < chars.len() => {
                        let piece = ALPHABET[rng.below(ALPHABET.len())];
                        chars[at] = piece.chars().next().unwrap_or(' ');
                    }
                    _ => {}
                }
            }
            let s: String = chars.into_iter().collect();
            check(&s, &mut seen);
            // The same, wrapped as a model would.
            check(
                &format!("Here you go:\n```json\n{s}\n```\nDone."),
                &mut seen,
            );
        }
        eprintln!("mutated documents: {seen:?}");
        assert!(seen.repaired > 10_000, "{seen:?}");
    }

    /// Every prefix of a valid document (a reply cut anywhere) heals: it is
    /// valid or a repair parses.
    #[test]
    fn every_truncation_of_a_document_heals() {
        for doc in DOCUMENTS {
            for (cut, _) in doc.char_indices().skip(1) {
                let prefix = &doc[..cut];
                let healed = heal(prefix);
                match &healed {
                    Healed::Valid => {}
                    Healed::Repaired(s) => {
                        assert_eq!(heal(s), Healed::Valid, "{prefix:?} -> {s:?}")
                    }
                    other => panic!("{prefix:?} -> {other:?}"),
                }
                // And inside an unclosed fence, after prose.
                let fenced = format!("Sure:\n```json\n{prefix}");
                assert!(
                    matches!(heal(&fenced), Healed::Repaired(_)),
                    "{fenced:?} -> {:?}",
                    heal(&fenced)
                );
            }
        }
    }

    /// A megabyte of pathological input finishes (the algorithm is one pass
    /// with an explicit stack; timings are not asserted, see the module
    /// doc).
    #[test]
    fn megabyte_inputs_finish() {
        const MB: usize = 1 << 20;
        let deep_arrays = "[".repeat(MB);
        assert_eq!(heal(&deep_arrays), Healed::Unrepairable);
        let deep_objects = "{\"a\":".repeat(MB / 5);
        assert_eq!(heal(&deep_objects), Healed::Unrepairable);
        let quotes = "\"".repeat(MB);
        assert_eq!(heal(&quotes), Healed::Prose);
        // Inputs that do not stop early at the depth limit: a wide array,
        // a long unterminated string, a long single-quoted string full of
        // apostrophes, a long comment, prose full of brackets and colons.
        let wide = format!("[{}", "{\"a\": [1, 'x'], b: True},".repeat(MB / 26));
        assert!(matches!(heal(&wide), Healed::Repaired(_)));
        let long_string = format!("{{\"a\": \"{}", "x\\n\\\"".repeat(MB / 5));
        assert!(matches!(heal(&long_string), Healed::Repaired(_)));
        let long_string = format!("{{\"a\": \"{}", "é \\u00e9 ".repeat(MB / 12));
        assert!(matches!(heal(&long_string), Healed::Repaired(_)));
        let apostrophes = format!("['{}", "it' s ".repeat(MB / 6));
        assert!(matches!(heal(&apostrophes), Healed::Repaired(_)));
        let comment = format!("[1, /*{}", " ".repeat(MB));
        assert!(matches!(heal(&comment), Healed::Repaired(_)));
        let brackets = format!("x{}", ": [x\n{ ".repeat(MB / 6));
        assert_eq!(heal(&brackets), Healed::Prose);
        let fences = "```json\n".repeat(MB / 8);
        assert_eq!(heal(&fences), Healed::Prose);
        let commas = format!("[1{}", ",".repeat(MB));
        assert_eq!(heal(&commas), Healed::Repaired("[1]".to_owned()));
        let trailing = format!("[1,{}]", " ".repeat(MB));
        assert_eq!(
            heal(&trailing),
            Healed::Repaired(format!("[1{}]", " ".repeat(MB)))
        );
    }
}
