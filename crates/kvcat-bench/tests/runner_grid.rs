//! Grid expansion counts, content-hash ids, checkpoint planning, and shard slicing.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::jobs::Init;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::{Grid, Shard};
use runner_support::MINI;
use std::collections::HashSet;

fn grid(text: &str) -> Grid {
    Grid::expand(&Manifest::parse(text, "m.toml").unwrap()).unwrap()
}

#[test]
fn counts_follow_the_cross_product_with_one_reference() {
    let g = grid(MINI);
    // 3 checkpoints (base, none, rand) × 1 task × (1 reference + 2 compressors × 2 budgets).
    assert_eq!(g.checkpoints.len(), 3);
    assert_eq!(g.cells.len(), 15);
    assert_eq!(g.cells.iter().filter(|c| c.is_reference()).count(), 3);
    // Jobs: pretraining plus one continuation per policy, continuations start from it.
    assert_eq!(g.train_jobs.len(), 3);
    assert_eq!(g.train_jobs[0].init, Init::Scratch);
    assert_eq!(g.train_jobs[1].init, Init::Job(0));
    assert_eq!(g.train_jobs[2].init, Init::Job(0));

    // Two tasks, three compressed budgets (1.0 stays the shared reference), no base.
    let text = MINI
        .replace(
            "budgets = [0.25, 0.5, 1.0]",
            "budgets = [0.1, 0.25, 0.5, 1.0]",
        )
        .replace("base = true\n", "")
        + "\n[[task]]\nname = \"passkey\"\nn = 3\nparams = { context_len = 64 }\n";
    let g = grid(&text);
    assert_eq!(g.checkpoints.len(), 2);
    assert_eq!(g.cells.len(), 2 * 2 * (1 + 2 * 3));
    // Order: checkpoint-major, then task, reference first.
    assert!(g
        .cells
        .windows(2)
        .all(|w| w[0].checkpoint <= w[1].checkpoint));
    assert!(g.cells[0].is_reference() && g.cells[7].is_reference());
}

