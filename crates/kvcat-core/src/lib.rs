//! kvcat-core: the Llama-family model with a caller-owned KV cache, loading (HF safetensors,
//! GGUF), tokenization, budgets, and the plugin traits and registries for masking policies
//! and compressors.

pub mod attention;
pub mod budget;
pub mod cache;
pub mod compressor;
pub mod config;
pub mod decode;
pub mod decode_compressing;
pub mod device;
pub mod error;
pub mod forward;
pub mod loading;
pub mod model;
pub mod policy;
pub mod probe;
pub mod registry;
pub mod selection;
pub mod spd;
pub mod summary;
pub mod task;
pub mod tokenizer;
pub mod toml_paths;

pub use budget::Budget;
pub use cache::{KvCache, LayerCache};
pub use compressor::{Compressed, CompressionInput, Compressor, CompressorDescriptor, Scorer};
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use loading::Model;
pub use model::{ForwardOptions, ForwardOutput, Llama, Logits};
pub use policy::{
    MaskPlan, MaskingPolicy, PolicyDescriptor, PolicyInput, PolicyNeeds, SummaryPlan,
};
pub use tokenizer::Tokenizer;

pub use inventory;
pub use tch;
pub use toml;
