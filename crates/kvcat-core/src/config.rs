//! Model configuration: a normalised [`LlamaConfig`] with no `Option`s in the hot fields,
//! built from an HF `config.json`, GGUF metadata, or a TOML table for tiny from-scratch models.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Llama-family architecture hyper-parameters (RMSNorm, RoPE, GQA, SwiGLU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_ids: Vec<i64>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> i64 {
    8192
}

/// The subset of an HF `config.json` kvcat reads; other fields are ignored.
#[derive(Debug, Deserialize)]
struct HfConfigRaw {
    model_type: Option<String>,
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<i64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<i64>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn ids(v: &Option<serde_json::Value>) -> Vec<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => vec![],
    }
}

/// The JSON type each field of [`HfConfigRaw`] must have (`null` is always allowed).
const FIELD_TYPES: &[(&str, &str)] = &[
    ("model_type", "string"),
    ("vocab_size", "integer"),
    ("hidden_size", "integer"),
    ("intermediate_size", "integer"),
    ("num_hidden_layers", "integer"),
    ("num_attention_heads", "integer"),
    ("num_key_value_heads", "integer"),
    ("head_dim", "integer"),
    ("rms_norm_eps", "number"),
    ("rope_theta", "number"),
    ("max_position_embeddings", "integer"),
    ("tie_word_embeddings", "boolean"),
    ("attention_bias", "boolean"),
    ("mlp_bias", "boolean"),
    ("hidden_act", "string"),
    ("sliding_window", "integer"),
];

/// Rejects a `config.json` that is not an object, or whose known fields have the wrong JSON
/// type, with an error naming the field (serde's own message does not name it).
fn check_field_types(json: &serde_json::Value, file: &str) -> Result<()> {
    let obj = json.as_object().ok_or_else(|| Error::Format {
        file: file.to_string(),
        reason: "expected a JSON object".into(),
    })?;
    for (field, want) in FIELD_TYPES {
        let Some(v) = obj.get(*field) else { continue };
        let ok = match *want {
            "string" => v.is_string(),
            "integer" => v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok && !v.is_null() {
            return Err(Error::Config {
                file: file.to_string(),
                field: field.to_string(),
                reason: format!("expected {want}, got `{v}`"),
            });
        }
    }
    Ok(())
}

/// The values transformers' `LlamaConfig` uses for fields a `config.json` leaves out, which
/// kvcat fills in the same way, saying so (they change results when the checkpoint was
/// trained with other values).
const HF_DEFAULTS: [(&str, &str); 3] = [
    ("rms_norm_eps", "1e-6"),
    ("rope_theta", "10000"),
    ("max_position_embeddings", "2048"),
];

/// A [`Error::Config`] for `field` of the config file `file`.
fn config_error(file: &str, field: &str, reason: &str) -> Error {
    Error::Config {
        file: file.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

impl HfConfigRaw {
    /// Reads `config.json` at `path` (named `file` in errors): valid JSON, field types
    /// checked, then the fields kvcat reads.
    fn read(path: &Path, file: &str) -> Result<HfConfigRaw> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            file: file.to_string(),
            reason: format!("not valid JSON: {e}"),
        })?;
        check_field_types(&json, file)?;
        serde_json::from_value(json).map_err(|e| Error::Format {
            file: file.to_string(),
            reason: format!("not a model config: {e}"),
        })
    }

    /// A Llama or Mistral architecture kvcat runs: no sliding window shorter than the
    /// context, no biased projections, SiLU activations.
    fn check_supported(&self, file: &str) -> Result<()> {
        let model_type = self.model_type.clone().unwrap_or_default();
        if !matches!(model_type.as_str(), "llama" | "mistral") {
            return Err(Error::Unsupported {
                file: file.to_string(),
                what: "model_type".into(),
                value: format!("`{model_type}`"),
                supported: "llama, mistral".into(),
            });
        }
        if let Some(w) = self.sliding_window {
            if w < self.max_position_embeddings.unwrap_or(i64::MAX) {
                return Err(config_error(
                    file,
                    "sliding_window",
                    &format!(
                        "sliding-window attention ({w}) is not supported (allowed: null, or at \
                         least max_position_embeddings)"
                    ),
                ));
            }
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(config_error(
                file,
                "attention_bias",
                "biased projections are not supported",
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(config_error(
                    file,
                    "hidden_act",
                    &format!("`{act}` is not supported (allowed: silu)"),
                ));
            }
        }
        Ok(())
    }

    /// `rope_theta`, also read from `rope_scaling` / `rope_parameters` (newer configs), whose
    /// rope type must be `default`. `None` when the config does not say.
    fn rope_theta(&self, file: &str) -> Result<Option<f64>> {
        let scaling = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let mut rope_theta = self.rope_theta;
        if let Some(s) = scaling {
            if let Some(t) = s.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(t);
            }
            if let Some(kind) = s
                .get("rope_type")
                .or(s.get("type"))
                .and_then(|k| k.as_str())
            {
                if kind != "default" {
                    return Err(config_error(
                        file,
                        "rope_scaling",
                        &format!("rope type `{kind}` is not supported (allowed: default)"),
                    ));
                }
            }
        }
        Ok(rope_theta)
    }

    /// The normalised config: required sizes present, transformers' defaults for the rest.
    fn to_config(&self, file: &str, rope_theta: Option<f64>) -> Result<LlamaConfig> {
        let need = |v: Option<i64>, f: &str| v.ok_or_else(|| config_error(file, f, "missing"));
        let hidden = need(self.hidden_size, "hidden_size")?;
        let heads = need(self.num_attention_heads, "num_attention_heads")?;
        Ok(LlamaConfig {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self
                .head_dim
                .unwrap_or(if heads > 0 { hidden / heads } else { 0 }),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: ids(&self.bos_token_id).first().copied(),
            eos_token_ids: ids(&self.eos_token_id),
        })
    }
}

