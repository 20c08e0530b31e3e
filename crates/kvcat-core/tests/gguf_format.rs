//! GGUF without the SmolLM2 asset: block decoding against hand-built blocks, name mapping,
//! the Q/K un-permutation, a tiny random Llama written as GGUF and loaded back with equal
//! logits, and bad input (bad magic, truncation, unsupported type/architecture/tokenizer).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use half::{bf16, f16};
use kvcat_core::loading::gguf::{self, dequantize, GgmlType, Value};
use kvcat_core::loading::gguf_tokenizer;
use kvcat_core::{Error, KvCache, LlamaConfig, Model};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------- a tiny GGUF writer

/// A metadata value to write.
enum Kv {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

struct TensorOut {
    name: String,
    /// GGUF dims, fastest first.
    dims: Vec<u64>,
    ty: u32,
    bytes: Vec<u8>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// Serialises a GGUF v3 file with 32-byte alignment.
fn gguf_bytes(kvs: &[(&str, Kv)], tensors: &[TensorOut]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut b, k);
        match v {
            Kv::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.bytes.len() as u64).div_ceil(32) * 32;
    }
    let data_start = b.len().div_ceil(32) * 32;
    b.resize(data_start, 0);
    for (t, off) in tensors.iter().zip(offsets) {
        b.resize(data_start + off as usize, 0);
        b.extend(&t.bytes);
    }
    b
}

/// A file in a per-process temp directory, removed when dropped.
struct TmpFile(PathBuf);

impl std::ops::Deref for TmpFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir); // only succeeds once the last file is gone
        }
    }
}

