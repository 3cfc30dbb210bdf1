//! A small command-line parser: `--key value`, `--key=value` and boolean
//! `--flag`s, with unknown options reported as errors.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// Parsed options of one subcommand.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parse `argv` (after the subcommand). `value_keys` take a value,
    /// `flag_keys` do not; anything else is an error.
    pub fn parse(argv: &[String], value_keys: &[&str], flag_keys: &[&str]) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument `{arg}`"));
            };
            let (key, inline) = match name.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (name, None),
            };
            if flag_keys.contains(&key) {
                if inline.is_some() {
                    return Err(format!("option `--{key}` takes no value"));
                }
                flags.push(key.to_string());
            } else if value_keys.contains(&key) {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        argv.get(i)
                            .cloned()
                            .ok_or_else(|| format!("option `--{key}` needs a value"))?
                    }
                };
                values.insert(key.to_string(), value);
            } else {
                return Err(format!("unknown option `--{key}`"));
            }
            i += 1;
        }
        Ok(Args { values, flags })
    }

    pub fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("invalid value `{v}` for `--{key}`")),
        }
    }

    pub fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value `{v}` for `--{key}`")),
        }
    }

    pub fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                format!("invalid duration `{v}` for `--{key}` (e.g. 10s, 500ms, 1m)")
            }),
        }
    }
}

/// `10s`, `500ms`, `250us`, `1m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A comma-separated list of numbers (`1000,5000,10000`).
pub fn parse_list<T: FromStr>(s: &str) -> Option<Vec<T>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5h"), None);
    }

    #[test]
    fn options() {
        let argv: Vec<String> = ["--rate", "100", "--stream", "--duration=3s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&argv, &["rate", "duration"], &["stream"]).unwrap();
        assert!(a.flag("stream"));
        assert_eq!(a.parse_or("rate", 0.0).unwrap(), 100.0);
        assert_eq!(
            a.duration_or("duration", Duration::ZERO).unwrap(),
            Duration::from_secs(3)
        );
        assert!(Args::parse(&["--nope".to_string()], &[], &[]).is_err());
        assert!(Args::parse(&["--rate".to_string()], &["rate"], &[]).is_err());
    }
}