#[test]
fn cell_ids_are_unique_stable_and_content_addressed() {
    let a = grid(MINI);
    let ids: HashSet<&str> = a.cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), a.cells.len(), "ids are unique");
    let b = grid(MINI);
    assert_eq!(
        a.cells.iter().map(|c| &c.id).collect::<Vec<_>>(),
        b.cells.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    // Changing one compressor's params changes only that compressor's cells…
    let text = MINI.replace(
        "name = \"streaming_llm\"",
        "name = \"streaming_llm\"\nparams = { n_sink = 2 }",
    );
    let c = grid(&text);
    for (x, y) in a.cells.iter().zip(&c.cells) {
        let is_sl = x.compressor == Some(0);
        assert_eq!(x.id != y.id, is_sl, "only streaming_llm cells change");
    }
    // …and spelling a default explicitly changes nothing (ids hash resolved params).
    let text = MINI.replace(
        "name = \"streaming_llm\"",
        "name = \"streaming_llm\"\nparams = { n_sink = 4 }",
    );
    assert_eq!(
        a.cells.iter().map(|c| &c.id).collect::<Vec<_>>(),
        grid(&text).cells.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
}

#[test]
fn checkpoint_ids_follow_the_training_config() {
    let a = grid(MINI);
    // An explicit default (grad_accum = 1) resolves to the same TrainConfig: same ids.
    let b = grid(&MINI.replace("[train]\nsteps = 2", "[train]\nsteps = 2\ngrad_accum = 1"));
    assert_eq!(
        a.train_jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        b.train_jobs.iter().map(|j| &j.id).collect::<Vec<_>>()
    );
    // More continuation steps: new continuation ids, same pretraining id.
    let c = grid(&MINI.replace("[train]\nsteps = 2", "[train]\nsteps = 3"));
    assert_eq!(a.train_jobs[0].id, c.train_jobs[0].id);
    assert_ne!(a.train_jobs[1].id, c.train_jobs[1].id);
    // A different pretraining changes every descendant.
    let d = grid(&MINI.replace("[model.pretrain]\nsteps = 2", "[model.pretrain]\nsteps = 3"));
    for (x, y) in a.train_jobs.iter().zip(&d.train_jobs) {
        assert_ne!(x.id, y.id, "{}", x.label);
    }
    // Per-policy overrides apply to that policy only.
    let e = grid(&MINI.replace("name = \"rand\"", "name = \"rand\"\ntrain = { steps = 5 }"));
    assert_eq!(a.train_jobs[1].id, e.train_jobs[1].id);
    assert_ne!(a.train_jobs[2].id, e.train_jobs[2].id);
    assert_eq!(
        e.train_jobs[2]
            .table
            .get("steps")
            .and_then(|v| v.as_integer()),
        Some(5)
    );
}

#[test]
fn shards_are_disjoint_balanced_and_cover() {
    for total in [0usize, 1, 7, 15, 100] {
        for n in 1..=8 {
            let mut seen = vec![0u32; total];
            let mut sizes = Vec::new();
            let mut prev_end = 0;
            for i in 0..n {
                let r = Shard::new(i, n).unwrap().range(total);
                assert_eq!(r.start, prev_end, "contiguous");
                prev_end = r.end;
                sizes.push(r.len());
                for k in r {
                    seen[k] += 1;
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "total {total}, n {n}: each cell exactly once"
            );
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "balanced: {sizes:?}");
        }
    }
}

#[test]
fn shard_parsing_and_slurm_variables() {
    assert_eq!(
        "2/4".parse::<Shard>().unwrap(),
        Shard { index: 2, count: 4 }
    );
    for bad in ["4/4", "1/0", "a/b", "3", "-1/2"] {
        let e = bad.parse::<Shard>().unwrap_err().to_string();
        assert!(e.contains("0-based") || e.contains("i/n"), "{bad}: {e}");
    }
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(Shard::from_vars(env(&[])).unwrap(), None);
    assert_eq!(
        Shard::from_vars(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4")
        ]))
        .unwrap(),
        Some(Shard { index: 3, count: 4 })
    );
    // `--array=1-4` gives ids 1..=4 with MIN 1.
    assert_eq!(
        Shard::from_vars(env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1")
        ]))
        .unwrap(),
        Some(Shard { index: 3, count: 4 })
    );
    let e = Shard::from_vars(env(&[
        ("SLURM_ARRAY_TASK_ID", "x"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("SLURM_ARRAY_TASK_ID"), "{e}");
    assert!(Shard::from_vars(env(&[
        ("SLURM_ARRAY_TASK_ID", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "4")
    ]))
    .is_err());
}

#[test]
fn seeds_cross_continued_pretraining_only() {
    let plain = grid(MINI);
    let text = MINI.replace(
        "budgets = [0.25, 0.5, 1.0]",
        "budgets = [0.25, 0.5, 1.0]\nseeds = [0, 1, 2]",
    );
    let g = grid(&text);
    // One pretraining job, then none and rand once per seed.
    let labels: Vec<&str> = g.train_jobs.iter().map(|j| j.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "tiny/pretrain",
            "tiny/none/seed0",
            "tiny/none/seed1",
            "tiny/none/seed2",
            "tiny/rand/seed0",
            "tiny/rand/seed1",
            "tiny/rand/seed2"
        ]
    );
    assert_eq!(
        g.train_jobs[0].id, plain.train_jobs[0].id,
        "pretraining is shared"
    );
    for (j, seed) in g.train_jobs[1..].iter().zip([0, 1, 2, 0, 1, 2]) {
        assert_eq!(j.table.get("seed").and_then(|v| v.as_integer()), Some(seed));
        assert_eq!(j.init, Init::Job(0));
    }
    let seeds: Vec<Option<u64>> = g.checkpoints.iter().map(|c| c.train_seed).collect();
    assert_eq!(
        seeds,
        [None, Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)],
        "base first, without a seed"
    );
    // 7 checkpoints × (1 + 2 × 2) cells, all distinct.
    assert_eq!(g.cells.len(), 35);
    let ids: HashSet<&str> = g.cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 35);
    let ckpt_ids: HashSet<&str> = g.checkpoints.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ckpt_ids.len(), 7);
    // Without seeds nothing changes: no checkpoint carries a seed.
    assert!(plain.checkpoints.iter().all(|c| c.train_seed.is_none()));
}
