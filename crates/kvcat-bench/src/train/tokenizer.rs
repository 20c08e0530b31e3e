//! Offline byte-level BPE training for from-scratch models (`tokenizers` crate): ByteLevel
//! pre-tokenizer with `add_prefix_space(false)` (so decoding adds no leading space), the full
//! 256-byte initial alphabet, and one special token `<|endoftext|>` (id 0) separating documents.

use kvcat_core::{Error, Result, Tokenizer};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerImpl};

/// The document separator of trained tokenizers.
pub const EOS: &str = "<|endoftext|>";

/// Trains a byte-level BPE of at most `vocab_size` entries on `docs` (the first `max_chars`
/// characters in total).
pub fn train_bpe(
    docs: &[String],
    vocab_size: usize,
    min_frequency: u64,
    max_chars: usize,
) -> Result<Tokenizer> {
    let mut budget = max_chars;
    let mut sample: Vec<&str> = Vec::new();
    for d in docs {
        if budget == 0 {
            break;
        }
        let end = d
            .char_indices()
            .nth(budget)
            .map(|(i, _)| i)
            .unwrap_or(d.len());
        budget = budget.saturating_sub(d[..end].chars().count());
        sample.push(&d[..end]);
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
        .with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, sample.into_iter())
        .map_err(|e| Error::invalid(format!("training the BPE tokenizer: {e}")))?;
    Ok(Tokenizer::new(tokenizers::Tokenizer::from(tok)))
}
