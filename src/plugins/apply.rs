//! `response-healing`'s `post_response`: where the reply text and the
//! tool-call arguments live in each client format, and what is done with
//! them. The repair itself is [`super::healing`].
//!
//! - Buffered replies (2xx): each text (OpenAI chat `choices[].message.content`,
//!   Anthropic `content[]` text blocks, Responses `output[]` message
//!   `output_text`) that is not valid JSON but contains JSON is replaced by
//!   its repair when the repair parses; prose is left alone. Tool-call
//!   arguments (OpenAI `tool_calls[].function.arguments`, Responses
//!   `function_call.arguments`) are repaired the same way. The body is
//!   re-serialized only when something changed, so an untouched reply keeps
//!   its bytes.
//! - Streams: the bytes are already with the client, so nothing is changed;
//!   the log line's `notes` says whether the streamed text was valid JSON,
//!   prose, or would have been repaired.

use serde_json::Value;

use super::Post;
use super::healing::{self, Healed};
use crate::formats::Format;

/// Run response-healing on one reply.
pub fn post_response(post: &mut Post<'_>) {
    if !post.ok {
        return;
    }
    let Some(body) = post.body.as_deref_mut() else {
        let note = match healing::heal(post.text) {
            Healed::Valid => "streamed text is valid JSON",
            Healed::Repaired(_) => "streamed text is not valid JSON; a repair would parse",
            Healed::Unrepairable => "streamed text is not valid JSON; no repair parses",
            Healed::Prose => "streamed text is prose, left alone",
        };
        post.notes.push(format!("response-healing: {note}"));
        return;
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let mut repaired = 0usize;
    let mut heal_text = |t: &mut Value| {
        if let Value::String(s) = t
            && let Healed::Repaired(fixed) = healing::heal(s)
        {
            *s = fixed;
            repaired += 1;
        }
    };
    let mut args_fixed = 0usize;
    let mut heal_args = |t: &mut Value| {
        if let Value::String(s) = t
            && let Some(fixed) = healing::heal_arguments(s)
        {
            *s = fixed;
            args_fixed += 1;
        }
    };
    match post.client {
        Format::OpenAiChat => {
            for choice in array_mut(&mut v, "choices") {
                let Some(msg) = choice.get_mut("message") else {
                    continue;
                };
                if let Some(c) = msg.get_mut("content") {
                    heal_text(c);
                }
                for call in array_mut(msg, "tool_calls") {
                    if let Some(a) = call
                        .get_mut("function")
                        .and_then(|f| f.get_mut("arguments"))
                    {
                        heal_args(a);
                    }
                }
            }
        }
        Format::Anthropic => {
            for block in array_mut(&mut v, "content") {
                if block.get("type").and_then(Value::as_str) == Some("text")
                    && let Some(t) = block.get_mut("text")
                {
                    heal_text(t);
                }
            }
        }
        Format::Responses => {
            for item in array_mut(&mut v, "output") {
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        for part in array_mut(item, "content") {
                            if part.get("type").and_then(Value::as_str) == Some("output_text")
                                && let Some(t) = part.get_mut("text")
                            {
                                heal_text(t);
                            }
                        }
                    }
                    Some("function_call") => {
                        if let Some(a) = item.get_mut("arguments") {
                            heal_args(a);
                        }
                    }
                    _ => {}
                }
            }
        }
        Format::Ollama => {}
    }
    if repaired + args_fixed == 0 {
        return;
    }
    if let Ok(bytes) = serde_json::to_vec(&v) {
        *body = bytes;
        post.notes.push(format!(
            "response-healing: repaired {repaired} text(s), {args_fixed} tool argument(s)"
        ));
    }
}

/// The array under `key`, or nothing.
fn array_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}
