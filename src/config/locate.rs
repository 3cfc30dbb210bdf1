//! Where in the file: every config error names the file, the line:col, the
//! table and the key.
//!
//! The file is parsed once into a spanned document ([`DeTable`]), which is
//! both what serde deserializes and what errors are located in: a serde
//! error carries a byte span, the document says which table and key that
//! span belongs to, and validation errors look their key's span up by path.

use std::fmt::Display;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::ConfigError;
use super::raw::{self, RawConfig};

/// One step of a path into the document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// `doc_path!["routers", 2, "provider"]` → `[Seg; 3]`.
macro_rules! doc_path {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::locate::Seg::from($seg)),*]
    };
}
pub(crate) use doc_path;

/// What a span matched: a key, or the value under a key / array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Key,
    Value,
}

/// The parsed document with its source name, for locating errors.
pub(crate) struct Doc<'i> {
    source: &'i str,
    text: &'i str,
    root: DeTable<'i>,
}

impl<'i> Doc<'i> {
    /// Parses the TOML syntax (no schema yet).
    pub(crate) fn parse(source: &'i str, text: &'i str) -> Result<Doc<'i>, ConfigError> {
        match DeTable::parse(text) {
            Ok(root) => Ok(Doc {
                source,
                text,
                root: root.into_inner(),
            }),
            Err(e) => {
                let at = e.span().map(|s| s.start);
                Err(ConfigError::new(format!(
                    "{}: invalid TOML: {}",
                    Self::loc_with(source, text, at),
                    e.message()
                )))
            }
        }
    }

    pub(crate) fn source(&self) -> &str {
        self.source
    }

    /// Deserializes the schema, turning serde's errors into located ones.
    pub(crate) fn deserialize(&self) -> Result<RawConfig, ConfigError> {
        let de = toml::de::Deserializer::from(Spanned::new(0..0, self.root.clone()));
        RawConfig::deserialize(de).map_err(|e| self.schema_error(&e))
    }

    // ---- positions -------------------------------------------------------

    fn loc_with(source: &str, text: &str, offset: Option<usize>) -> String {
        let Some(offset) = offset else {
            return source.to_owned();
        };
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        format!("{source}:{line}:{col}")
    }

    /// `source:line:col` of a byte offset, or just `source`.
    fn loc(&self, offset: Option<usize>) -> String {
        Self::loc_with(self.source, self.text, offset)
    }

    /// A validation error at `path` (its value, or the nearest ancestor that
    /// exists in the file): `source:line:col: message`.
    pub(crate) fn err(&self, path: &[Seg], message: impl Display) -> ConfigError {
        let mut p = path;
        let offset = loop {
            if p.is_empty() {
                break None;
            }
            if let Some(v) = self.get(p) {
                break Some(v.span().start);
            }
            p = &p[..p.len() - 1];
        };
        ConfigError::new(format!("{}: {message}", self.loc(offset)))
    }

    /// An error about the file as a whole: `source: message`.
    pub(crate) fn err_file(&self, message: impl Display) -> ConfigError {
        ConfigError::new(format!("{}: {message}", self.source))
    }

    // ---- lookups ---------------------------------------------------------

    /// The value at `path` (None for the root or a missing path).
    pub(crate) fn get(&self, path: &[Seg]) -> Option<&Spanned<DeValue<'i>>> {
        let (Seg::Key(first), rest) = path.split_first()? else {
            return None;
        };
        let mut cur = self.root.get(first.as_str())?;
        for seg in rest {
            cur = match (cur.get_ref(), seg) {
                (DeValue::Table(t), Seg::Key(k)) => t.get(k.as_str())?,
                (DeValue::Array(a), Seg::Index(i)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    fn table(&self, path: &[Seg]) -> Option<&DeTable<'i>> {
        if path.is_empty() {
            return Some(&self.root);
        }
        match self.get(path)?.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        }
    }

    fn get_str(&self, path: &[Seg]) -> Option<&str> {
        self.get(path)?.get_ref().as_str()
    }

    /// The keys of the table at `path` in file order (by where each key is
    /// written; the parsed map itself is sorted).
    pub(crate) fn keys_in_file_order(&self, path: &[Seg]) -> Vec<String> {
        let Some(t) = self.table(path) else {
            return Vec::new();
        };
        let mut keys: Vec<(usize, String)> = t
            .iter()
            .map(|(k, _)| (k.span().start, k.get_ref().to_string()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// Finds the key or value whose span is exactly `span` (deepest wins:
    /// an array of tables shares its span with its first element).
    fn find(&self, span: &Range<usize>) -> Option<(Vec<Seg>, Hit)> {
        fn in_value(
            v: &Spanned<DeValue<'_>>,
            span: &Range<usize>,
            path: &mut Vec<Seg>,
            best: &mut Option<(Vec<Seg>, Hit)>,
        ) -> bool {
            if v.span() == *span {
                *best = Some((path.clone(), Hit::Value));
            }
            match v.get_ref() {
                DeValue::Table(t) => in_table(t, span, path, best),
                DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        path.push(Seg::Index(i));
                        if in_value(item, span, path, best) {
                            return true;
                        }
                        path.pop();
                    }
                    false
                }
                _ => false,
            }
        }
        fn in_table(
            t: &DeTable<'_>,
            span: &Range<usize>,
            path: &mut Vec<Seg>,
            best: &mut Option<(Vec<Seg>, Hit)>,
        ) -> bool {
            for (k, v) in t.iter() {
                path.push(Seg::Key(k.get_ref().to_string()));
                if k.span() == *span {
                    *best = Some((path.clone(), Hit::Key));
                    return true;
                }
                if in_value(v, span, path, best) {
                    return true;
                }
                path.pop();
            }
            false
        }
        let mut best = None;
        in_table(&self.root, span, &mut Vec::new(), &mut best);
        best
    }

    // ---- naming ----------------------------------------------------------

    /// Human name of the table at `path`: `[server]`,
    /// `[[providers]] #2 (name "openai")`, `[[routers]] #3 (type "tag")`,
    /// `[[routers]] #4 (type "random"), candidates #1`, `[classifiers.keyword.tags]`.
    pub(crate) fn table_name(&self, path: &[Seg]) -> String {
        match path {
            [] => "the top level".to_owned(),
            [Seg::Key(k), Seg::Index(i), rest @ ..] if k == "providers" || k == "routers" => {
                let (field, what) = if k == "providers" {
                    ("name", "name")
                } else {
                    ("type", "type")
                };
                let mut name = format!("[[{k}]] #{}", i + 1);
                if let Some(v) = self.get_str(&[Seg::Key(k.clone()), Seg::Index(*i), field.into()])
                {
                    name.push_str(&format!(" ({what} {v:?})"));
                }
                let mut rest = rest.iter().peekable();
                while let Some(seg) = rest.next() {
                    match (seg, rest.peek()) {
                        (Seg::Key(key), Some(Seg::Index(j))) => {
                            name.push_str(&format!(", {key} #{}", j + 1));
                            rest.next();
                        }
                        (Seg::Key(key), _) => name.push_str(&format!(", {key}")),
                        (Seg::Index(j), _) => name.push_str(&format!(" #{}", j + 1)),
                    }
                }
                name
            }
            _ => {
                let mut name = String::from("[");
                for (n, seg) in path.iter().enumerate() {
                    match seg {
                        Seg::Key(k) => {
                            if n > 0 {
                                name.push('.');
                            }
                            name.push_str(&toml_key(k));
                        }
                        Seg::Index(i) => name.push_str(&format!("#{}", i + 1)),
                    }
                }
                name.push(']');
                name
            }
        }
    }

    /// `in [server]`, or `at the top level`.
    fn in_table(&self, path: &[Seg]) -> String {
        if path.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in {}", self.table_name(path))
        }
    }

    // ---- serde errors ----------------------------------------------------

    fn schema_error(&self, e: &toml::de::Error) -> ConfigError {
        let hit = e.span().and_then(|s| self.find(&s));
        // serde buffers internally tagged enums and loses the location inside
        // them, so a failure anywhere in [[routers]] is re-run entry by entry.
        if let Some((path, _)) = &hit
            && matches!(path.first(), Some(Seg::Key(k)) if k == "routers")
            && let Some(err) = self.rule_error()
        {
            return err;
        }
        self.located(e, hit)
    }

    /// Re-deserializes each `[[routers]]` entry to find the failing one, then
    /// that entry (minus `type`) as its variant's struct, which keeps spans.
    fn rule_error(&self) -> Option<ConfigError> {
        let DeValue::Array(rules) = self.root.get("routers")?.get_ref() else {
            return None;
        };
        let expected = raw::RULE_TYPES.join(", ");
        for (i, rule) in rules.iter().enumerate() {
            if raw::RawRule::deserialize(ValueDeserializer::from(rule.clone())).is_ok() {
                continue;
            }
            let here = doc_path!["routers", i];
            let DeValue::Table(t) = rule.get_ref() else {
                return Some(
                    self.err(&here, format!("{} must be a table", self.table_name(&here))),
                );
            };
            let ty_path = doc_path!["routers", i, "type"];
            let ty = match t.get("type").map(|v| v.get_ref()) {
                None => {
                    return Some(self.err(
                        &here,
                        format!(
                            "missing key `type` in {}, expected one of: {expected}",
                            self.table_name(&here)
                        ),
                    ));
                }
                Some(DeValue::String(s)) => s.to_string(),
                Some(_) => {
                    return Some(self.err(
                        &ty_path,
                        format!(
                            "key `type` in {} must be a string, one of: {expected}",
                            self.table_name(&here)
                        ),
                    ));
                }
            };
            let mut body = t.clone();
            body.remove("type");
            let body = ValueDeserializer::from(Spanned::new(rule.span(), DeValue::Table(body)));
            let result = match ty.as_str() {
                "prefix" => raw::RawPrefix::deserialize(body).map(drop),
                "tag" => raw::RawTag::deserialize(body).map(drop),
                "discover" => raw::RawDiscover::deserialize(body).map(drop),
                "price" => raw::RawPrice::deserialize(body).map(drop),
                "latency" => raw::RawLatency::deserialize(body).map(drop),
                "throughput" => raw::RawThroughput::deserialize(body).map(drop),
                "fallback" => raw::RawFallback::deserialize(body).map(drop),
                "random" => raw::RawRandom::deserialize(body).map(drop),
                _ => {
                    return Some(self.err(
                        &ty_path,
                        format!(
                            "unknown rule type {ty:?} in [[routers]] #{}, expected one of: {expected}",
                            i + 1
                        ),
                    ));
                }
            };
            let e = result.err()?;
            let hit = e
                .span()
                .and_then(|s| self.find(&s))
                // Without a span the error is about the entry itself.
                .filter(|(p, _)| p.starts_with(&here))
                .or(Some((here.to_vec(), Hit::Value)));
            return Some(self.located(&e, hit));
        }
        None
    }

    /// Words a serde error for the table/key it was found at.
    fn located(&self, e: &toml::de::Error, hit: Option<(Vec<Seg>, Hit)>) -> ConfigError {
        let msg = e.message();
        let Some((path, hit)) = hit else {
            return self.err_file(tidy(msg));
        };

        if let Some(rest) = msg.strip_prefix("unknown field ") {
            let mut ticks = backticked(rest).into_iter();
            let key = ticks.next().unwrap_or_default();
            let expected: Vec<String> = ticks.collect();
            // The span is the unknown key itself, or (inside buffered
            // tables) the table that holds it.
            let table = match (hit, path.split_last()) {
                (Hit::Key, Some((_, parent))) => parent.to_vec(),
                _ => path,
            };
            let mut key_path = table.clone();
            key_path.push(Seg::Key(key.clone()));
            let key_offset = self
                .table(&table)
                .and_then(|t| t.get_key_value(key.as_str()))
                .map(|(k, _)| k.span().start)
                .or_else(|| self.get(&table).map(|v| v.span().start));
            // A key written as a `[header]` reads better as a table.
            let header = |v: &Spanned<DeValue<'_>>, open: &str| {
                self.text
                    .get(v.span().start..)
                    .is_some_and(|t| t.starts_with(open))
            };
            let what = match self.get(&key_path) {
                Some(v) if v.get_ref().is_table() && header(v, "[") => {
                    format!("unknown table {}", self.table_name(&key_path))
                }
                Some(v) if matches!(v.get_ref(), DeValue::Array(a) if a.first().is_some_and(|t| header(t, "[["))) =>
                {
                    format!("unknown table [{}]", self.table_name(&key_path))
                }
                _ => format!("unknown key `{key}` {}", self.in_table(&table)),
            };
            let expected = match expected.len() {
                0 => String::new(),
                1 => format!(", expected: {}", expected[0]),
                _ => format!(", expected one of: {}", expected.join(", ")),
            };
            return ConfigError::new(format!("{}: {what}{expected}", self.loc(key_offset)));
        }

        let offset = e.span().map(|s| s.start);
        if let Some(rest) = msg.strip_prefix("missing field ") {
            let key = backticked(rest).into_iter().next().unwrap_or_default();
            return ConfigError::new(format!(
                "{}: missing key `{key}` in {}",
                self.loc(offset),
                self.table_name(&path)
            ));
        }

        // A bad value: name the key it sits under.
        let is_table = self.get(&path).is_some_and(|v| v.get_ref().is_table());
        let key_at = path.iter().enumerate().rev().find_map(|(i, s)| match s {
            Seg::Key(k) => Some((i, k)),
            Seg::Index(_) => None,
        });
        let text = match (is_table && hit == Hit::Value, key_at) {
            (false, Some((i, key))) => {
                format!("key `{key}` {}: {}", self.in_table(&path[..i]), tidy(msg))
            }
            _ => format!("{}: {}", self.table_name(&path), tidy(msg)),
        };
        ConfigError::new(format!("{}: {text}", self.loc(offset)))
    }
}

/// The words between backticks, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Replaces serde's Rust-flavoured type names with TOML words.
fn tidy(msg: &str) -> String {
    let mut out = msg
        .replace("a sequence", "an array")
        .replace("a map", "a table")
        .replace("internally tagged enum RawRule", "a table")
        .replace("expected u16", "expected an integer from 0 to 65535")
        .replace("expected usize", "expected an integer >= 0")
        .replace("expected u64", "expected an integer >= 0")
        .replace("expected f64", "expected a number");
    while let Some(start) = out.find("struct Raw") {
        let end = out[start + "struct ".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |e| start + "struct ".len() + e);
        out.replace_range(start..end, "a table");
    }
    out
}

/// A key as written in a TOML header: bare when possible, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { k.to_owned() } else { format!("{k:?}") }
}
