//! The root object's members as byte spans, and the byte splice that forwards a
//! body with a new `model` and without `plugins`.

use std::ops::Range;

use super::scan::{key_text, skip_value, walk_object};
use super::{JsonError, write_json_string};

/// One member of the root object, as spans of the body it was scanned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key as written, without its quotes (escapes not resolved).
    pub key: Range<usize>,
    /// From the key's opening quote to the end of the value.
    pub member: Range<usize>,
    /// The value as written (a string value includes its quotes).
    pub value: Range<usize>,
    /// The key with escapes resolved, in [`TopLevel`]'s name arena.
    name: Range<usize>,
}

/// The members of a body's root object, in document order (duplicates kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopLevel {
    members: Vec<Member>,
    /// Resolved keys, back to back; keys are short, so this is one small allocation
    /// that lets [`TopLevel::get`] work without the body and see through escapes
    /// (`"mod\u0065l"` is the key `model` to every JSON parser, so to us too).
    names: Vec<u8>,
}

impl TopLevel {
    /// The member named `key`; the last one when the key is duplicated (what
    /// `simd-json`, `serde_json` maps and most upstreams do).
    pub fn get(&self, key: &str) -> Option<&Member> {
        self.members
            .iter()
            .rev()
            .find(|m| self.name(m) == key.as_bytes())
    }

    /// Every member, in document order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The resolved key of `member` (a member of this `TopLevel`).
    pub fn name(&self, member: &Member) -> &[u8] {
        self.names.get(member.name.clone()).unwrap_or_default()
    }
}

