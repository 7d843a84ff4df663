//! URL query options and keyword arguments, already collapsed to one string each.

use std::collections::HashMap;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct Options(HashMap<String, String>);

impl Options {
    pub fn new(map: HashMap<String, String>) -> Options {
        Options(map)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.str(key) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| Error::InvalidArgument(format!("option {key}={raw:?} is not a non-negative number"))),
        }
    }

    /// `oslo_utils.strutils.bool_from_string` (not strict): anything unknown is false.
    pub fn bool(&self, key: &str, default: bool) -> bool {
        match self.str(key) {
            None => default,
            Some(raw) => matches!(raw.trim().to_ascii_lowercase().as_str(), "1" | "t" | "true" | "on" | "y" | "yes"),
        }
    }
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address, as given in a `hosts` option.
pub fn host_port(raw: &str, default_port: u16) -> Result<(String, u16)> {
    let bad = || Error::InvalidArgument(format!("bad host {raw:?}: expected host[:port]"));
    let raw = raw.trim();
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (name, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if raw.matches(':').count() > 1 {
        (raw, None) // a bare IPv6 address
    } else {
        match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
    };
    Ok((name.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_booleans() {
        let o = Options::new([("t", "5"), ("f", "2.5"), ("b", "Yes"), ("x", "abc"), ("n", "-1")]
            .into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect());
        assert_eq!(o.float("t", 1.0).unwrap(), 5.0);
        assert_eq!(o.float("f", 1.0).unwrap(), 2.5);
        assert_eq!(o.float("missing", 7.0).unwrap(), 7.0);
        assert!(matches!(o.float("x", 1.0), Err(Error::InvalidArgument(_))));
        assert!(o.float("n", 1.0).is_err());
        assert!(o.bool("b", false));
        assert!(!o.bool("x", true));
        assert!(o.bool("missing", true));
    }

    #[test]
    fn parses_hosts() {
        assert_eq!(host_port("a:1", 9).unwrap(), ("a".to_owned(), 1));
        assert_eq!(host_port("a", 9).unwrap(), ("a".to_owned(), 9));
        assert_eq!(host_port("[::1]:5", 9).unwrap(), ("::1".to_owned(), 5));
        assert_eq!(host_port("::1", 9).unwrap(), ("::1".to_owned(), 9));
        for bad in ["", "a:0", "a:x", "u@a", "[::1"] {
            assert!(host_port(bad, 9).is_err(), "{bad}");
        }
    }
}
