//! Sizing synthetic contexts to a target length in tokens, with needles at given depths.
//!
//! A context is `prefix + haystack + suffix`, where the haystack is a run of `k` units
//! (sentences or lines, cycled from a source) joined by a separator, with needle texts inserted
//! at unit boundaries. `k` is chosen so that the whole context tokenizes to the target length
//! within ±5% (RULER grows its haystack the same way, by re-tokenizing). A needle's depth is
//! the fraction of *haystack* tokens before it, as in RULER and the passkey test.

use kvcat_core::{Error, Result, Tokenizer};

/// Allowed relative deviation of the context length from the target.
pub const LENGTH_TOLERANCE: f64 = 0.05;

/// A piece of text placed at a depth in [0, 1] of the haystack.
#[derive(Debug, Clone)]
pub struct Needle {
    pub text: String,
    pub depth: f64,
}

/// A sized context.
#[derive(Debug, Clone)]
pub struct SizedContext {
    pub text: String,
    /// Tokens of `text` (without BOS).
    pub tokens: usize,
    /// Realised depth of each needle (same order as the input), over haystack tokens.
    pub depths: Vec<f64>,
    /// Haystack units used.
    pub units: usize,
}

/// The cyclic unit source of a haystack.
pub struct Haystack<'a> {
    /// Units (sentences, lines), used in order and cycled.
    pub units: &'a [String],
    /// Joins units and needles (`" "` for sentences, `"\n"` for lines).
    pub separator: &'a str,
}

