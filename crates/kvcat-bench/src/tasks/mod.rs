//! Evaluation tasks, registered with `inventory` as [`kvcat_core::task::TaskDescriptor`]s.
//!
//! - retrieval: [`passkey`], the RULER needle family ([`niah`]), [`mqar`], [`variable_tracking`];
//! - long-context QA: [`qa`] (SQuAD v2, HotpotQA) and user files in kvpress's columns
//!   ([`user_file`]);
//! - compressed-prefix perplexity: [`ppl`].
//!
//! Every task is sized by a target context length in tokens, seeded, and builds its examples
//! one at a time from `(seed, index)`, so the first `n` examples do not depend on `n`.

/// Declares a [`Choice`] enum for a task parameter: each variant with its config name, serde
/// (de)serialisation by that name, and a parse error naming the allowed values.
macro_rules! choice_enum {
    ($(#[$meta:meta])* pub enum $ty:ident {
        $($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub enum $ty {
            $($(#[$vmeta])* #[serde(rename = $name)] $variant),+
        }

        impl $crate::tasks::Choice for $ty {
            const ALL: &'static [Self] = &[$($ty::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                $crate::tasks::parse_choice(&s)
            }
        }
    };
}

pub mod haystack;
pub mod mqar;
pub mod niah;
pub mod passkey;
pub mod ppl;
pub mod qa;
pub mod user_file;
pub mod variable_tracking;
pub mod words;

use kvcat_core::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// The generator of example `index` under `seed` (independent of how many are drawn).
pub fn example_rng(seed: u64, index: usize) -> StdRng {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        ^ 0x5DEE_CE66_D1CE_4E5B;
    StdRng::seed_from_u64(mixed)
}

/// The depth of example `index` when none is configured: a sweep over 0, 0.1, …, 1.
pub fn swept_depth(index: usize) -> f64 {
    (index % 11) as f64 / 10.0
}

/// Checks a target context length parameter.
pub fn check_len(task: &str, len: usize) -> Result<()> {
    if len < 16 {
        return Err(Error::Params {
            kind: "task",
            name: task.to_string(),
            reason: format!("`context_len` = {len} is too short (at least 16 tokens)"),
        });
    }
    Ok(())
}

/// A closed set of named choices for a task parameter (`haystack = "essay"`), parsed with
/// [`parse_choice`].
pub trait Choice: Copy + 'static {
    /// Every choice, in the order errors list them.
    const ALL: &'static [Self];
    /// The name in configs and result rows.
    fn name(self) -> &'static str;
}

/// The choice named `s`, or an error listing the allowed names (serde adds the field:
/// ``field `haystack`: "novel"; allowed: essay, repeat, needle``).
pub fn parse_choice<C: Choice>(s: &str) -> std::result::Result<C, String> {
    C::ALL
        .iter()
        .copied()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            let allowed: Vec<&str> = C::ALL.iter().map(|c| c.name()).collect();
            format!("\"{s}\"; allowed: {}", allowed.join(", "))
        })
}

/// The project's asset directory: `$KVCAT_ASSETS`, else `./assets` when it exists, else the
/// `assets/` folder of the source tree this binary was built from.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVCAT_ASSETS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("assets");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// Resolves a data-file parameter: empty means `default` under [`assets_dir`]. Errors clearly
/// when the file is missing.
pub fn data_file(task: &str, field: &str, given: &str, default: &str) -> Result<PathBuf> {
    let path = if given.is_empty() {
        assets_dir().join(default)
    } else {
        PathBuf::from(given)
    };
    if !path.is_file() {
        return Err(Error::Config {
            file: path.display().to_string(),
            field: field.to_string(),
            reason: format!(
                "task `{task}`: data file not found (set `{field}` to a path, or unpack the \
                 assets; see scripts/)"
            ),
        });
    }
    Ok(path)
}

/// Reads a whole text file with a path-naming error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The `text` field of RULER's `PaulGrahamEssays.json`.
pub fn read_essays(path: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Essays {
        text: String,
    }
    let raw = read_text(path)?;
    let e: Essays = serde_json::from_str(&raw).map_err(|e| Error::Format {
        file: path.display().to_string(),
        reason: format!("expected {{\"text\": …}}: {e}"),
    })?;
    Ok(e.text)
}

/// Default location of the essays inside the assets.
pub const ESSAYS: &str = "data/long_context_eval/data/synthetic/json/PaulGrahamEssays.json";
