//! [`parse_chat_request`]: validate an OpenAI chat-completions body and pull out
//! what the pipeline reads, walking a `simd-json` tape (a flat array of nodes,
//! so the walk is a few slice splits; no DOM, no recursion on the input).

use std::cell::Cell;
use std::ops::Range;

use serde_json::{Map, Number, Value};
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Node, StaticNode, Tape, fill_tape_padded};

use super::top::from_structurals;
use super::{JsonError, MAX_DEPTH, TopLevel, scan_top_level};

/// One entry of the body's `plugins` array (docs/plugins.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginRequest {
    pub id: String,
    /// Every key of the entry except `id`; overrides the config's settings.
    pub settings: Map<String, Value>,
}

/// Everything the pipeline reads from a chat-completions request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequestInfo {
    /// The requested model, unescaped.
    pub model: String,
    /// `"stream": true`. Absent, `false` and `null` mean not streamed.
    pub stream: bool,
    /// `stream_options.include_usage == true`.
    pub include_usage: bool,
    /// The per-request plugins, in body order.
    pub plugins: Vec<PluginRequest>,
    /// The text of the system and developer messages, joined with `"\n"`.
    pub system: String,
    /// Span of the `messages` value in the body (for the log line).
    pub messages_json: Range<usize>,
    /// Arena for [`texts`](Self::texts): the unescaped text of every message.
    pub text: String,
    /// Ranges of `text`: each message's string content, or each text part of an
    /// array content, in order, system messages included. Empty texts are left out.
    pub texts: Vec<Range<usize>>,
    /// Some content part is an image (`image_url` or `input_image`).
    pub has_images: bool,
    /// A non-empty `tools` (or legacy `functions`) array.
    pub has_tools: bool,
    /// The root object's members, for [`splice_request`](super::splice_request).
    pub top: TopLevel,
}

impl ChatRequestInfo {
    /// The message texts, for the keyword classifier.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.texts
            .iter()
            .map(|r| self.text.get(r.clone()).unwrap_or_default())
    }
}

/// The parser's buffers and tape, kept per thread so a request allocates none
/// of them in the steady state. A `Cell<Option<_>>` (taken, then put back) needs
/// no borrow guard and cannot be held across an `.await`.
struct Reuse {
    buffers: Buffers,
    tape: Tape<'static>,
}

thread_local! {
    static REUSE: Cell<Option<Reuse>> = const { Cell::new(None) };
}

/// Bodies above this size do not leave their (body-sized) buffers behind.
const KEEP_BUFFERS_UP_TO: usize = 1 << 20;