fn tmp_file(name: &str, bytes: &[u8]) -> TmpFile {
    let dir = std::env::temp_dir().join(format!("kvcat-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    TmpFile(p)
}

fn f32_tensor(name: &str, t: &Tensor) -> TensorOut {
    let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    TensorOut {
        name: name.into(),
        dims: t.size().iter().rev().map(|&d| d as u64).collect(),
        ty: 0,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn f16_tensor(name: &str, t: &Tensor) -> TensorOut {
    let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    TensorOut {
        name: name.into(),
        dims: t.size().iter().rev().map(|&d| d as u64).collect(),
        ty: 1,
        bytes: v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

fn llama_kvs() -> Vec<(&'static str, Kv)> {
    vec![
        ("general.architecture", Kv::Str("llama")),
        ("llama.block_count", Kv::U32(2)),
        ("llama.context_length", Kv::U32(128)),
        ("llama.embedding_length", Kv::U32(32)),
        ("llama.feed_forward_length", Kv::U32(64)),
        ("llama.attention.head_count", Kv::U32(4)),
        ("llama.attention.head_count_kv", Kv::U32(2)),
        ("llama.rope.freq_base", Kv::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("llama.vocab_size", Kv::U32(97)),
    ]
}

fn err_text(e: Error) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- block decoding

#[test]
fn q4_1_block_decodes_low_then_high_nibbles() {
    let (d, m) = (0.5f32, -1.25f32);
    let mut block = Vec::new();
    block.extend(f16::from_f32(d).to_le_bytes());
    block.extend(f16::from_f32(m).to_le_bytes());
    let q: Vec<u8> = (0..16u8).map(|j| (j & 15) | ((15 - j) << 4)).collect();
    block.extend(&q);
    let out: Vec<f32> = Vec::try_from(dequantize(GgmlType::Q4_1, &block, &[32]).unwrap()).unwrap();
    for j in 0..32 {
        let code = if j < 16 { q[j] & 15 } else { q[j - 16] >> 4 };
        assert_eq!(out[j], code as f32 * d + m, "value {j}");
    }
    assert_eq!(out[0], -1.25);
    assert_eq!(out[16], 15.0 * 0.5 - 1.25);
}

#[test]
fn q4_0_block_is_offset_by_eight() {
    let d = 0.25f32;
    let mut block = f16::from_f32(d).to_le_bytes().to_vec();
    let q: Vec<u8> = (0..16u8).map(|j| j | (((j * 7) & 15) << 4)).collect();
    block.extend(&q);
    let out: Vec<f32> = Vec::try_from(dequantize(GgmlType::Q4_0, &block, &[32]).unwrap()).unwrap();
    for j in 0..32 {
        let code = if j < 16 { q[j] & 15 } else { q[j - 16] >> 4 };
        assert_eq!(out[j], (code as f32 - 8.0) * d, "value {j}");
    }
}

#[test]
fn q8_0_blocks_decode_signed_bytes_and_keep_row_order() {
    // Two rows of 64 values = 4 blocks, each with its own scale.
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for blk in 0..4 {
        let d = 0.125f32 * (blk + 1) as f32;
        bytes.extend(f16::from_f32(d).to_le_bytes());
        for j in 0..32i32 {
            let q = (j * 9 - 128 + blk * 3).clamp(-128, 127) as i8;
            bytes.push(q as u8);
            expected.push(q as f32 * d);
        }
    }
    let t = dequantize(GgmlType::Q8_0, &bytes, &[2, 64]).unwrap();
    assert_eq!(t.size(), vec![2, 64]);
    let out: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    assert_eq!(out, expected);
    assert_eq!(out[0], -128.0 * 0.125);
}

#[test]
fn f16_bf16_f32_decode_exactly() {
    let vals = [1.0f32, -2.5, 0.333_251_95, 65504.0, -0.0, 6.1e-5];
    let f16b: Vec<u8> = vals
        .iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect();
    let out: Vec<f32> = Vec::try_from(
        dequantize(GgmlType::F16, &f16b, &[2, 3])
            .unwrap()
            .flatten(0, -1),
    )
    .unwrap();
    let want: Vec<f32> = vals.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(out, want);
    let bfb: Vec<u8> = vals
        .iter()
        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
        .collect();
    let out: Vec<f32> = Vec::try_from(dequantize(GgmlType::BF16, &bfb, &[6]).unwrap()).unwrap();
    let want: Vec<f32> = vals.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(out, want);
    let f32b: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    let out: Vec<f32> = Vec::try_from(
        dequantize(GgmlType::F32, &f32b, &[3, 2])
            .unwrap()
            .flatten(0, -1),
    )
    .unwrap();
    assert_eq!(out, vals);
}

#[test]
fn dequantize_rejects_wrong_sizes_and_partial_blocks() {
    assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], &[32]).is_err());
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &[16]).is_err());
    let e = err_text(dequantize(GgmlType::from_u32(12), &[0u8; 144], &[256]).unwrap_err());
    assert!(e.contains("Q4_K") && e.contains("Q4_1"), "{e}");
}

// ---------------------------------------------------------------- names and permutation

#[test]
fn gguf_names_map_to_hf_names() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "blk.3.attn_k.weight",
            "model.layers.3.self_attn.k_proj.weight",
        ),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
        ),
        (
            "blk.12.attn_output.weight",
            "model.layers.12.self_attn.o_proj.weight",
        ),
        (
            "blk.1.ffn_gate.weight",
            "model.layers.1.mlp.gate_proj.weight",
        ),
        ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
        (
            "blk.1.ffn_down.weight",
            "model.layers.1.mlp.down_proj.weight",
        ),
        (
            "blk.29.attn_norm.weight",
            "model.layers.29.input_layernorm.weight",
        ),
        (
            "blk.29.ffn_norm.weight",
            "model.layers.29.post_attention_layernorm.weight",
        ),
    ];
    for (g, hf) in cases {
        assert_eq!(gguf::names::hf_name(g).as_deref(), Some(hf), "{g}");
    }
    for g in [
        "rope_freqs.weight",
        "blk.x.attn_q.weight",
        "blk.0.attn_q.bias",
        "blk.0.foo.weight",
    ] {
        assert_eq!(gguf::names::hf_name(g), None, "{g}");
    }
}

