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
}
