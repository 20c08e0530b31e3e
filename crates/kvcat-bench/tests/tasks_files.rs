//! `jsonl` user files and `ppl_continuation` windows: parsing, bad input, determinism, sizes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench as _;
use kvcat_core::task::{build_task, Context, Metric};
use tasks_support::{task, tokenizer};

fn tmp(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kvcat-tasks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn jsonl_reads_kvpress_columns() {
    let p = tmp(
        "ok.jsonl",
        concat!(
            r#"{"context": "Alice has a red hat.", "question": " What colour?", "answer_prefix": " Answer:", "answer": "red", "max_new_tokens": 5, "task": "x"}"#,
            "\n\n",
            r#"{"context": "Bob is 7.", "question": " Age?", "answer": ["7", "seven"]}"#,
            "\n"
        ),
    );
    let t = task(
        "jsonl",
        &format!(
            "path = {:?}\nmetric = \"exact_match\"",
            p.display().to_string()
        ),
    );
    let tok = tokenizer();
    let ex = t.examples(&tok, 2, 0).unwrap();
    assert_eq!(ex[0].context, Context::Text("Alice has a red hat.".into()));
    assert_eq!(ex[0].answer_prefix, " Answer:");
    assert_eq!(ex[0].answers, vec!["red"]);
    assert_eq!(ex[0].max_new_tokens, 5);
    assert_eq!(ex[1].answers, vec!["7", "seven"]);
    assert_eq!(ex[1].max_new_tokens, 32);
    assert_eq!(ex[1].id, "line-3");
    assert_eq!(ex[1].metric, Metric::ExactMatch);
    let e = t.examples(&tok, 3, 0).unwrap_err().to_string();
    assert!(e.contains("2 rows"), "{e}");
}

#[test]
fn jsonl_bad_input_names_file_and_line() {
    let p = tmp(
        "bad.jsonl",
        "{\"context\": \"a\", \"question\": \"b\", \"answer\": \"c\"}\n{\"context\": \"a\", \"question\": \n",
    );
    let table: toml::Table = format!("path = {:?}", p.display().to_string())
        .parse()
        .unwrap();
    let e = build_task("jsonl", &table).err().unwrap().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 2"), "{e}");

    let p = tmp(
        "noanswer.jsonl",
        "{\"context\": \"a\", \"question\": \"b\"}\n",
    );
    let table: toml::Table = format!("path = {:?}", p.display().to_string())
        .parse()
        .unwrap();
    let e = build_task("jsonl", &table).err().unwrap().to_string();
    assert!(e.contains("line 1") && e.contains("answer"), "{e}");

    for (params, needle) in [
        ("path = \"/no/such/file.jsonl\"", "/no/such/file.jsonl"),
        ("metric = \"bleu\"", "path"),
        ("", "`path` is required"),
    ] {
        let table: toml::Table = params.parse().unwrap();
        let e = build_task("jsonl", &table).err().unwrap().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let p = tmp("one.jsonl", "{\"context\": \"a\", \"answer\": \"c\"}\n");
    let table: toml::Table = format!("path = {:?}\nmetric = \"bleu\"", p.display().to_string())
        .parse()
        .unwrap();
    let e = build_task("jsonl", &table).err().unwrap().to_string();
    assert!(e.contains("bleu") && e.contains("string_match_part"), "{e}");
}

#[test]
fn ppl_windows_are_exact_and_seeded() {
    let tok = tokenizer();
    for source in ["essays", "shakespeare"] {
        let t = task(
            "ppl_continuation",
            &format!("source = \"{source}\"\nprefix_len = 200\ncontinuation_len = 40"),
        );
        let a = t.examples(&tok, 3, 4).unwrap();
        assert_eq!(a, t.examples(&tok, 3, 4).unwrap());
        assert_ne!(a[0], a[1], "windows differ across examples");
        for e in &a {
            let Context::Tokens(ids) = &e.context else {
                panic!("token context")
            };
            assert_eq!(ids.len(), 200);
            assert_eq!(e.continuation.len(), 40);
            assert_eq!(e.metric, Metric::Perplexity);
            // The window is contiguous real text.
            let whole = tok
                .decode(&[ids.clone(), e.continuation.clone()].concat())
                .unwrap();
            assert!(whole.split_whitespace().count() > 20);
        }
    }
    let p = tmp("short.txt", "just a few words here");
    let t = task(
        "ppl_continuation",
        &format!("source = {:?}", p.display().to_string()),
    );
    let e = t.examples(&tok, 1, 0).unwrap_err().to_string();
    assert!(e.contains("fewer than"), "{e}");
    let table: toml::Table = "source = \"/no/corpus\"".parse().unwrap();
    let e = build_task("ppl_continuation", &table)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/no/corpus"), "{e}");
}

fn parquet_fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name);
    format!("path = {:?}", p.display().to_string())
}

#[test]
fn parquet_reads_kvpress_columns_as_pandas_writes_them() {
    let tok = tokenizer();
    // List answers, an extra column, snappy compression.
    let ex = task("parquet", &parquet_fixture("lists_snappy.parquet"))
        .examples(&tok, 2, 0)
        .unwrap();
    assert_eq!(ex[0].context, Context::Text("Alice lives in Paris.".into()));
    assert_eq!(ex[0].question, "Where does Alice live?");
    assert_eq!(ex[0].answer_prefix, "Answer:");
    assert_eq!(ex[0].answers, vec!["Paris"]);
    assert_eq!(ex[0].max_new_tokens, 8);
    assert_eq!(ex[1].answers, vec!["42", "forty-two"]);
    assert_eq!(ex[1].max_new_tokens, 4);
    assert_eq!(ex[1].metric, Metric::StringMatchPart);
    // String answers, optional columns absent, zstd compression.
    let ex = task("parquet", &parquet_fixture("strings_zstd.parquet"))
        .examples(&tok, 1, 0)
        .unwrap();
    assert_eq!(ex[0].answers, vec!["red"]);
    assert_eq!(ex[0].answer_prefix, "");
    assert_eq!(ex[0].max_new_tokens, 32);
}

#[test]
fn parquet_bad_input_names_file_row_and_column() {
    let e = build_task(
        "parquet",
        &toml::from_str(&parquet_fixture("no_answer.parquet")).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no_answer.parquet") && e.contains("row 0") && e.contains("`answer`"),
        "{e}"
    );
    let not_parquet = tmp("fake.parquet", "context,question\nx,y\n");
    let table: toml::Table =
        toml::from_str(&format!("path = {:?}", not_parquet.display().to_string())).unwrap();
    let e = build_task("parquet", &table).err().unwrap().to_string();
    assert!(
        e.contains("fake.parquet") && e.contains("not a Parquet file"),
        "{e}"
    );
}
