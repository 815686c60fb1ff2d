//! Settings from environment variables, read through a map so tests pass one instead of
//! changing the process's environment. A variable set to an empty (or blank) value counts as
//! unset; errors name the variable, its value and what was expected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A process's environment, or a test's stand-in for it.
pub type EnvMap = HashMap<String, String>;

/// The process's environment as an [`EnvMap`].
pub fn from_process() -> EnvMap {
    std::env::vars().collect()
}

/// Why a setting could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{var} is required{hint}")]
    Missing {
        var: &'static str,
        /// What to set, after the variable's name (" (or LOCAL_XDS_PATH ...)"); may be empty.
        hint: &'static str,
    },
    #[error("{var}={value:?} is invalid: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("{a} and {b} are both set and say the same thing: keep one")]
    Conflict { a: &'static str, b: &'static str },
}

/// Typed reads of an [`EnvMap`].
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    map: &'a EnvMap,
}

impl<'a> Env<'a> {
    pub fn new(map: &'a EnvMap) -> Env<'a> {
        Env { map }
    }

    /// The variable's value, trimmed; `None` when unset or blank.
    pub fn get(&self, var: &str) -> Option<String> {
        self.map
            .get(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The error for `var` holding `value`, with why it is wrong.
    pub fn invalid(var: &'static str, value: &str, why: &dyn std::fmt::Display) -> EnvError {
        EnvError::Invalid {
            var,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// `true` or `false` (any case); `None` when unset.
    pub fn bool(&self, var: &'static str) -> Result<Option<bool>, EnvError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        match v.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(Env::invalid(var, &v, &"expected true or false")),
        }
    }

    /// A whole number of seconds, `default_secs` when unset.
    pub fn secs(&self, var: &'static str, default_secs: u64) -> Result<Duration, EnvError> {
        match self.get(var) {
            None => Ok(Duration::from_secs(default_secs)),
            Some(v) => v
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| Env::invalid(var, &v, &e)),
        }
    }

    /// A Go duration ([`go_duration`]); `None` when unset.
    pub fn go_duration(&self, var: &'static str) -> Result<Option<Duration>, EnvError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        go_duration(&v)
            .map(Some)
            .ok_or_else(|| Env::invalid(var, &v, &"expected a duration like 24h, 12h30m or 3600s"))
    }

    /// A count of at least 1, `default` when unset.
    pub fn count(&self, var: &'static str, default: usize) -> Result<usize, EnvError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Env::invalid(var, &v, &"expected a whole number of at least 1")),
        }
    }

    /// A 32-bit number, decimal or `0x` hex ([`parse_u32`]), `default` when unset.
    pub fn u32(&self, var: &'static str, default: u32) -> Result<u32, EnvError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_u32(&v)
                .ok_or_else(|| Env::invalid(var, &v, &"expected a number like 1337 or 0x539")),
        }
    }

    /// An `ip:port`, `default` when unset.
    pub fn addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, EnvError> {
        let v = self.get(var).unwrap_or_else(|| default.to_string());
        v.parse().map_err(|e| Env::invalid(var, &v, &e))
    }
}

/// A Go duration (`24h`, `1h30m`, `90s`, `500ms`, `2h0m0s`), as Istio writes `SECRET_TTL`
/// and other durations. Negative durations and days (`1d`, not Go) are not durations here.
pub fn go_duration(v: &str) -> Option<Duration> {
    let mut rest = v.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(number * seconds).ok()?)?;
        rest = tail;
    }
    Some(total)
}

/// A 32-bit number written in decimal or as `0x` hex (packet marks are written both ways).
pub fn parse_u32(v: &str) -> Option<u32> {
    match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn go_durations() {
        // The last two overflow a Duration: no panic, just not a duration.
        let overflow = ["99999999999999999999h", "18446744073709551615s1s"];
        for bad in ["24", "1d", "h", "-3s", "", "1e400h"]
            .iter()
            .chain(&overflow)
        {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
        assert_eq!(go_duration("2h0m0s"), Some(Duration::from_secs(7200)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("12h30m"), Some(Duration::from_secs(45_000)));
    }

    #[test]
    fn blank_is_unset_and_errors_name_the_variable() {
        let m = map(&[("A", "  "), ("B", " 0x10 "), ("C", "yes"), ("D", "0")]);
        let env = Env::new(&m);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.u32("B", 1).unwrap(), 16);
        assert_eq!(env.u32("A", 7).unwrap(), 7);
        let e = env.bool("C").unwrap_err().to_string();
        assert!(e.contains("C=\"yes\""), "{e}");
        let e = env.count("D", 3).unwrap_err().to_string();
        assert!(e.contains("D=\"0\""), "{e}");
        assert_eq!(env.bool("A").unwrap(), None);
        assert_eq!(env.secs("A", 5).unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn bools_in_any_case() {
        let m = map(&[("T", "TRUE"), ("F", "false")]);
        let env = Env::new(&m);
        assert_eq!(env.bool("T").unwrap(), Some(true));
        assert_eq!(env.bool("F").unwrap(), Some(false));
    }
}