impl LlamaConfig {
    /// A tiny shape for tests and examples (random init runs in milliseconds): vocabulary 97,
    /// d 32, SwiGLU 64, 2 layers, 4 query heads of 8 over 2 KV heads (GQA), RoPE θ 10,000, 512
    /// positions, tied embeddings, no BOS/EOS. Vary a field with struct update syntax:
    /// `LlamaConfig { num_key_value_heads: 4, ..LlamaConfig::tiny() }`.
    pub fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Reads and validates an HF `config.json`; a field filled in with its default is said
    /// once on stderr (see [`LlamaConfig::from_hf_json_noted`]).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let (cfg, notes) = Self::from_hf_json_noted(path)?;
        for n in &notes {
            crate::loading::warn_once(n);
        }
        Ok(cfg)
    }

    /// Reads and validates an HF `config.json`, returning beside it one note per field that
    /// was missing and got transformers' default (`rms_norm_eps`, `rope_theta`,
    /// `max_position_embeddings`).
    pub fn from_hf_json_noted(path: &Path) -> Result<(Self, Vec<String>)> {
        let file = path.display().to_string();
        let raw = HfConfigRaw::read(path, &file)?;
        raw.check_supported(&file)?;
        let rope_theta = raw.rope_theta(&file)?;
        let cfg = raw.to_config(&file, rope_theta)?;
        cfg.validate(&file)?;
        let present = [
            raw.rms_norm_eps.is_some(),
            rope_theta.is_some(),
            raw.max_position_embeddings.is_some(),
        ];
        let notes = HF_DEFAULTS
            .iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|((field, v), _)| {
                format!("{file}: no `{field}`; using {v} (the transformers default)")
            })
            .collect();
        Ok((cfg, notes))
    }

    /// Checks that sizes are positive and heads divide evenly.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::Config {
                file: file.to_string(),
                field: field.to_string(),
                reason,
            })
        };
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v <= 0 {
                return bad(f, format!("must be positive, got {v}"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if self.head_dim % 2 != 0 {
            return bad(
                "head_dim",
                format!("RoPE needs an even head_dim, got {}", self.head_dim),
            );
        }
        Ok(())
    }

    /// Writes the config as an HF-style `config.json`, so checkpoints load like any HF directory.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
        })
    }

    /// Query heads per KV head.
    pub fn groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }
}
