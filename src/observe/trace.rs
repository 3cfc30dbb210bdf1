//! W3C Trace Context (`traceparent`): parsing what a client sent, making new
//! ids, formatting the header sent upstream, and the sampling decision.
//!
//! A request either continues the client's trace (its `traceparent` names the
//! trace and the parent span) or starts one. The sampling decision is
//! parent-based: a parent's `sampled` flag is followed as it came; without a
//! parent the trace id itself decides ([`sampled`]), so every router process
//! reaches the same decision for the same trace.
//!
//! All functions here are pure and allocation-free except [`hex`].

/// What an incoming `traceparent` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the router's server span.
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
const V00_LEN: usize = 55;

/// Parses a `traceparent` header value; `None` when it is invalid (the request
/// then starts a new trace, as the W3C spec says).
///
/// Version `00` is parsed strictly: exactly 55 characters, lowercase hex, no
/// all-zero trace or parent id. A higher version is parsed by the spec's
/// forward-compatibility rules: at least 55 characters, the same first four
/// fields, then either the end or a `-` (more fields we do not understand);
/// only the `sampled` bit of its flags is used. Version `ff` is invalid.
/// Optional whitespace around the value (HTTP's OWS) is ignored.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
    let v = trim_ows(value);
    if v.len() < V00_LEN {
        return None;
    }
    let version = lower_hex_byte(&v[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0x00 && v.len() != V00_LEN {
        return None;
    }
    if v.len() > V00_LEN && v[V00_LEN] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    decode_lower_hex(&v[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    decode_lower_hex(&v[36..52], &mut span_id)?;
    let flags = lower_hex_byte(&v[53..55])?;
    if is_zero(&trace_id) || is_zero(&span_id) {
        return None;
    }
    Some(TraceContext {
        trace_id,
        parent_span_id: Some(span_id),
        sampled: flags & 0x01 == 0x01,
    })
}

/// A new random trace id; never all zeros (an invalid id).
pub fn new_trace_id(rng: &mut impl FnMut() -> u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    for _ in 0..4 {
        id[..8].copy_from_slice(&rng().to_be_bytes());
        id[8..].copy_from_slice(&rng().to_be_bytes());
        if !is_zero(&id) {
            return id;
        }
    }
    // A generator that keeps answering 0 is broken; stay valid anyway.
    id[15] = 1;
    id
}

/// A new random span id; never all zeros.
pub fn new_span_id(rng: &mut impl FnMut() -> u64) -> [u8; 8] {
    for _ in 0..4 {
        let id = rng().to_be_bytes();
        if !is_zero(&id) {
            return id;
        }
    }
    [0, 0, 0, 0, 0, 0, 0, 1]
}

/// The version-00 `traceparent` value naming `span_id` (the router's client
/// span) as the upstream's parent.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; V00_LEN];
    out[0] = b'0';
    out[1] = b'0';
    encode_lower_hex(trace_id, &mut out[3..35]);
    encode_lower_hex(span_id, &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Lowercase hex of `bytes` (the log line's `trace_id`).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// The ratio decision for a trace without a sampled parent: deterministic in
/// the trace id, like OpenTelemetry's `TraceIdRatioBased` sampler. The low 8
/// bytes, read big-endian and shifted right by one (63 bits, so `ratio × 2^63`
/// cannot overflow), are compared against `ratio × 2^63`. `ratio >= 1` samples
/// everything, `ratio <= 0` (or NaN) nothing.
pub fn sampled(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    // `as` saturates; ratio is in (0, 1), so the bound is below 2^63.
    let bound = (ratio * TWO_POW_63) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// The parent-based decision: a parent's flag is followed (so a continued
/// trace keeps its decision); without a parent, [`sampled`] by ratio.
pub fn should_sample(parent: Option<&TraceContext>, trace_id: &[u8; 16], ratio: f64) -> bool {
    match parent {
        Some(p) => p.sampled,
        None => sampled(trace_id, ratio),
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// `0-9a-f` only: the spec's HEXDIGLC.
fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn lower_hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [hi, lo] => Some((lower_hex_digit(*hi)? << 4) | lower_hex_digit(*lo)?),
        _ => None,
    }
}

fn decode_lower_hex(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (pair, out) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *out = lower_hex_byte(pair)?;
    }
    Some(())
}

fn encode_lower_hex(src: &[u8], dst: &mut [u8]) {
    for (b, pair) in src.iter().zip(dst.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    fn bytes16(h: &str) -> [u8; 16] {
        let mut b = [0u8; 16];
        decode_lower_hex(h.as_bytes(), &mut b).unwrap();
        b
    }

    fn bytes8(h: &str) -> [u8; 8] {
        let mut b = [0u8; 8];
        decode_lower_hex(h.as_bytes(), &mut b).unwrap();
        b
    }

    #[test]
    fn parses_the_spec_example() {
        let c = parse_traceparent(tp("00", TRACE, SPAN, "01").as_bytes()).unwrap();
        assert_eq!(c.trace_id, bytes16(TRACE));
        assert_eq!(c.parent_span_id, Some(bytes8(SPAN)));
        assert!(c.sampled);
        let c = parse_traceparent(tp("00", TRACE, SPAN, "00").as_bytes()).unwrap();
        assert!(!c.sampled);
        // Other flag bits are carried by version 00 but only `sampled` matters.
        let c = parse_traceparent(tp("00", TRACE, SPAN, "03").as_bytes()).unwrap();
        assert!(c.sampled);
        let c = parse_traceparent(tp("00", TRACE, SPAN, "fe").as_bytes()).unwrap();
        assert!(!c.sampled);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let v = format!(" \t{}\t ", tp("00", TRACE, SPAN, "01"));
        assert!(parse_traceparent(v.as_bytes()).is_some());
    }

    #[test]
    fn version_00_is_strict() {
        let bad = [
            String::new(),
            "00".to_owned(),
            // Uppercase hex anywhere.
            tp("00", &TRACE.to_uppercase(), SPAN, "01"),
            tp("00", TRACE, &SPAN.to_uppercase(), "01"),
            tp("00", TRACE, SPAN, "0A"),
            tp("0A", TRACE, SPAN, "01"),
            // All-zero ids.
            tp("00", &"0".repeat(32), SPAN, "01"),
            tp("00", TRACE, &"0".repeat(16), "01"),
            // Wrong lengths: short fields, trailing data on version 00.
            tp("00", &TRACE[1..], SPAN, "01"),
            tp("00", TRACE, &SPAN[1..], "01"),
            tp("00", TRACE, SPAN, "1"),
            format!("{}-", tp("00", TRACE, SPAN, "01")),
            format!("{}-what", tp("00", TRACE, SPAN, "01")),
            format!("{}0", tp("00", TRACE, SPAN, "01")),
            // Wrong separators, non-hex characters.
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}_01"),
            tp("00", &format!("{}g", &TRACE[1..]), SPAN, "01"),
            tp("00", TRACE, &format!("{}x", &SPAN[1..]), "01"),
            tp("00", TRACE, SPAN, "0g"),
            tp("00", TRACE, SPAN, "-1"),
            // Version ff is forbidden.
            tp("ff", TRACE, SPAN, "01"),
        ];
        for v in bad {
            assert_eq!(parse_traceparent(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn future_versions_are_parsed_forward_compatibly() {
        // Same length as 00.
        let c = parse_traceparent(tp("01", TRACE, SPAN, "01").as_bytes()).unwrap();
        assert_eq!(c.trace_id, bytes16(TRACE));
        assert!(c.sampled);
        // More fields after a dash are ignored.
        let v = format!("{}-extra-fields", tp("cc", TRACE, SPAN, "09"));
        let c = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!(c.parent_span_id, Some(bytes8(SPAN)));
        assert!(c.sampled);
        let v = format!("{}-", tp("cc", TRACE, SPAN, "02"));
        assert!(!parse_traceparent(v.as_bytes()).unwrap().sampled);
        // But not without the dash, not shorter, and the ids are still checked.
        let v = format!("{}0", tp("cc", TRACE, SPAN, "01"));
        assert_eq!(parse_traceparent(v.as_bytes()), None);
        assert_eq!(
            parse_traceparent(tp("cc", TRACE, &SPAN[1..], "01").as_bytes()),
            None
        );
        assert_eq!(
            parse_traceparent(tp("cc", &"0".repeat(32), SPAN, "01").as_bytes()),
            None
        );
        assert_eq!(
            parse_traceparent(tp("Cc", TRACE, SPAN, "01").as_bytes()),
            None
        );
    }

    #[test]
    fn format_round_trips() {
        let t = bytes16(TRACE);
        let s = bytes8(SPAN);
        let v = format_traceparent(&t, &s, true);
        assert_eq!(&v[..], tp("00", TRACE, SPAN, "01").as_bytes());
        let v = format_traceparent(&t, &s, false);
        assert_eq!(&v[..], tp("00", TRACE, SPAN, "00").as_bytes());
        let c = parse_traceparent(&v).unwrap();
        assert_eq!(c.trace_id, t);
        assert_eq!(c.parent_span_id, Some(s));
        assert!(!c.sampled);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&bytes16(TRACE)), TRACE);
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    #[test]
    fn new_ids_are_random_and_never_zero() {
        let mut rng = xorshift(0x9e37_79b9_7f4a_7c15);
        let a = new_trace_id(&mut rng);
        let b = new_trace_id(&mut rng);
        assert_ne!(a, b);
        assert!(!is_zero(&a));
        assert_ne!(new_span_id(&mut rng), new_span_id(&mut rng));

        let mut zeros = || 0u64;
        let t = new_trace_id(&mut zeros);
        let s = new_span_id(&mut zeros);
        assert!(!is_zero(&t) && !is_zero(&s));
        // Still a valid traceparent.
        assert!(parse_traceparent(&format_traceparent(&t, &s, true)).is_some());

        // A zero first draw is replaced by the next one.
        let mut calls = 0u64;
        let mut first_zero = || {
            calls += 1;
            if calls <= 2 { 0 } else { calls }
        };
        let t = new_trace_id(&mut first_zero);
        assert_eq!(t[7], 3);
        assert_eq!(t[15], 4);
    }

    fn with_low(low: u64) -> [u8; 16] {
        let mut t = [0xabu8; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn ratio_sampling_uses_the_low_eight_bytes() {
        // The high bytes do not matter.
        let mut t = with_low(0);
        assert!(sampled(&t, 0.5));
        t[..8].copy_from_slice(&[0; 8]);
        assert!(sampled(&t, 0.5));

        // Half: the top bit of the low 8 bytes decides.
        assert!(sampled(&with_low(0x7fff_ffff_ffff_ffff), 0.5));
        assert!(!sampled(&with_low(0x8000_0000_0000_0000), 0.5));
        assert!(!sampled(&with_low(u64::MAX), 0.5));

        // Edges: 1 samples everything, 0, negatives and NaN nothing.
        assert!(sampled(&with_low(u64::MAX), 1.0));
        assert!(sampled(&with_low(u64::MAX), 2.0));
        assert!(!sampled(&with_low(0), 0.0));
        assert!(!sampled(&with_low(0), -1.0));
        assert!(!sampled(&with_low(0), f64::NAN));
        // The smallest positive ratio still samples the lowest ids.
        assert!(sampled(&with_low(1), 1e-18));
        assert!(!sampled(&with_low(1 << 20), 1e-18));
    }

    #[test]
    fn ratio_sampling_is_roughly_the_ratio() {
        let mut rng = xorshift(42);
        for ratio in [0.1, 0.25, 0.9] {
            let n = 20_000;
            let hits = (0..n)
                .filter(|_| sampled(&new_trace_id(&mut rng), ratio))
                .count();
            let share = hits as f64 / n as f64;
            assert!((share - ratio).abs() < 0.02, "{ratio}: {share}");
        }
    }

    #[test]
    fn parent_decides_when_present() {
        let never = with_low(u64::MAX); // not sampled by any ratio < 1
        let always = with_low(0); // sampled by any ratio > 0
        let parent = |sampled| TraceContext {
            trace_id: never,
            parent_span_id: Some([1; 8]),
            sampled,
        };
        assert!(should_sample(Some(&parent(true)), &never, 0.0));
        assert!(!should_sample(Some(&parent(false)), &always, 1.0));
        assert!(should_sample(None, &always, 0.5));
        assert!(!should_sample(None, &never, 0.5));
        assert!(should_sample(None, &never, 1.0));
    }
}