#[test]
fn unpermute_restores_hf_half_split_rows() {
    // One head, head_dim 4: llama.cpp stores the rows interleaved [r0, r2, r1, r3]
    // (pairs (0,2) and (1,3) of the half-split layout become adjacent).
    let hf = Tensor::from_slice(&[0f32, 1., 2., 3.]).view([4, 1]);
    let gguf_rows = Tensor::from_slice(&[0f32, 2., 1., 3.]).view([4, 1]);
    let back = gguf::names::unpermute_qk(&gguf_rows, 1, "f", "t").unwrap();
    assert!(back.equal(&hf));
    // Inverse of llama.cpp's permutation for several heads.
    let w = Tensor::randn([3 * 8, 5], (Kind::Float, Device::Cpu));
    let permuted = w.reshape([3, 2, 4, 5]).transpose(1, 2).reshape([24, 5]);
    let back = gguf::names::unpermute_qk(&permuted, 3, "f", "t").unwrap();
    assert!(back.equal(&w));
    let e =
        err_text(gguf::names::unpermute_qk(&w, 5, "f.gguf", "blk.0.attn_k.weight").unwrap_err());
    assert!(
        e.contains("f.gguf") && e.contains("blk.0.attn_k.weight"),
        "{e}"
    );
}

// ---------------------------------------------------------------- round trip through a file

/// llama.cpp's converter permutation (HF → GGUF row order).
fn permute(w: &Tensor, heads: i64) -> Tensor {
    let (r, c) = (w.size()[0], w.size()[1]);
    w.reshape([heads, 2, r / heads / 2, c])
        .transpose(1, 2)
        .reshape([r, c])
}

/// Writes `model` as a llama GGUF the way llama.cpp's converter would (permuted Q/K rows,
/// reversed dims, no `output.weight` when tied). Large matrices as F16, the rest F32.
fn write_like_llama_cpp(model: &Model, name: &str) -> TmpFile {
    let cfg = &model.config;
    let mut tensors = Vec::new();
    let vars = model.vs.variables();
    let mut names: Vec<_> = vars.keys().cloned().collect();
    names.sort();
    for hf in names {
        let t = &vars[&hf];
        let g = hf
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
            .replace("model.layers.", "blk.")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("input_layernorm", "attn_norm");
        let t = if g.ends_with("attn_q.weight") {
            permute(t, cfg.num_attention_heads)
        } else if g.ends_with("attn_k.weight") {
            permute(t, cfg.num_key_value_heads)
        } else {
            t.shallow_clone()
        };
        tensors.push(if t.dim() == 2 && g.contains("ffn") {
            f16_tensor(&g, &t)
        } else {
            f32_tensor(&g, &t)
        });
    }
    tmp_file(name, &gguf_bytes(&llama_kvs(), &tensors))
}

#[test]
fn tiny_llama_written_as_gguf_loads_back_with_equal_logits() {
    for tied in [true, false] {
        tch::manual_seed(7);
        let cfg = LlamaConfig {
            max_position_embeddings: 128,
            tie_word_embeddings: tied,
            ..LlamaConfig::tiny()
        };
        let model = Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap();
        // Round the FFN weights to f16 first, as the file will store them.
        tch::no_grad(|| {
            for (n, v) in model.vs.variables() {
                if n.contains("mlp") {
                    v.shallow_clone()
                        .copy_(&v.to_kind(Kind::Half).to_kind(Kind::Float));
                }
            }
        });
        let path = write_like_llama_cpp(&model, &format!("tiny-{tied}.gguf"));
        let loaded = Model::load(&path, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(loaded.config, cfg);
        assert!(loaded.tokenizer.is_none());
        let x = Tensor::from_slice(&[3i64, 14, 15, 92, 65, 35, 89, 79, 32, 38]).view([1, -1]);
        let _g = tch::no_grad_guard();
        let a = model.forward(&x, &mut KvCache::new()).unwrap();
        let b = loaded.forward(&x, &mut KvCache::new()).unwrap();
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "tied={tied}: max |Δlogits| = {diff}");
    }
}

// ---------------------------------------------------------------- bad input

fn minimal_file(name: &str, arch: &'static str, tensor_ty: u32) -> TmpFile {
    let mut kvs = llama_kvs();
    kvs[0] = ("general.architecture", Kv::Str(arch));
    let t = TensorOut {
        name: "token_embd.weight".into(),
        dims: vec![256, 97],
        ty: tensor_ty,
        // F32 rows of 256 values take 1024 bytes, Q4_K ones 144.
        bytes: vec![0u8; 97 * if tensor_ty == 0 { 1024 } else { 144 }],
    };
    tmp_file(name, &gguf_bytes(&kvs, &[t]))
}

