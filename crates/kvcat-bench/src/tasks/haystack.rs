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
        let mut sizing = Sizing {
            hay: self,
            tok,
            target,
            prefix,
            suffix,
            needles,
            unit_tokens: vec![None; self.units.len()],
            cum: vec![0],
            best: None,
        };
        let fixed = sizing.fixed_tokens()?;
        while fixed + sizing.haystack_tokens() < target {
            sizing.grow()?;
        }
        sizing.step_towards_target()?;
        sizing.scan_around_best()?;
        sizing.finish()
    }
}

/// One sizing search of [`Haystack::build`]: the cumulative token counts of the haystack's
/// first units, grown on demand, and the closest context found so far.
struct Sizing<'s, 'h> {
    hay: &'s Haystack<'h>,
    tok: &'s Tokenizer,
    target: usize,
    prefix: &'s str,
    suffix: &'s str,
    needles: &'s [Needle],
    /// Token count of each unit with a separator, computed lazily.
    unit_tokens: Vec<Option<usize>>,
    /// `cum[k]`: haystack tokens of the first `k` units.
    cum: Vec<usize>,
    /// The candidate closest to the target so far, with its distance in tokens.
    best: Option<(usize, SizedContext)>,
}

impl Sizing<'_, '_> {
    fn count(&self, s: &str) -> Result<usize> {
        self.tok.encode(s).map(|v| v.len())
    }

    /// Tokens of the prefix, suffix and needles (one separator each); errors when they alone
    /// exceed the target.
    fn fixed_tokens(&self) -> Result<usize> {
        let mut fixed = self.count(self.prefix)? + self.count(self.suffix)?;
        for n in self.needles {
            fixed += self.count(&n.text)? + 1;
        }
        let target = self.target;
        if fixed as f64 > target as f64 * (1.0 + LENGTH_TOLERANCE) {
            return Err(Error::invalid(format!(
                "target length {target} tokens is too short: the instructions and needles alone \
                 take about {fixed} tokens"
            )));
        }
        Ok(fixed)
    }

    /// Haystack tokens of every unit counted so far.
    fn haystack_tokens(&self) -> usize {
        self.cum[self.cum.len() - 1]
    }

    /// Counts one more unit.
    fn grow(&mut self) -> Result<()> {
        let i = self.cum.len() - 1;
        let u = i % self.hay.units.len();
        let c = match self.unit_tokens[u] {
            Some(c) => c,
            None => {
                let c = self.count(&format!("{}{}", self.hay.separator, self.hay.units[u]))?;
                self.unit_tokens[u] = Some(c);
                c
            }
        };
        self.cum.push(self.cum[i] + c);
        Ok(())
    }

    /// Assembles and tokenizes the context of `k` units, keeps it when it is the closest so
    /// far, and returns its length in tokens.
    fn try_units(&mut self, k: usize) -> Result<usize> {
        while self.cum.len() <= k {
            self.grow()?;
        }
        let (text, depths) =
            self.hay
                .assemble(k, &self.cum, self.prefix, self.suffix, self.needles);
        let tokens = self.count(&text)?;
        let err = tokens.abs_diff(self.target);
        if self.best.as_ref().is_none_or(|(e, _)| err < *e) {
            let sized = SizedContext {
                text,
                tokens,
                depths,
                units: k,
            };
            self.best = Some((err, sized));
        }
        Ok(tokens)
    }

    /// Up to 8 steps from the counted units towards the target, each by the missing tokens
    /// over the mean unit length.
    fn step_towards_target(&mut self) -> Result<()> {
        let target = self.target;
        let counted = self.cum.len() - 1;
        let mean_unit = (self.haystack_tokens() as f64 / counted.max(1) as f64).max(1.0);
        let mut k = counted;
        for _ in 0..8 {
            let tokens = self.try_units(k)?;
            if tokens == target {
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
        Ok(())
    }

    /// Unit lengths vary: when the best is off by more than half the tolerance, scans the six
    /// unit counts on either side of it too.
    fn scan_around_best(&mut self) -> Result<()> {
        let half_tolerance = self.target as f64 * LENGTH_TOLERANCE / 2.0;
        let center = match &self.best {
            Some((err, b)) if *err as f64 > half_tolerance => b.units,
            _ => return Ok(()),
        };
        for k in center.saturating_sub(6)..=center + 6 {
            self.try_units(k)?;
        }
        Ok(())
    }

    /// The closest context, or an error when it misses the target by more than the tolerance.
    fn finish(self) -> Result<SizedContext> {
        let target = self.target;
        let (err, sized) = self
            .best
            .ok_or_else(|| Error::invalid("haystack sizing failed"))?;
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