/// Validate `body` as JSON and extract a [`ChatRequestInfo`].
///
/// `scratch` is a reusable buffer that receives a padded copy of the body
/// (`simd-json` unescapes strings in place); its content afterwards is
/// unspecified. Errors name the offending field, e.g. "`model` must be a string".
pub fn parse_chat_request(
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<ChatRequestInfo, JsonError> {
    let len = body.len();
    scratch.clear();
    // copy: simd-json parses in place; the client's bytes stay intact for forwarding
    scratch.reserve(len + INPUT_PADDING);
    scratch.extend_from_slice(body);
    scratch.resize(len + INPUT_PADDING, b' ');

    let Reuse { mut buffers, tape } = REUSE.take().unwrap_or_else(|| Reuse {
        buffers: Buffers::with_max_depth(0, MAX_DEPTH),
        tape: Tape::null(),
    });
    let mut tape = tape.reset();
    let result = match fill_tape_padded(scratch, len, &mut buffers, &mut tape) {
        Ok(()) => extract(body, &tape.0, buffers.structural_indexes()),
        Err(e) => Err(parse_error(body, &e)),
    };
    let tape = tape.reset();
    if len <= KEEP_BUFFERS_UP_TO {
        REUSE.set(Some(Reuse { buffers, tape }));
    }
    result
}

/// Word a `simd-json` error for the client. The structural pass names most
/// syntax errors better (and with a byte offset), so it runs first, on this
/// error path only; what it cannot see (UTF-8, escapes, numbers) is mapped here.
fn parse_error(body: &[u8], e: &simd_json::Error) -> JsonError {
    if let Err(structural) = scan_top_level(body) {
        return structural;
    }
    match e.error() {
        ErrorType::InvalidUtf8 => JsonError::invalid("invalid UTF-8"),
        ErrorType::InvalidUnicodeCodepoint | ErrorType::InvalidUnicodeEscape => {
            JsonError::invalid("invalid \\u escape (a lone surrogate?)")
        }
        ErrorType::InvalidEscape => JsonError::invalid("invalid escape in a string"),
        ErrorType::InvalidNumber | ErrorType::InvalidExponent | ErrorType::Overflow => {
            JsonError::invalid("invalid or out-of-range number")
        }
        ErrorType::DepthLimitExceeded => {
            JsonError::invalid(format_args!("nesting deeper than {MAX_DEPTH} levels"))
        }
        _ => JsonError::invalid(e),
    }
}

fn extract(
    body: &[u8],
    root: &[Node<'_>],
    structurals: &[u32],
) -> Result<ChatRequestInfo, JsonError> {
    if !matches!(root.first(), Some(Node::Object { .. })) {
        return Err(JsonError("request body must be a JSON object".into()));
    }
    let top = match from_structurals(body, structurals, members(root).map(|(k, _)| k)) {
        Some(top) => top,
        // Unreachable for a body simd-json accepted; the byte scan is the safe answer.
        None => scan_top_level(body)?,
    };
    let mut info = ChatRequestInfo::default();
    let (mut model, mut stream, mut stream_options) = (None, None, None);
    let (mut plugins, mut messages, mut tools) = (None, None, None);
    // Last occurrence wins for duplicate keys, as in `TopLevel::get`.
    for (key, value) in members(root) {
        match key {
            "model" => model = Some(value),
            "stream" => stream = Some(value),
            "stream_options" => stream_options = Some(value),
            "plugins" => plugins = Some(value),
            "messages" => messages = Some(value),
            "tools" | "functions" => tools = Some(value),
            _ => {}
        }
    }

    info.model = match model.map(first) {
        Some(Some(Node::String(s))) => (*s).to_owned(),
        Some(_) => return Err(JsonError("`model` must be a string".into())),
        None => return Err(JsonError("`model` is required".into())),
    };
    info.stream = match stream.map(first) {
        None | Some(Some(Node::Static(StaticNode::Null))) => false,
        Some(Some(Node::Static(StaticNode::Bool(b)))) => *b,
        Some(_) => return Err(JsonError("`stream` must be a boolean".into())),
    };
    info.include_usage = stream_options.is_some_and(|o| {
        members(o).any(|(k, v)| {
            k == "include_usage" && first(v) == Some(&Node::Static(StaticNode::Bool(true)))
        })
    });
    info.has_tools =
        tools.is_some_and(|t| matches!(first(t), Some(Node::Array { len, .. }) if *len > 0));
    if let Some(p) = plugins {
        info.plugins = read_plugins(p)?;
    }
    match messages.map(first) {
        Some(Some(Node::Array { .. })) => {}
        Some(_) => return Err(JsonError("`messages` must be an array".into())),
        None => return Err(JsonError("`messages` is required".into())),
    }
    if let Some(m) = messages {
        read_messages(m, &mut info);
    }
    info.messages_json = top.get("messages").map_or(0..0, |m| m.value.clone());
    info.top = top;
    Ok(info)
}

fn read_plugins(value: &[Node<'_>]) -> Result<Vec<PluginRequest>, JsonError> {
    match first(value) {
        Some(Node::Static(StaticNode::Null)) => return Ok(Vec::new()),
        Some(Node::Array { .. }) => {}
        _ => return Err(JsonError("`plugins` must be an array".into())),
    }
    let mut plugins = Vec::new();
    for (i, entry) in elements(value).enumerate() {
        if !matches!(first(entry), Some(Node::Object { .. })) {
            return Err(JsonError(format!(
                "`plugins[{i}]` must be an object with an `id`"
            )));
        }
        let mut id = None;
        let mut settings = Map::new();
        for (key, v) in members(entry) {
            if key == "id" {
                id = Some(v);
            } else {
                settings.insert(key.to_owned(), to_value(v));
            }
        }
        let Some(Node::String(id)) = id.and_then(first) else {
            return Err(JsonError(format!("`plugins[{i}].id` must be a string")));
        };
        plugins.push(PluginRequest {
            id: (*id).to_owned(),
            settings,
        });
    }
    Ok(plugins)
}

/// Collect texts and flags from `messages`. Entries of unexpected shapes are
/// skipped, not rejected: validating the chat schema is the upstream's job.
fn read_messages(messages: &[Node<'_>], info: &mut ChatRequestInfo) {
    for message in elements(messages) {
        let (mut role, mut content) = (None, None);
        for (key, v) in members(message) {
            match key {
                "role" => role = Some(v),
                "content" => content = Some(v),
                _ => {}
            }
        }
        let system = matches!(
            role.and_then(first),
            Some(Node::String("system" | "developer"))
        );
        let Some(content) = content else { continue };
        match first(content) {
            Some(Node::String(s)) => push_text(info, s, system),
            Some(Node::Array { .. }) => {
                for part in elements(content) {
                    let (mut kind, mut text) = ("", None);
                    for (key, v) in members(part) {
                        match (key, first(v)) {
                            ("type", Some(Node::String(t))) => kind = t,
                            ("text", Some(Node::String(t))) => text = Some(*t),
                            _ => {}
                        }
                    }
                    match (kind, text) {
                        ("text" | "input_text" | "output_text", Some(t)) => {
                            push_text(info, t, system)
                        }
                        ("image_url" | "input_image", _) => info.has_images = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn push_text(info: &mut ChatRequestInfo, s: &str, system: bool) {
    if s.is_empty() {
        return;
    }
    // copy: the tape's strings live in `scratch`; the arena lets the info outlive it.
    let start = info.text.len();
    info.text.push_str(s);
    info.texts.push(start..info.text.len());
    if system {
        if !info.system.is_empty() {
            info.system.push('\n');
        }
        info.system.push_str(s);
    }
}

/// A value's first node (its type); `None` only for a malformed tape.
fn first<'t, 'i>(value: &'t [Node<'i>]) -> Option<&'t Node<'i>> {
    value.first()
}

/// How many tape nodes the value starting with `node` spans.
fn extent(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Split one value (of `extent` nodes) off the front of `rest`.
fn split_value<'t, 'i>(rest: &mut &'t [Node<'i>]) -> Option<&'t [Node<'i>]> {
    let n = extent(rest.first()?);
    let (value, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(value)
}

/// The members of an object value (nothing if `value` is not an object).
fn members<'t, 'i>(value: &'t [Node<'i>]) -> impl Iterator<Item = (&'i str, &'t [Node<'i>])> {
    let (mut rest, left) = match value.split_first() {
        Some((Node::Object { len, .. }, rest)) => (rest, *len),
        _ => (&[][..], 0),
    };
    (0..left).map_while(move |_| {
        let (Node::String(key), tail) = rest.split_first()? else {
            return None;
        };
        rest = tail;
        Some((*key, split_value(&mut rest)?))
    })
}

/// The elements of an array value (nothing if `value` is not an array).
fn elements<'t, 'i>(value: &'t [Node<'i>]) -> impl Iterator<Item = &'t [Node<'i>]> {
    let (mut rest, left) = match value.split_first() {
        Some((Node::Array { len, .. }, rest)) => (rest, *len),
        _ => (&[][..], 0),
    };
    (0..left).map_while(move |_| split_value(&mut rest))
}

/// A tape value as a `serde_json::Value` (plugin settings only: small, and
/// the recursion is bounded by [`MAX_DEPTH`], which the parser enforced).
fn to_value(value: &[Node<'_>]) -> Value {
    match first(value) {
        Some(Node::String(s)) => Value::String((*s).to_owned()),
        Some(Node::Object { .. }) => Value::Object(
            members(value)
                .map(|(k, v)| (k.to_owned(), to_value(v)))
                .collect(),
        ),
        Some(Node::Array { .. }) => Value::Array(elements(value).map(to_value).collect()),
        Some(Node::Static(s)) => match *s {
            StaticNode::I64(i) => Value::from(i),
            StaticNode::U64(u) => Value::from(u),
            StaticNode::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            StaticNode::Bool(b) => Value::Bool(b),
            // `Null`, and the 128-bit variants should a dependency enable them.
            #[allow(unreachable_patterns)]
            _ => Value::Null,
        },
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &str) -> Result<ChatRequestInfo, JsonError> {
        parse_chat_request(body.as_bytes(), &mut Vec::new())
    }

    fn err(body: impl AsRef<[u8]>) -> String {
        parse_chat_request(body.as_ref(), &mut Vec::new())
            .unwrap_err()
            .0
    }

    #[test]
    fn extracts_everything_routing_reads() {
        let body = r#"{
            "model": "gpt-4o\u002dmini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "plugins": [{"id": "pareto-router", "tier": "high", "n": [1, 2.5, -3, null, false]}, {"id":"response-healing"}],
            "messages": [
                {"role": "system", "content": "Be terse.\nAlways."},
                {"role": "developer", "content": [{"type": "text", "text": "Use \"JSON\"."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Describe ü"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": ""}
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "unknown": {"model": "not this one"}
        }"#;
        let info = parse(body).unwrap();
        assert_eq!(info.model, "gpt-4o-mini");
        assert!(info.stream);
        assert!(info.include_usage);
        assert!(info.has_images);
        assert!(info.has_tools);
        assert_eq!(info.system, "Be terse.\nAlways.\nUse \"JSON\".");
        assert_eq!(
            info.texts().collect::<Vec<_>>(),
            ["Be terse.\nAlways.", "Use \"JSON\".", "Describe ü", "42"]
        );
        assert_eq!(info.plugins.len(), 2);
        assert_eq!(info.plugins[0].id, "pareto-router");
        assert_eq!(
            Value::Object(info.plugins[0].settings.clone()),
            json!({"tier": "high", "n": [1, 2.5, -3, null, false]})
        );
        assert_eq!(
            info.plugins[1],
            PluginRequest {
                id: "response-healing".into(),
                settings: Map::new()
            }
        );
        let messages: Value = serde_json::from_str(&body[info.messages_json.clone()]).unwrap();
        assert_eq!(messages.as_array().map(Vec::len), Some(6));
        assert_eq!(info.top.members().len(), 7);
    }

    #[test]
    fn defaults_for_a_minimal_request() {
        let info = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(info.model, "m");
        assert!(!info.stream && !info.include_usage && !info.has_images && !info.has_tools);
        assert!(info.plugins.is_empty() && info.system.is_empty());
        assert_eq!(info.texts().collect::<Vec<_>>(), ["hi"]);

        let info = parse(r#"{"model":"m","messages":[],"stream":false,"stream_options":{"include_usage":false},"tools":[],"plugins":null}"#).unwrap();
        assert!(!info.stream && !info.include_usage && !info.has_tools);
        let info =
            parse(r#"{"model":"m","messages":[],"stream":null,"stream_options":null}"#).unwrap();
        assert!(!info.stream && !info.include_usage);
        // Odd message shapes are skipped, not rejected (the upstream validates the schema).
        let info = parse(r#"{"model":"m","messages":[1,"x",null,{"content":7},{"content":[1,{"type":"text"},{"text":"no type"}]}]}"#).unwrap();
        assert_eq!(info.texts().count(), 0);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let info = parse(r#"{"model":"a","messages":[],"model":"b","stream":true,"stream":false}"#)
            .unwrap();
        assert_eq!(info.model, "b");
        assert!(!info.stream);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (r#"{"messages":[]}"#, "`model` is required"),
            (r#"{"model":7,"messages":[]}"#, "`model` must be a string"),
            (
                r#"{"model":null,"messages":[]}"#,
                "`model` must be a string",
            ),
            (r#"{"model":"m"}"#, "`messages` is required"),
            (
                r#"{"model":"m","messages":{}}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"model":"m","messages":[],"stream":"true"}"#,
                "`stream` must be a boolean",
            ),
            (
                r#"{"model":"m","messages":[],"stream":1}"#,
                "`stream` must be a boolean",
            ),
            (
                r#"{"model":"m","messages":[],"plugins":{"id":"x"}}"#,
                "`plugins` must be an array",
            ),
            (
                r#"{"model":"m","messages":[],"plugins":["x"]}"#,
                "`plugins[0]` must be an object with an `id`",
            ),
            (
                r#"{"model":"m","messages":[],"plugins":[{"id":"a"},{"tier":"x"}]}"#,
                "`plugins[1].id` must be a string",
            ),
            (
                r#"{"model":"m","messages":[],"plugins":[{"id":3}]}"#,
                "`plugins[0].id` must be a string",
            ),
            ("[]", "request body must be a JSON object"),
            ("", "request body is not valid JSON: the body is empty"),
        ];
        for (body, want) in cases {
            assert_eq!(err(body), want, "body {body}");
        }
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        let invalid = |body: &[u8]| {
            let e = err(body);
            assert!(e.starts_with("request body is not valid JSON: "), "{e}");
        };
        invalid(br#"{"model":"\ud800","messages":[]}"#);
        invalid(br#"{"model":"\udc00x","messages":[]}"#);
        invalid(br#"{"model":"\ud800\u0041","messages":[]}"#);
        invalid(b"{\"model\":\"\xff\xfe\",\"messages\":[]}");
        invalid(b"{\"model\":\"a\",\"messages\":[],\"x\":\"\xc3\"}");
        invalid(b"{\"model\":\"a\x01\",\"messages\":[]}");
        invalid(br#"{"model":"a","messages":[],"n":01}"#);
        invalid(br#"{"model":"a","messages":[}"#);
        invalid(br#"{"model":"a","messages":[]} {}"#);
        invalid(br#"{"model":"a","messages":[{"content":"x",}]}"#);

        let mut deep = br#"{"model":"m","messages":"#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        invalid(&deep);
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.push(b'}');
        invalid(&deep);
        // Past the structural pass, simd-json enforces the same depth.
        let nest = |levels: usize| {
            let inner = levels - 2;
            format!(
                r#"{{"model":"m","messages":[{}{}]}}"#,
                "[".repeat(inner),
                "]".repeat(inner)
            )
        };
        assert!(parse(&nest(128)).is_ok());
        invalid(nest(129).as_bytes());
    }

    #[test]
    fn big_strings_and_scratch_reuse() {
        let mut scratch = Vec::new();
        let big = "x".repeat(10 << 20);
        let body = format!(r#"{{"model":"big","messages":[{{"role":"user","content":"{big}"}}]}}"#);
        let info = parse_chat_request(body.as_bytes(), &mut scratch).unwrap();
        assert_eq!(info.texts().next().map(str::len), Some(10 << 20));
        // The same scratch (and this thread's buffers) serve the next, smaller body.
        for model in ["a", "bb", "c\\n"] {
            let body =
                format!(r#"{{"model":"{model}","messages":[{{"role":"system","content":"s"}}]}}"#);
            let info = parse_chat_request(body.as_bytes(), &mut scratch).unwrap();
            assert_eq!(info.model, model.replace("\\n", "\n"));
            assert_eq!(info.system, "s");
            assert!(err("{\"model\":1}").contains("`model`"));
        }
    }

    #[test]
    fn top_from_the_parse_equals_the_byte_scan() {
        let bodies = [
            r#"{"model":"m","messages":[]}"#,
            " {\n\t\"model\" :\t\"m\"\r\n, \"messages\" : [ {\"content\":\"}],\\\"\"} ] ,\"n\":  -1.5e3 , \"b\":true\n,\"s\":\"x\" }\n",
            r#"{"mod\u0065l":"m","messages":[[[]],{}],"plugins":[{"id":"p"}],"e":{},"a":[],"z":null}"#,
            r#"{"messages":[],"model":"a","model":"b","x":"\\"}"#,
        ];
        for body in bodies {
            let info = parse(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(info.top, scan_top_level(body.as_bytes()).unwrap(), "{body}");
            assert_eq!(&body[info.messages_json.clone()][..1], "[");
        }
    }

    /// `from_structurals` (the parse's token walk) and `scan_top_level` (the
    /// byte walk) must agree on every span of any valid body.
    #[test]
    fn structural_walk_equals_byte_scan() {
        let bodies = [
            "{}",
            " { } ",
            r#"{"a":1}"#,
            "{\n\t\"a\"\t:\r\n\"x\\\"y\" , \"b\":[ {\"c\":[[],{}]} ] ,\"c\" : -0.5e+3\n,\"d\":true,\"e\":false,\"f\":null}\n",
            r#"{"":"","\\":"\\","\u00e9":{"\"":"}"},"x":"[{"}"#,
            r#"{"dup":1,"dup":[2],"dup":{"3":3}}"#,
            r#"{"s":"a string with \"quotes\", {braces} and [brackets]","n":12345678901234567890}"#,
        ];
        let mut scratch = Vec::new();
        let mut buffers = Buffers::with_max_depth(0, MAX_DEPTH);
        for body in bodies {
            let b = body.as_bytes();
            scratch.clear();
            scratch.extend_from_slice(b);
            scratch.resize(b.len() + INPUT_PADDING, b' ');
            let mut tape = Tape::null();
            fill_tape_padded(&mut scratch, b.len(), &mut buffers, &mut tape).unwrap();
            let keys = members(&tape.0).map(|(k, _)| k);
            let walked = from_structurals(b, buffers.structural_indexes(), keys);
            assert_eq!(walked, Some(scan_top_level(b).unwrap()), "{body}");
        }
    }
}