/// Find the members of the root object of `body` in one pass over its bytes.
///
/// The root must be an object; its keys, colons, commas and scalar values are
/// checked, nested objects and arrays are skipped by depth (bracket kinds
/// matched, depth bounded by [`MAX_DEPTH`](super::MAX_DEPTH)) and strings are skipped to their
/// closing quote. String contents, UTF-8 and numbers are not validated: that is
/// [`parse_chat_request`](super::parse_chat_request)'s job.
pub fn scan_top_level(body: &[u8]) -> Result<TopLevel, JsonError> {
    let start = body
        .iter()
        .position(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'));
    match start.map(|i| (i, body[i])) {
        Some((_, b'{')) => {}
        None => return Err(JsonError::invalid("the body is empty")),
        Some(_) => return Err(JsonError("request body must be a JSON object".into())),
    }
    let mut top = TopLevel::default();
    let end = walk_object(body, start.unwrap_or_default(), |key, value_start| {
        let name_start = top.names.len();
        match key_text(body, &key) {
            Some(k) => top.names.extend_from_slice(k.as_bytes()),
            None => {
                let at = key.span.start - 1;
                return Err(JsonError::invalid(format_args!(
                    "invalid object key at byte {at}"
                )));
            }
        }
        let value_end = skip_value(body, value_start)?;
        top.members.push(Member {
            member: key.span.start - 1..value_end,
            key: key.span,
            value: value_start..value_end,
            name: name_start..top.names.len(),
        });
        Ok(value_end)
    })?;
    let trailing = body.get(end..).unwrap_or_default();
    if let Some(off) = trailing
        .iter()
        .position(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return Err(JsonError::invalid(format_args!(
            "unexpected characters after the JSON object at byte {}",
            end + off
        )));
    }
    Ok(top)
}

/// Build the [`TopLevel`] of a body `simd-json` has already validated, from the
/// byte offsets of its structural characters (stage 1 of the parse records them:
/// `{}[]:,`, each string's opening quote, each scalar's first byte) and the
/// root's keys as the tape holds them (unescaped, in order). This walks tokens,
/// not bytes, so it costs a small fraction of a second pass over the body.
/// `None` if the inputs disagree, which a validated body never produces.
pub(super) fn from_structurals<'k>(
    body: &[u8],
    structurals: &[u32],
    mut keys: impl Iterator<Item = &'k str>,
) -> Option<TopLevel> {
    let mut it = structurals.iter().map(|&i| i as usize);
    let at = |i: usize| body.get(i).copied();
    let mut top = TopLevel::default();
    if at(it.next()?)? != b'{' {
        return None;
    }
    loop {
        let key_start = it.next()?;
        match at(key_start)? {
            b'"' => {}
            b'}' if top.members.is_empty() => break,
            _ => return None,
        }
        let colon = it.next()?;
        // The key's closing quote is the last quote before the colon.
        let key_end = key_start
            + 1
            + body
                .get(key_start + 1..colon)?
                .iter()
                .rposition(|&c| c == b'"')?;
        let value_start = it.next()?;
        let mut value_end = None;
        if let b'{' | b'[' = at(value_start)? {
            let mut depth = 1usize;
            while depth > 0 {
                let i = it.next()?;
                match at(i)? {
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
                value_end = Some(i + 1);
            }
        }
        let separator = it.next()?;
        // A string or scalar ends where the whitespace before the separator starts.
        let value_end = match value_end {
            Some(end) => end,
            None => {
                let between = body.get(value_start..separator)?;
                value_start
                    + between
                        .iter()
                        .rposition(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'))?
                    + 1
            }
        };
        let name_start = top.names.len();
        top.names.extend_from_slice(keys.next()?.as_bytes());
        top.members.push(Member {
            key: key_start + 1..key_end,
            member: key_start..value_end,
            value: value_start..value_end,
            name: name_start..top.names.len(),
        });
        match at(separator)? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    match keys.next() {
        None => Some(top),
        Some(_) => None,
    }
}

/// Write `body` to `out` with every root-level `model` value replaced by the
/// JSON string `new_model` (when given) and every root-level `plugins` member
/// removed together with one separating comma. All other bytes are copied
/// unchanged: key order, whitespace, unknown fields, nested `model` keys.
///
/// `top` must be [`scan_top_level`] of this `body`.
pub fn splice_request(body: &[u8], top: &TopLevel, new_model: Option<&str>, out: &mut Vec<u8>) {
    let members = top.members();
    out.reserve(body.len() + new_model.map_or(0, |m| m.len() + 2));
    let is_plugins = |m: &Member| top.name(m) == b"plugins";
    let last_kept = members.iter().rposition(|m| !is_plugins(m));
    let mut pos = 0;
    let copy_to = |out: &mut Vec<u8>, pos: &mut usize, end: usize| {
        if let Some(bytes) = body.get(*pos..end) {
            out.extend_from_slice(bytes);
            *pos = end;
        }
    };
    for (i, m) in members.iter().enumerate() {
        if is_plugins(m) {
            // Drop the member with the comma after it when a kept member follows
            // (`"plugins":[], "b"` → `"b"`), else with the comma before it
            // (`"a":1, "plugins":[]` → `"a":1`). The ranges of consecutive
            // removed members then tile without overlapping.
            let cut = match (last_kept, members.get(i + 1), i.checked_sub(1)) {
                (Some(k), Some(next), _) if k > i => m.member.start..next.member.start,
                (_, _, Some(p)) => {
                    members.get(p).map_or(m.member.start, |p| p.member.end)..m.member.end
                }
                _ => m.member.clone(),
            };
            copy_to(out, &mut pos, cut.start);
            pos = pos.max(cut.end);
        } else if let Some(model) = new_model
            && top.name(m) == b"model"
        {
            copy_to(out, &mut pos, m.value.start);
            write_json_string(out, model);
            pos = pos.max(m.value.end);
        }
    }
    copy_to(out, &mut pos, body.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn splice(body: &str, model: Option<&str>) -> String {
        let top = scan_top_level(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        splice_request(body.as_bytes(), &top, model, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn splice_is_byte_exact() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            // model first / last / middle
            (
                r#"{"model":"a","messages":[]}"#,
                Some("b"),
                r#"{"model":"b","messages":[]}"#,
            ),
            (
                r#"{"messages":[],"model":"a"}"#,
                Some("b"),
                r#"{"messages":[],"model":"b"}"#,
            ),
            (
                "{ \"x\" : 1 ,\n  \"model\" :  \"a\" ,\n \"y\":2 }",
                Some("gpt-4o"),
                "{ \"x\" : 1 ,\n  \"model\" :  \"gpt-4o\" ,\n \"y\":2 }",
            ),
            // plugins first / last / middle / only member
            (
                r#"{"plugins":[{"id":"p"}], "model":"a"}"#,
                Some("b"),
                r#"{"model":"b"}"#,
            ),
            (
                "{\"model\":\"a\",\n  \"plugins\": []\n}",
                Some("b"),
                "{\"model\":\"b\"\n}",
            ),
            (
                r#"{"a":1, "plugins":{"x":[1,2]}, "b":2}"#,
                None,
                r#"{"a":1, "b":2}"#,
            ),
            ("{ \"plugins\": [] }", None, "{  }"),
            ("{\"plugins\":[]}", Some("m"), "{}"),
            // whitespace and newlines around commas survive
            (
                "{\r\n\t\"model\"\t:\t\"a\"\r\n\t,\r\n\t\"plugins\" : [ ]\r\n\t,\r\n\t\"z\" : null\r\n}",
                Some("b"),
                "{\r\n\t\"model\"\t:\t\"b\"\r\n\t,\r\n\t\"z\" : null\r\n}",
            ),
            // duplicate keys: every model replaced, every plugins removed
            (
                r#"{"model":"a","plugins":[],"model":"c","plugins":null}"#,
                Some("b"),
                r#"{"model":"b","model":"b"}"#,
            ),
            (r#"{"plugins":1,"plugins":2,"a":3}"#, None, r#"{"a":3}"#),
            (r#"{"plugins":1,"plugins":2}"#, None, r#"{}"#),
            (r#"{"a":0,"plugins":1,"plugins":2}"#, None, r#"{"a":0}"#),
            (r#"{"plugins":1,"a":0,"plugins":2}"#, None, r#"{"a":0}"#),
            // escapes and unicode in the new model; odd old values
            (
                r#"{"model":"a"}"#,
                Some("q\"uote/ünï\n🦀"),
                r#"{"model":"q\"uote/ünï\n🦀"}"#,
            ),
            (r#"{"model":"a\"b\\"}"#, Some("x"), r#"{"model":"x"}"#),
            (r#"{"model":42}"#, Some("x"), r#"{"model":"x"}"#),
            (
                r#"{"model":{"nested":"model"}}"#,
                Some("x"),
                r#"{"model":"x"}"#,
            ),
            // nested `model` / `plugins` keys, and look-alikes in strings, stay
            (
                r#"{"messages":[{"model":"m","plugins":[],"content":"\"model\":\"a\""}],"model":"a"}"#,
                Some("b"),
                r#"{"messages":[{"model":"m","plugins":[],"content":"\"model\":\"a\""}],"model":"b"}"#,
            ),
            // escaped keys are the same keys
            (
                r#"{"mod\u0065l":"a","plugin\u0073":[]}"#,
                Some("b"),
                r#"{"mod\u0065l":"b"}"#,
            ),
            // nothing to do: identical bytes
            (
                r#"{"model":"a", "unknown":{"x":[1,2.5e3,true,null]}}"#,
                None,
                r#"{"model":"a", "unknown":{"x":[1,2.5e3,true,null]}}"#,
            ),
            (" {}\n", Some("x"), " {}\n"),
        ];
        for (body, model, want) in cases {
            assert_eq!(splice(body, *model), *want, "body {body:?}");
        }
    }

    /// Hand-written cases: the output must parse, and equal the input's value
    /// with `model` set and `plugins` removed.
    #[test]
    fn splice_output_is_the_expected_json() {
        let bodies = [
            r#"{"model":"a"}"#,
            r#"{"plugins":[]}"#,
            r#"{"plugins":[],"model":"a"}"#,
            r#"{"model":"a","plugins":[{"id":"x","k":{"a":[1,{"b":"}"}]}}]}"#,
            "{\n  \"model\": \"llama3\",\n  \"plugins\": [ {\"id\": \"web\"} ],\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"hi, \\\"model\\\": x\"}\n  ],\n  \"stream\": true\n}\n",
            r#"{"a":{},"b":[],"c":"","plugins":"x","d":-0.5e-3,"e":[[[]]],"model":null}"#,
            r#"{"plugins":null , "plugins" :[] ,"model":"a","z":{"plugins":[]}}"#,
            "\t{\"x\":\"\\\\\",\"plugins\":[\"]\"],\"y\":\"\\\"}\"}\r\n",
            r#"{"model":"日本語","messages":[{"content":[{"type":"text","text":"ü"}]}]}"#,
        ];
        for body in bodies {
            for model in [None, Some("new/model:7b"), Some("\u{1}\"\\")] {
                let out = splice(body, model);
                let got: Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("invalid output {out:?} for {body:?}: {e}"));
                let mut want: Value = serde_json::from_str(body).unwrap();
                let obj = want.as_object_mut().unwrap();
                obj.remove("plugins");
                if let Some(m) = model
                    && obj.contains_key("model")
                {
                    obj.insert("model".into(), Value::from(m));
                }
                assert_eq!(got, want, "body {body:?} model {model:?}");
            }
        }
    }

    #[test]
    fn members_have_exact_spans() {
        let body = br#" { "a" : [1, {"x": "]"}] , "b\"c":"v", "d":  true }"#;
        let top = scan_top_level(body).unwrap();
        let text = |r: &Range<usize>| std::str::from_utf8(&body[r.clone()]).unwrap();
        let spans: Vec<_> = top
            .members()
            .iter()
            .map(|m| (text(&m.key), text(&m.member), text(&m.value)))
            .collect();
        assert_eq!(
            spans,
            [
                ("a", r#""a" : [1, {"x": "]"}]"#, r#"[1, {"x": "]"}]"#),
                (r#"b\"c"#, r#""b\"c":"v""#, r#""v""#),
                ("d", r#""d":  true"#, "true"),
            ]
        );
        assert_eq!(top.name(&top.members()[1]), b"b\"c");
        assert_eq!(top.get("b\"c").map(|m| text(&m.value)), Some(r#""v""#));
        assert!(top.get("x").is_none());
    }

    #[test]
    fn get_returns_the_last_duplicate() {
        let body = br#"{"model":"a","model":"b"}"#;
        let top = scan_top_level(body).unwrap();
        assert_eq!(&body[top.get("model").unwrap().value.clone()], br#""b""#);
        assert_eq!(top.members().len(), 2);
    }

    #[test]
    fn value_spans_agree_with_serde_json() {
        let bodies = [
            r#"{"a":1,"b":[1,2,{"c":"d"}],"c":{"x":{"y":[]}},"d":"e\\\"f","e":-1.5E+3,"f":false,"g":null}"#,
            "{\"k\":\"\\\\\\\\\",\"l\":\"\\u0022\"}",
            r#"{"":"","\\":"\\"}"#,
        ];
        for body in bodies {
            let top = scan_top_level(body.as_bytes()).unwrap();
            let full: Value = serde_json::from_str(body).unwrap();
            for m in top.members() {
                let key = std::str::from_utf8(top.name(m)).unwrap();
                let v: Value = serde_json::from_slice(&body.as_bytes()[m.value.clone()]).unwrap();
                assert_eq!(Some(&v), full.get(key), "{key} in {body}");
            }
            assert_eq!(top.members().len(), full.as_object().unwrap().len());
        }
    }

    #[test]
    fn rejects_malformed_bodies() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "request body is not valid JSON: the body is empty"),
            (b"  \n", "request body is not valid JSON: the body is empty"),
            (b"[]", "request body must be a JSON object"),
            (b"\"model\"", "request body must be a JSON object"),
            (
                b"{",
                "request body is not valid JSON: expected an object key, found the end of the body",
            ),
            (
                br#"{"a"}"#,
                "request body is not valid JSON: expected ':' after an object key at byte 4",
            ),
            (
                br#"{"a":}"#,
                "request body is not valid JSON: expected a value at byte 5",
            ),
            (
                br#"{"a":1,}"#,
                "request body is not valid JSON: expected an object key at byte 7",
            ),
            (
                br#"{"a":1} x"#,
                "request body is not valid JSON: unexpected characters after the JSON object at byte 8",
            ),
            (
                br#"{"a":1}{}"#,
                "request body is not valid JSON: unexpected characters after the JSON object at byte 7",
            ),
            (
                br#"{"a":[}"#,
                "request body is not valid JSON: mismatched closing bracket at byte 6",
            ),
            (
                br#"{"a":{]}"#,
                "request body is not valid JSON: mismatched closing bracket at byte 6",
            ),
            (
                br#"{"a":[1"#,
                "request body is not valid JSON: unclosed object or array, found the end of the body",
            ),
            (
                br#"{"a":"x"#,
                "request body is not valid JSON: unterminated string starting at byte 5",
            ),
            (
                br#"{"a":"x\"}"#,
                "request body is not valid JSON: unterminated string starting at byte 5",
            ),
            (
                br#"{"a\"#,
                "request body is not valid JSON: unterminated string starting at byte 1",
            ),
            (
                br#"{"a":tru}"#,
                "request body is not valid JSON: invalid literal at byte 5",
            ),
            (
                br#"{"a":1x}"#,
                "request body is not valid JSON: invalid literal at byte 5",
            ),
            (
                br#"{"a":1 "b":2}"#,
                "request body is not valid JSON: expected ',' or '}' after an object member at byte 7",
            ),
            (
                br#"{a:1}"#,
                "request body is not valid JSON: expected an object key at byte 1",
            ),
        ];
        for (body, want) in cases {
            let got = scan_top_level(body).unwrap_err();
            assert_eq!(got.0, *want, "body {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn deep_nesting_is_bounded_without_recursion() {
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        let err = scan_top_level(&deep).unwrap_err();
        assert!(err.0.contains("nesting deeper than 128"), "{err}");
        assert!(scan_top_level(&[b'['; 100_000]).is_err());

        // The root counts: 128 levels pass, 129 do not (simd-json's bound too).
        let nest = |levels: usize| {
            let inner = levels - 1;
            format!("{{\"a\":{}{}}}", "[".repeat(inner), "]".repeat(inner))
        };
        assert!(scan_top_level(nest(128).as_bytes()).is_ok());
        assert!(scan_top_level(nest(129).as_bytes()).is_err());
    }

    #[test]
    fn long_strings_with_escapes_are_skipped() {
        let mut s = String::from("{\"messages\":\"");
        for i in 0..10_000 {
            s.push_str(["ab\\\"", "\\\\", "ü", "x\\n", "\\u00e9"][i % 5]);
        }
        s.push_str("\",\"model\":\"m\"}");
        let top = scan_top_level(s.as_bytes()).unwrap();
        assert_eq!(&s[top.get("model").unwrap().value.clone()], "\"m\"");
    }
}
