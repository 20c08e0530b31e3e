//! KV budgets: a kept fraction in (0, 1] or an absolute slot count, validated at parse time.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How much of a KV cache to keep.
///
/// A fraction `b` keeps `max(1, floor(slots · b))` slots per head (kvpress's
/// `compression_ratio = 1 − b`); an absolute count keeps `min(n, slots)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BudgetRepr", into = "BudgetRepr")]
pub enum Budget {
    Fraction(f64),
    Slots(i64),
}

/// What a budget may be, for errors about one that is zero or negative (which is neither a
/// fraction nor a slot count, whatever its type).
const ALLOWED: &str = "a budget keeps something: a kept fraction in (0, 1] (`0.1`, `10%`) or a \
                       slot count of at least 1 (`64`, `64slots`)";

impl Budget {
    /// A fraction budget, checked to lie in (0, 1].
    pub fn fraction(b: f64) -> Result<Self> {
        let reason = if b.is_finite() && b > 0.0 && b <= 1.0 {
            return Ok(Budget::Fraction(b));
        } else if b.is_finite() && b > 1.0 {
            "a fraction must lie in (0, 1]; write a slot count as an integer (`128`) or `128slots`"
        } else if b.is_nan() {
            "not a number; a budget is a kept fraction in (0, 1] or a slot count of at least 1"
        } else {
            ALLOWED
        };
        Err(Error::Budget {
            value: b.to_string(),
            reason: reason.into(),
        })
    }
    /// An absolute slot budget, checked to be at least 1.
    pub fn slots(n: i64) -> Result<Self> {
        if n >= 1 {
            Ok(Budget::Slots(n))
        } else {
            Err(Error::Budget {
                value: n.to_string(),
                reason: ALLOWED.into(),
            })
        }
    }
    /// The full cache.
    pub fn full() -> Self {
        Budget::Fraction(1.0)
    }
    /// Number of slots to keep out of `slots`.
    pub fn kept(&self, slots: i64) -> i64 {
        match *self {
            Budget::Fraction(b) => ((slots as f64 * b).floor() as i64).clamp(1, slots.max(1)),
            Budget::Slots(n) => n.min(slots),
        }
    }
    /// Whether this budget keeps everything of a cache with `slots` slots.
    pub fn is_identity_for(&self, slots: i64) -> bool {
        self.kept(slots) >= slots
    }
    /// When this budget asks for more slots than the shortest of some contexts holds (so
    /// those keep their whole context and the cell measures no compression there), a note
    /// saying so; `lengths` are the contexts' slot counts. `None` when nothing is capped.
    pub fn cap_note(&self, lengths: &[i64]) -> Option<String> {
        let Budget::Slots(n) = *self else {
            return None;
        };
        let capped = lengths.iter().filter(|&&l| l <= n).count();
        let shortest = lengths.iter().copied().min()?;
        (capped > 0).then(|| {
            format!(
                "budget {self} is not below the context of {capped} of {} examples (shortest \
                 {shortest} slots): those keep their whole cache",
                lengths.len()
            )
        })
    }
    /// The budget as a fraction of `slots`, for plotting slot budgets on a common axis.
    pub fn as_fraction(&self, slots: i64) -> f64 {
        match *self {
            Budget::Fraction(b) => b,
            Budget::Slots(_) => self.kept(slots) as f64 / slots.max(1) as f64,
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Fraction(b) => write!(f, "{b}"),
            Budget::Slots(n) => write!(f, "{n}slots"),
        }
    }
}

impl FromStr for Budget {
    type Err = Error;
    /// `0.5` or `50%` is a fraction; `128` or `128slots` is a slot count.
    fn from_str(s: &str) -> Result<Self> {
        parse_budget(s).map_err(|e| match e {
            Error::Budget { reason, .. } => Error::Budget {
                value: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

fn parse_budget(s: &str) -> Result<Budget> {
    {
        let t = s.trim();
        let bad = |reason: &str| Error::Budget {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad("not a percentage"))?;
            return Budget::fraction(v / 100.0);
        }
        if let Some(n) = t.strip_suffix("slots") {
            let v: i64 = n.trim().parse().map_err(|_| bad("not a slot count"))?;
            return Budget::slots(v);
        }
        if t.contains('.') || t.contains('e') {
            let v: f64 = t.parse().map_err(|_| {
                bad("expected a fraction like 0.5, a percentage like 50%, or a slot count like 128")
            })?;
            return Budget::fraction(v);
        }
        let v: i64 = t.parse().map_err(|_| {
            bad("expected a fraction like 0.5, a percentage like 50%, or a slot count like 128")
        })?;
        Budget::slots(v)
    }
}

/// Serde form: a float is a fraction, an integer a slot count, a string is parsed.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BudgetRepr {
    Int(i64),
    Float(f64),
    Text(String),
}

impl TryFrom<BudgetRepr> for Budget {
    type Error = Error;
    fn try_from(r: BudgetRepr) -> Result<Self> {
        match r {
            BudgetRepr::Int(n) => Budget::slots(n),
            BudgetRepr::Float(b) => Budget::fraction(b),
            BudgetRepr::Text(s) => s.parse(),
        }
    }
}

impl From<Budget> for BudgetRepr {
    fn from(b: Budget) -> Self {
        match b {
            Budget::Fraction(f) => BudgetRepr::Float(f),
            Budget::Slots(n) => BudgetRepr::Int(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts() {
        assert_eq!("0.5".parse::<Budget>().unwrap(), Budget::Fraction(0.5));
        assert_eq!("25%".parse::<Budget>().unwrap(), Budget::Fraction(0.25));
        assert_eq!("128".parse::<Budget>().unwrap(), Budget::Slots(128));
        assert_eq!(Budget::Fraction(0.5).kept(10), 5);
        assert_eq!(Budget::Fraction(0.01).kept(10), 1);
        assert_eq!(Budget::Slots(128).kept(10), 10);
        assert!(Budget::Fraction(1.0).is_identity_for(7));
    }

    #[test]
    fn rejects_out_of_range() {
        for bad in ["0", "0.0", "1.5", "-3", "abc", "nan"] {
            let e = bad.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
