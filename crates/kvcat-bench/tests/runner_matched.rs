//! `[[policy]] name = "matched"`: one `scorer` policy per eviction compressor of the grid,
//! each evaluated with every compressor (the diagonal and the off-diagonal), cached like any
//! other policy, with clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::Grid;
use runner_support::MINI;

const RAND: &str = "[[policy]]\nname = \"rand\"\n";

/// MINI with `matched` (and `train` overrides) between `none` and `rand`, plus a snapkv
/// compressor with non-default params and two compressors that are not scorers.
fn matched_text() -> String {
    MINI.replace(
        RAND,
        &format!("[[policy]]\nname = \"matched\"\ntrain = {{ steps = 3 }}\n\n{RAND}"),
    ) + "\n[[compressor]]\nname = \"snapkv\"\nparams = { window_size = 8 }\n\
         \n[[compressor]]\nname = \"kv_merge\"\n\
         \n[[compressor]]\nname = \"adakv\"\n"
}

fn parse(text: &str) -> kvcat_core::Result<Manifest> {
    Manifest::parse(text, "m.toml")
}

#[test]
fn matched_expands_to_one_scorer_policy_per_eviction_compressor() {
    let m = parse(&matched_text()).unwrap();
    let names: Vec<(&str, Option<&str>)> = m
        .policy
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.params.get("scorer").and_then(|v| v.as_str()),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("none", None),
            ("scorer", Some("streaming_llm")),
            ("scorer", Some("knorm")),
            ("scorer", Some("snapkv")),
            ("rand", None),
        ],
        "in place, one per scorer-backed compressor; kv_merge and adakv skipped"
    );
    // The compressor's params are copied (resolved), and the entry's `train` applies to each.
    let snap = &m.policy[3];
    let inner = snap.params["params"].as_table().unwrap();
    assert_eq!(inner["window_size"].as_integer(), Some(8));
    assert_eq!(inner["kernel_size"].as_integer(), Some(5));
    for p in &m.policy[1..4] {
        assert_eq!(p.train.get("steps").and_then(|v| v.as_integer()), Some(3));
    }
    // The resolved manifest holds the expansion, not `matched`, and reads back as is.
    let text = m.to_toml().unwrap();
    assert!(!text.contains("matched"), "{text}");
    let dir = std::env::temp_dir().join(format!("kvcat-matched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.toml"), &text).unwrap();
    assert_eq!(
        Manifest::read_resolved(&dir.join("manifest.toml")).unwrap(),
        m
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_matched_checkpoint_meets_every_compressor() {
    let m = parse(&matched_text()).unwrap();
    let g = Grid::expand(&m).unwrap();
    let labels: Vec<&str> = g.checkpoints.iter().map(|c| c.policy.as_str()).collect();
    assert_eq!(
        labels,
        vec![
            "base",
            "none",
            "scorer:streaming_llm",
            "scorer:knorm",
            "scorer:snapkv",
            "rand"
        ]
    );
    let n_comp = m.compressor.len();
    assert_eq!(n_comp, 5);
    for (ci, ck) in g.checkpoints.iter().enumerate() {
        let cells: Vec<_> = g.cells.iter().filter(|c| c.checkpoint == ci).collect();
        // 1 reference + every compressor × 2 compressed budgets.
        assert_eq!(cells.len(), 1 + n_comp * 2, "{}", ck.policy);
        for k in 0..n_comp {
            assert!(
                cells.iter().any(|c| c.compressor == Some(k)),
                "{} misses {k}",
                ck.policy
            );
        }
    }
    // The diagonal: the checkpoint trained for knorm is evaluated with knorm.
    let knorm_ck = labels.iter().position(|l| *l == "scorer:knorm").unwrap();
    let knorm_comp = m.compressor.iter().position(|c| c.name == "knorm").unwrap();
    assert!(g
        .cells
        .iter()
        .any(|c| c.checkpoint == knorm_ck && c.compressor == Some(knorm_comp)));
}

#[test]
fn matched_checkpoints_are_cached_like_an_explicit_scorer_policy() {
    let matched = Grid::expand(&parse(&matched_text()).unwrap()).unwrap();
    let explicit = matched_text().replace(
        "name = \"matched\"\ntrain = { steps = 3 }\n",
        "name = \"scorer\"\nparams = { scorer = \"knorm\" }\ntrain = { steps = 3 }\n",
    );
    let explicit = Grid::expand(&parse(&explicit).unwrap()).unwrap();
    let id = |g: &Grid, label: &str| {
        g.checkpoints
            .iter()
            .find(|c| c.policy == label)
            .map(|c| c.id.clone())
            .unwrap()
    };
    assert_eq!(id(&matched, "scorer:knorm"), id(&explicit, "scorer:knorm"));
    assert_ne!(id(&matched, "scorer:knorm"), id(&matched, "scorer:snapkv"));
    // Re-expanding gives the same ids (the checkpoint cache is keyed by them).
    let again = Grid::expand(&parse(&matched_text()).unwrap()).unwrap();
    let ids = |g: &Grid| {
        g.checkpoints
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&matched), ids(&again));
}

#[test]
fn two_scorer_policies_on_one_scorer_get_distinct_labels() {
    let text = MINI.replace(
        RAND,
        "[[policy]]\nname = \"scorer\"\nparams = { scorer = \"streaming_llm\" }\n\n\
         [[policy]]\nname = \"scorer\"\nparams = { scorer = \"streaming_llm\", params = { n_sink = 2 } }\n",
    );
    let g = Grid::expand(&parse(&text).unwrap()).unwrap();
    let labels: Vec<&str> = g.checkpoints.iter().map(|c| c.policy.as_str()).collect();
    assert_eq!(labels[2], "scorer:streaming_llm(n_sink=4)");
    assert_eq!(labels[3], "scorer:streaming_llm(n_sink=2)");
}

#[test]
fn matched_errors_name_the_problem() {
    // No eviction compressor in the grid.
    let text = matched_text()
        .replace("name = \"streaming_llm\"\n", "name = \"chunk_mean\"\n")
        .replace("[[compressor]]\nname = \"knorm\"\n", "")
        .replace(
            "[[compressor]]\nname = \"snapkv\"\nparams = { window_size = 8 }\n",
            "",
        );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("m.toml:") && e.contains("policy[1]"), "{e}");
    assert!(
        e.contains("matched") && e.contains("knorm") && e.contains("chunk_mean"),
        "{e}"
    );
    // `matched` takes no params.
    let text = matched_text().replace(
        "name = \"matched\"\n",
        "name = \"matched\"\nparams = { scorer = \"knorm\" }\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("policy[1].params") && e.contains("no params"),
        "{e}"
    );
    // An explicit entry that `matched` duplicates.
    let text = matched_text().replace(
        RAND,
        "[[policy]]\nname = \"scorer\"\nparams = { scorer = \"knorm\" }\ntrain = { steps = 3 }\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("matched") && e.contains("knorm") && e.contains("already"),
        "{e}"
    );
    // An unknown scorer in an explicit entry lists the known ones.
    let text = MINI.replace(
        RAND,
        "[[policy]]\nname = \"scorer\"\nparams = { scorer = \"nope\" }\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("policy[1].params") && e.contains("nope") && e.contains("snapkv"),
        "{e}"
    );
}
