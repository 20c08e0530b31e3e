//! Shared helpers of the task and evaluation tests: a small byte-level BPE tokenizer trained
//! in-process on filler sentences and a slice of the essays, so tests need no tokenizer file.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcat_core::Tokenizer;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// A byte-level BPE with a few hundred merges (every byte string is encodable).
pub fn tokenizer() -> Tokenizer {
    let mut corpus: Vec<String> = vec![
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
            .into();
        20
    ];
    corpus.push("The pass key is 12345. Remember it. 12345 is the pass key.".into());
    corpus.push("One of the special magic numbers for key is: 1234567.".into());
    if let Ok(text) =
        std::fs::read_to_string(kvcat_bench::tasks::assets_dir().join(kvcat_bench::tasks::ESSAYS))
    {
        corpus.extend(
            text.chars()
                .take(20_000)
                .collect::<String>()
                .lines()
                .map(String::from),
        );
    }
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(600)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, corpus.iter()).expect("train BPE");
    Tokenizer::new(tok)
}

/// Builds a registered task from `key = value` TOML text.
pub fn task(name: &str, params: &str) -> Box<dyn kvcat_core::task::Task> {
    let table: toml::Table = params.parse().expect("params TOML");
    kvcat_core::task::build_task(name, &table).expect("build task")
}

/// Text of an example's context.
pub fn context_text(e: &kvcat_core::task::Example) -> &str {
    match &e.context {
        kvcat_core::task::Context::Text(t) => t,
        kvcat_core::task::Context::Tokens(_) => panic!("token context"),
    }
}
