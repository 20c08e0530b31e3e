//! The decoder's forward pass at explicit positions — the one implementation of the forward
//! pass. [`Llama::forward_with`] calls it with positions `cache.seq_len ..`; re-prefilling a
//! *subset* of a context at the tokens' original positions (token-level prompt compression
//! such as `prompt_lingua`) calls it directly.

use crate::attention::AttentionCapture;
use crate::cache::KvCache;
use crate::model::{ForwardOptions, ForwardOutput, Llama, Logits};
use crate::{Error, Result};
use tch::{Kind, Tensor};

impl Llama {
    /// Like [`Llama::forward_with`], but `tokens` `[b, t]` sit at the explicit `positions`
    /// `[t]` (int64, strictly increasing; shared by the batch) or `[b, t]` (per row, each row
    /// strictly increasing: batched decoding of rows with different lengths) instead of
    /// `cache.seq_len .. cache.seq_len + t`. Keys are rotated for those positions and recorded
    /// with them; causality among the new tokens follows their order. Afterwards
    /// `cache.seq_len = max(cache.seq_len, last position + 1)`.
    pub fn forward_at(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        self.check_tokens(tokens)?;
        let size = tokens.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "tokens must be [batch, time], got shape {size:?}"
            )));
        }
        let x = Tensor::embedding(
            &self.embed_tokens,
            &tokens.to_device(self.device()),
            -1,
            false,
            false,
        );
        self.forward_embeds_at(&x, positions, cache, opts)
    }

    /// Like [`Llama::forward_at`], but from input embeddings `x` `[b, t, hidden]` in the model
    /// dtype instead of token ids: slots with no token of their own, such as learned summary
    /// slots ([`crate::summary`]).
    pub fn forward_embeds_at(
        &self,
        x: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let positions = self.check_inputs(x, positions, cache, opts)?;
        let (t, device) = (x.size()[1], self.device());
        let (cos, sin) = crate::attention::rope_tables(
            &positions,
            self.config.head_dim,
            self.config.rope_theta,
            self.kind(),
        );
        let mut x = x.to_device(device).to_kind(self.kind());
        let mut out = ForwardOutput::default();
        let fresh = cache.is_empty();
        for (i, layer) in self.layers.iter().enumerate() {
            if opts.capture_hidden {
                out.hidden.push(x.shallow_clone());
            }
            let capture = AttentionCapture {
                queries: opts.capture_queries,
                attention: opts.capture_attention,
            };
            let layer_cache = if fresh {
                None
            } else {
                Some(&mut cache.layers[i])
            };
            let h = layer.input_layernorm.forward(&x);
            let (attn_out, new_cache, caught) = layer.self_attn.forward(
                &h,
                layer_cache,
                &positions,
                (&cos, &sin),
                opts.layer_bias.map(|b| &b[i]),
                capture,
            )?;
            if let Some(c) = new_cache {
                cache.layers.push(c);
            }
            if let Some(q) = caught.queries {
                out.queries.push(q);
            }
            if let Some(a) = caught.attention {
                out.attention.push(a);
            }
            // Out of place: autograd saved `x` for the norm's backward.
            x = x + attn_out;
            x = &x
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&x));
        }
        if opts.capture_hidden {
            out.hidden.push(x.shallow_clone());
        }
        let last = positions.max().int64_value(&[]);
        cache.seq_len = cache.seq_len.max(last + 1);
        out.logits = match opts.logits {
            Logits::None => None,
            Logits::All => Some(self.lm_head(&self.norm.forward(&x))),
            Logits::Last => Some(self.lm_head(&self.norm.forward(&x.narrow(1, t - 1, 1)))),
        };
        Ok(out)
    }

    /// Checks the inputs of [`Llama::forward_embeds_at`] (shapes, strictly increasing
    /// non-negative positions, cache and bias layer counts); returns the positions as int64 on
    /// the model's device.
    fn check_inputs(
        &self,
        x: &Tensor,
        positions: &Tensor,
        cache: &KvCache,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 3 || size[2] != self.config.hidden_size {
            return Err(Error::invalid(format!(
                "input embeddings must be [batch, time, {}], got shape {size:?}",
                self.config.hidden_size
            )));
        }
        let t = size[1];
        let positions = positions.to_device(self.device()).to_kind(Kind::Int64);
        let ps = positions.size();
        if ps != [t] && ps != [size[0], t] {
            return Err(Error::invalid(format!(
                "forward_at: positions have shape {ps:?}, expected [{t}] or [{}, {t}]",
                size[0]
            )));
        }
        if t > 1 {
            let last = ps.len() as i64 - 1;
            let steps = positions.narrow(last, 1, t - 1) - positions.narrow(last, 0, t - 1);
            if steps.min().int64_value(&[]) < 1 {
                return Err(Error::invalid(
                    "forward_at: positions must be strictly increasing",
                ));
            }
        }
        if positions.min().int64_value(&[]) < 0 {
            return Err(Error::invalid("forward_at: positions must be ≥ 0"));
        }
        let n_layers = self.layers.len();
        if !cache.is_empty() && cache.layers.len() != n_layers {
            return Err(Error::invalid(format!(
                "cache has {} layers, model has {n_layers}",
                cache.layers.len()
            )));
        }
        if let Some(bias) = opts.layer_bias {
            if bias.len() != n_layers {
                return Err(Error::invalid(format!(
                    "layer_bias has {} entries, model has {n_layers} layers",
                    bias.len()
                )));
            }
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use crate::{KvCache, LlamaConfig, Model};
    use tch::{Device, Kind, Tensor};

    #[test]
    fn contiguous_positions_equal_forward_and_gaps_equal_run_by_run_prefill() {
        tch::manual_seed(1);
        let cfg = LlamaConfig {
            vocab_size: 50,
            intermediate_size: 48,
            max_position_embeddings: 128,
            ..LlamaConfig::tiny()
        };
        let m = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("model");
        let _g = tch::no_grad_guard();
        let x = Tensor::randint(50, [1, 10], (Kind::Int64, Device::Cpu));
        let full = m.forward(&x, &mut KvCache::new()).expect("forward");
        let pos = Tensor::arange(10, (Kind::Int64, Device::Cpu));
        let mut c = KvCache::new();
        let at = m
            .forward_at(&x, &pos, &mut c, &Default::default())
            .expect("forward_at")
            .logits
            .expect("logits");
        assert!((&full - &at).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(c.seq_len, 10);
        // tokens at positions [0, 1, 2, 6, 7, 9] equal three contiguous runs fed with
        // forward_with after setting seq_len to each run's start
        let keep = Tensor::from_slice(&[0i64, 1, 2, 6, 7, 9]);
        let sub = x.index_select(1, &keep);
        let mut c1 = KvCache::new();
        let a = m
            .forward_at(&sub, &keep, &mut c1, &Default::default())
            .expect("forward_at")
            .logits
            .expect("logits");
        let mut c2 = KvCache::new();
        let mut parts = vec![];
        for (start, len, off) in [(0i64, 3i64, 0i64), (6, 2, 3), (9, 1, 5)] {
            c2.seq_len = start;
            parts.push(m.forward(&sub.narrow(1, off, len), &mut c2).expect("run"));
        }
        let b = Tensor::cat(&parts, 1);
        assert!((&a - &b).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(c1.seq_len, 10);
        assert!(c1.layers[0].positions.equal(&c2.layers[0].positions));
        assert!(
            (&c1.layers[1].k - &c2.layers[1].k)
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
    }
}