fn load_err(path: &Path) -> String {
    match Model::load(path, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_magic_is_a_format_error_naming_the_file() {
    let mut bytes = gguf_bytes(&llama_kvs(), &[]);
    bytes[..4].copy_from_slice(b"GGML");
    let p = tmp_file("bad-magic.gguf", &bytes);
    let e = load_err(&p);
    assert!(
        e.contains(&p.display().to_string()) && e.contains("bad magic"),
        "{e}"
    );
    let p = tmp_file("empty.gguf", &[]);
    let e = load_err(&p);
    assert!(e.contains("empty.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn truncated_file_is_a_format_error_naming_the_file_and_tensor() {
    let t = Tensor::ones([97, 32], (Kind::Float, Device::Cpu));
    let full = gguf_bytes(&llama_kvs(), &[f32_tensor("token_embd.weight", &t)]);
    // Cut inside the tensor data.
    let p = tmp_file("truncated-data.gguf", &full[..full.len() - 100]);
    let e = load_err(&p);
    assert!(
        e.contains("truncated-data.gguf")
            && e.contains("truncated")
            && e.contains("token_embd.weight"),
        "{e}"
    );
    // Cut inside the metadata.
    let p = tmp_file("truncated-header.gguf", &full[..60]);
    let e = load_err(&p);
    assert!(
        e.contains("truncated-header.gguf") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn unsupported_tensor_type_names_file_tensor_and_supported_types() {
    let p = minimal_file("q4k.gguf", "llama", 12);
    let e = load_err(&p);
    for want in ["q4k.gguf", "token_embd.weight", "Q4_K", "Q4_1, Q8_0"] {
        assert!(e.contains(want), "missing `{want}` in: {e}");
    }
}

#[test]
fn unsupported_architecture_and_version_are_reported() {
    let p = minimal_file("gpt2-arch.gguf", "gpt2", 0);
    let e = load_err(&p);
    assert!(
        e.contains("gpt2-arch.gguf") && e.contains("architecture") && e.contains("`gpt2`"),
        "{e}"
    );
    let mut bytes = gguf_bytes(&llama_kvs(), &[]);
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let p = tmp_file("v1.gguf", &bytes);
    let e = load_err(&p);
    assert!(
        e.contains("v1.gguf") && e.contains("version") && e.contains('1'),
        "{e}"
    );
}

#[test]
fn missing_tensors_and_config_fields_are_named() {
    let p = tmp_file("no-tensors.gguf", &gguf_bytes(&llama_kvs(), &[]));
    let e = load_err(&p);
    assert!(
        e.contains("no-tensors.gguf") && e.contains("model.embed_tokens.weight"),
        "{e}"
    );
    let kvs: Vec<_> = llama_kvs()
        .into_iter()
        .filter(|(k, _)| *k != "llama.embedding_length")
        .collect();
    let p = tmp_file("no-width.gguf", &gguf_bytes(&kvs, &[]));
    let e = load_err(&p);
    assert!(
        e.contains("no-width.gguf") && e.contains("llama.embedding_length"),
        "{e}"
    );
}

#[test]
fn unsupported_tokenizers_are_reported() {
    let mut meta = BTreeMap::new();
    meta.insert(
        "tokenizer.ggml.model".to_string(),
        Value::String("llama".into()),
    );
    let e = err_text(
        gguf_tokenizer::from_metadata(&meta, "spm.gguf")
            .err()
            .expect("error"),
    );
    assert!(
        e.contains("spm.gguf") && e.contains("`llama`") && e.contains("gpt2"),
        "{e}"
    );
    meta.insert(
        "tokenizer.ggml.model".to_string(),
        Value::String("gpt2".into()),
    );
    meta.insert(
        "tokenizer.ggml.pre".to_string(),
        Value::String("qwen9".into()),
    );
    let e = err_text(
        gguf_tokenizer::from_metadata(&meta, "pre.gguf")
            .err()
            .expect("error"),
    );
    assert!(
        e.contains("pre.gguf") && e.contains("`qwen9`") && e.contains("smollm"),
        "{e}"
    );
    meta.remove("tokenizer.ggml.model");
    assert!(gguf_tokenizer::from_metadata(&meta, "none.gguf")
        .unwrap()
        .is_none());
}