impl Haystack<'_> {
    fn unit(&self, i: usize) -> &str {
        &self.units[i % self.units.len()]
    }

    /// Assembles the context for `k` units with `needles` inserted, and the realised depths.
    fn assemble(
        &self,
        k: usize,
        cum: &[usize],
        prefix: &str,
        suffix: &str,
        needles: &[Needle],
    ) -> (String, Vec<f64>) {
        let total = cum[k].max(1) as f64;
        // Insertion boundary per needle: the one whose token fraction is closest to the depth.
        let slots: Vec<usize> = needles
            .iter()
            .map(|n| {
                let goal = n.depth * total;
                (0..=k)
                    .min_by(|&a, &b| {
                        let da = (cum[a] as f64 - goal).abs();
                        let db = (cum[b] as f64 - goal).abs();
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0)
            })
            .collect();
        let mut pieces: Vec<&str> = Vec::with_capacity(k + needles.len());
        for i in 0..=k {
            for (n, &s) in needles.iter().zip(&slots) {
                if s == i {
                    pieces.push(&n.text);
                }
            }
            if i < k {
                pieces.push(self.unit(i));
            }
        }
        let text = format!("{prefix}{}{suffix}", pieces.join(self.separator));
        let depths = slots.iter().map(|&s| cum[s] as f64 / total).collect();
        (text, depths)
    }

    /// Builds `prefix + haystack + suffix` of `target` tokens (±5%) with `needles` inserted.
    /// Errors when the fixed parts alone exceed the target or the length cannot be reached.
    pub fn build(
        &self,
        tok: &Tokenizer,
        target: usize,
        prefix: &str,
        suffix: &str,
        needles: &[Needle],
    ) -> Result<SizedContext> {
        if self.units.is_empty() {
            return Err(Error::invalid("haystack has no text units"));
        }
        let count = |s: &str| tok.encode(s).map(|v| v.len());
        let mut fixed = count(prefix)? + count(suffix)?;
        for n in needles {
            fixed += count(&n.text)? + 1;
        }
        if fixed as f64 > target as f64 * (1.0 + LENGTH_TOLERANCE) {
            return Err(Error::invalid(format!(
                "target length {target} tokens is too short: the instructions and needles alone \
                 take about {fixed} tokens"
            )));
        }
        // Per-unit token counts (with a separator), computed lazily and cached per unit.
        let mut unit_tokens: Vec<Option<usize>> = vec![None; self.units.len()];
        let mut grow = |cum: &mut Vec<usize>| -> Result<()> {
            let i = cum.len() - 1;
            let u = i % self.units.len();
            let c = match unit_tokens[u] {
                Some(c) => c,
                None => {
                    let c = count(&format!("{}{}", self.separator, self.units[u]))?;
                    unit_tokens[u] = Some(c);
                    c
                }
            };
            cum.push(cum[i] + c);
            Ok(())
        };
        let mut cum = vec![0usize];
        while fixed + cum[cum.len() - 1] < target {
            grow(&mut cum)?;
        }
        let mean_unit = (cum[cum.len() - 1] as f64 / (cum.len() - 1).max(1) as f64).max(1.0);
        let mut k = cum.len() - 1;
        let mut best: Option<(usize, SizedContext)> = None;
        for _ in 0..8 {
            while cum.len() <= k {
                grow(&mut cum)?;
            }
            let (text, depths) = self.assemble(k, &cum, prefix, suffix, needles);
            let tokens = count(&text)?;
            let err = tokens.abs_diff(target);
            if best.as_ref().is_none_or(|(e, _)| err < *e) {
                best = Some((
                    err,
                    SizedContext {
                        text,
                        tokens,
                        depths,
                        units: k,
                    },
                ));
            }
            if err == 0 {
                break;
            }
            let step = ((target as f64 - tokens as f64) / mean_unit).round() as i64;
            let step = if step == 0 {
                (target as i64 - tokens as i64).signum()
            } else {
                step
            };
            let next = (k as i64 + step).max(0) as usize;
            if next == k {
                break;
            }
            k = next;
        }
        // Unit lengths vary: scan the neighbourhood of the best count too.
        if let Some((err, b)) = &best {
            if *err as f64 > target as f64 * LENGTH_TOLERANCE / 2.0 {
                let center = b.units;
                for k in center.saturating_sub(6)..=center + 6 {
                    while cum.len() <= k {
                        grow(&mut cum)?;
                    }
                    let (text, depths) = self.assemble(k, &cum, prefix, suffix, needles);
                    let tokens = count(&text)?;
                    let e = tokens.abs_diff(target);
                    if best.as_ref().is_none_or(|(be, _)| e < *be) {
                        best = Some((
                            e,
                            SizedContext {
                                text,
                                tokens,
                                depths,
                                units: k,
                            },
                        ));
                    }
                }
            }
        }
        let (err, sized) = best.ok_or_else(|| Error::invalid("haystack sizing failed"))?;
        if err as f64 > target as f64 * LENGTH_TOLERANCE {
            return Err(Error::invalid(format!(
                "cannot size the context to {target} tokens (±5%): the closest has {} tokens",
                sized.tokens
            )));
        }
        Ok(sized)
    }
}

/// Splits text into sentences after `.`, `!` or `?` (followed by whitespace or a capital
/// letter, since the essays file glues some sentences together), with whitespace normalised.
pub fn sentences(text: &str) -> Vec<String> {
    let norm: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = norm.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        cur.push(c);
        if matches!(c, '.' | '!' | '?') {
            let next = chars.get(i + 1).copied();
            let ends = match next {
                None => true,
                Some(n) => n == ' ' || n.is_ascii_uppercase(),
            };
            if ends && cur.trim().len() > 1 {
                out.push(cur.trim().to_string());
                cur.clear();
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Splits units longer than `max_words` words into pieces of at most `max_words` words, so
/// that a haystack can be sized finely.
pub fn split_long(units: Vec<String>, max_words: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(units.len());
    for u in units {
        let words: Vec<&str> = u.split(' ').collect();
        if words.len() <= max_words {
            out.push(u);
        } else {
            out.extend(words.chunks(max_words).map(|c| c.join(" ")));
        }
    }
    out
}

/// The classic repeated filler of the passkey test and RULER's `repeat` haystack, as sentences.
pub const FILLER: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];

/// [`FILLER`] as owned units.
pub fn filler_units() -> Vec<String> {
    FILLER.iter().map(|s| s.to_string()).collect()
}
