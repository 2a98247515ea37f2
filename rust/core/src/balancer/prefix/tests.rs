use super::super::testing::specs;
use super::*;

fn balancer(ids: &[&str], config: PrefixConfig) -> PrefixAware<String> {
    PrefixAware::new(config, specs(ids), 10.0).unwrap()
}

fn pick(b: &PrefixAware<String>, prompt: &[u8]) -> String {
    b.pick_with(Prompt::Bytes(prompt), |m| m.handle.clone())
        .unwrap()
}

/// Picks at `now_s` seconds of a manual clock.
fn pick_at(b: &PrefixAware<String>, prompt: &[u8], now_s: f64) -> String {
    let mut hashes = Vec::new();
    b.config().hash(Prompt::Bytes(prompt), &mut hashes);
    b.pick_at(&hashes, &[], (now_s * 1e9) as u64, |m| m.handle.clone())
        .unwrap()
}

/// A prompt of `blocks` 64-byte blocks: a shared `group` prefix of `shared`
/// blocks, then blocks unique to `user`.
fn prompt(group: u32, shared: usize, user: u32, blocks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..blocks {
        let tag = if i < shared {
            format!("g{group}-b{i}")
        } else {
            format!("g{group}-u{user}-b{i}")
        };
        let mut block = tag.into_bytes();
        block.resize(64, b'.');
        out.extend_from_slice(&block);
    }
    out
}

fn blocks_of(b: &PrefixAware<String>, id: &str) -> u64 {
    b.prefix_stats()
        .blocks_per_node
        .iter()
        .find(|(n, _)| n == id)
        .map_or(0, |(_, c)| *c)
}

#[test]
fn a_prompt_returns_to_the_node_that_holds_its_prefix() {
    let b = balancer(&["a", "b", "c", "d"], PrefixConfig::default());
    let first = pick_at(&b, &prompt(1, 8, 0, 10), 1.0);
    for user in 1..20 {
        // A second apart: the prefill work sent before is done.
        let at = 1.0 + 10.0 * f64::from(user);
        assert_eq!(pick_at(&b, &prompt(1, 8, user, 10), at), first);
    }
    let s = b.prefix_stats();
    assert_eq!(s.prompts, 20);
    assert_eq!(s.prompt_blocks, 200);
    assert_eq!(s.matched_blocks, 19 * 8);
    assert_eq!(s.blocks, 8 + 20 * 2);
    assert_eq!(blocks_of(&b, &first), 48);
}

#[test]
fn misses_go_to_the_smallest_record_then_the_least_loaded() {
    let b = balancer(&["a", "b", "c"], PrefixConfig::default());
    b.balancer().begin("a").unwrap();
    b.balancer().begin("b").unwrap();
    assert_eq!(pick(&b, &prompt(7, 4, 0, 4)), "c");
    b.balancer().end("a", 0.1, true).unwrap();
    b.balancer().end("b", 0.1, true).unwrap();
    let mut seen = std::collections::HashSet::new();
    for g in 100..160 {
        seen.insert(pick(&b, &prompt(g, 4, 0, 4)));
    }
    assert_eq!(
        seen.len(),
        3,
        "new prefixes at equal load spread over every node"
    );
}

#[test]
fn an_overloaded_holder_spills_and_the_prefix_gets_a_second_home() {
    let b = balancer(&["a", "b", "c", "d"], PrefixConfig::default());
    let home = pick(&b, &prompt(1, 8, 0, 8));
    for _ in 0..16 {
        b.balancer().begin(&home).unwrap();
    }
    // Mean load 4, limit max(6, 12), and 16 in flight against none: the
    // holder at 16 is passed over.
    let second = pick(&b, &prompt(1, 8, 1, 8));
    assert_ne!(second, home);
    assert_eq!(b.prefix_stats().spills, 1);
    // The second home now holds the prefix and takes it while the first is busy.
    for user in 2..10 {
        assert_eq!(pick(&b, &prompt(1, 8, user, 8)), second);
    }
    assert_eq!(blocks_of(&b, &second), 8);
}

#[test]
fn a_node_without_the_shared_prefix_takes_work_once_the_holders_are_ahead() {
    // Every prompt shares a system prompt that four of five nodes hold (the
    // fifth restarted, or missed the warm-up). Judged against the mean, the
    // four at equal load never reach 1.5 x the mean and the fifth starves;
    // judged also against the least busy, it takes work once they are
    // 2 x `balance_abs` ahead, and then holds the prefix too.
    let ids = ["a", "b", "c", "d", "e"];
    let b = balancer(&ids, in_flight_only(3));
    let hashes = |user: u32| {
        let mut out = Vec::new();
        b.config()
            .hash(Prompt::Bytes(&prompt(1, 8, user, 10)), &mut out);
        out
    };
    for (user, home) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let others: Vec<&str> = ids.iter().copied().filter(|n| *n != home).collect();
        let got = b
            .pick_at(&hashes(user as u32), &others, 0, |m| m.handle.clone())
            .unwrap();
        assert_eq!(got, home);
    }
    assert_eq!(blocks_of(&b, "e"), 0);
    for load in 1..=17 {
        for home in ["a", "b", "c", "d"] {
            b.balancer().begin(home).unwrap();
        }
        let got = b
            .pick_at(&hashes(100 + load), &[], 0, |m| m.handle.clone())
            .unwrap();
        if load <= 16 {
            assert_ne!(got, "e", "holders at {load}, within 16 of the idle node");
        } else {
            assert_eq!(got, "e", "holders at {load}: 16 ahead of the idle node");
        }
    }
    assert_eq!(blocks_of(&b, "e"), 10, "it holds the shared prefix now");
}

#[test]
fn a_short_match_counts_as_none_under_min_match() {
    let config = PrefixConfig {
        min_match: 0.5,
        ..PrefixConfig::default()
    };
    let b = balancer(&["a", "b"], config);
    let home = pick(&b, &prompt(1, 2, 0, 10));
    b.balancer().begin(&home).unwrap();
    // 2 of 10 blocks match: under half, so the idle node wins.
    assert_ne!(pick(&b, &prompt(1, 2, 1, 10)), home);
    b.balancer().begin("a").unwrap();
    b.balancer().begin("b").unwrap();
    // 8 of 10 blocks match: the holder wins at equal load.
    let full = prompt(1, 8, 2, 10);
    let holder = pick(&b, &full);
    assert_eq!(pick(&b, &full), holder);
}

#[test]
fn the_record_never_outgrows_its_budget() {
    let config = PrefixConfig {
        max_blocks: 1_000,
        shards: 4,
        ..PrefixConfig::default()
    };
    let b = balancer(&["a", "b", "c"], config);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut peak_bytes = 0;
    for i in 0..5_000 {
        let p = prompt(rng.u32(..200), rng.usize(0..20), i, 20);
        pick(&b, &p);
        if i % 97 == 0 {
            let s = b.prefix_stats();
            assert!(s.blocks <= 1_000, "{} blocks", s.blocks);
            let per_node: u64 = s.blocks_per_node.iter().map(|(_, n)| n).sum();
            assert_eq!(per_node, s.blocks);
            peak_bytes = peak_bytes.max(s.bytes);
        }
    }
    let s = b.prefix_stats();
    // Each of the 3 nodes holds at most its share, 333.
    assert_eq!(s.blocks, 999);
    assert!(s.evictions > 50_000);
    // Pairs of 40 bytes and their table: far under what 4 shards of 1,000
    // would hold if freed room were never given back.
    assert!(peak_bytes < 200_000, "{peak_bytes} bytes");
}

#[test]
fn eviction_is_least_recently_used_across_shards() {
    let config = PrefixConfig {
        max_blocks: 100,
        shards: 8,
        ..PrefixConfig::default()
    };
    let b = balancer(&["a"], config);
    for g in 0..10 {
        pick(&b, &prompt(g, 10, 0, 10));
    }
    // Group 0 is used again, so the least recent is group 1.
    pick(&b, &prompt(0, 10, 0, 10));
    pick(&b, &prompt(99, 10, 0, 10));
    let before = b.prefix_stats().matched_blocks;
    pick(&b, &prompt(0, 10, 0, 10));
    assert_eq!(b.prefix_stats().matched_blocks - before, 10);
    let before = b.prefix_stats().matched_blocks;
    pick(&b, &prompt(1, 10, 0, 10));
    assert_eq!(
        b.prefix_stats().matched_blocks - before,
        0,
        "group 1 was evicted"
    );
}

#[test]
fn what_survives_eviction_is_a_prefix() {
    let config = PrefixConfig {
        max_blocks: 15,
        shards: 1,
        ..PrefixConfig::default()
    };
    let b = balancer(&["a"], config);
    pick(&b, &prompt(1, 10, 0, 10));
    pick(&b, &prompt(2, 10, 0, 10));
    // Room for 15: group 2's 10 and group 1's first 5.
    let before = b.prefix_stats().matched_blocks;
    pick(&b, &prompt(1, 10, 0, 10));
    assert_eq!(b.prefix_stats().matched_blocks - before, 5);
}

#[test]
fn removed_nodes_lose_their_record_and_unavailable_ones_keep_it() {
    let b = balancer(&["a", "b"], PrefixConfig::default());
    let p = prompt(1, 6, 0, 6);
    let home = pick(&b, &p);
    b.balancer().set_available(&home, false).unwrap();
    let other = pick(&b, &p);
    assert_ne!(other, home);
    b.balancer().set_available(&home, true).unwrap();
    assert_eq!(blocks_of(&b, &home), 6, "kept while unavailable");
    b.balancer().update(specs(&["a", "b", "c"])).unwrap();
    b.balancer().update(specs(&[other.as_str(), "c"])).unwrap();
    let s = b.prefix_stats();
    assert_eq!(s.blocks, 6, "{s:?}");
    assert_eq!(blocks_of(&b, &other), 6);
    // A node that joins again starts cold.
    b.balancer().update(specs(&["a", "b", "c"])).unwrap();
    assert_eq!(blocks_of(&b, &home), 0);
}

#[test]
fn token_prompts_use_token_blocks() {
    let b = balancer(&["a", "b", "c"], PrefixConfig::default());
    let tokens: Vec<u32> = (0..64).collect();
    let first = b
        .pick_with(Prompt::Tokens(&tokens), |m| m.handle.clone())
        .unwrap();
    assert_eq!(b.prefix_stats().prompt_blocks, 4);
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    assert_eq!(
        pick(&b, &bytes),
        first,
        "the same ids packed in bytes match"
    );
}

#[test]
fn a_prompt_without_a_whole_block_goes_to_the_least_loaded() {
    let b = balancer(&["a", "b"], PrefixConfig::default());
    b.balancer().begin("a").unwrap();
    assert_eq!(pick(&b, b"short"), "b");
    assert_eq!(b.prefix_stats().prompts, 0);
    let empty = balancer(&[], PrefixConfig::default());
    assert_eq!(
        empty.pick_with(Prompt::Bytes(&[1; 640]), |_| ()),
        Err(Error::NoAvailableNode)
    );
}

#[test]
fn settings_out_of_range_are_refused_by_name() {
    let cases: [(&str, PrefixConfig); 6] = [
        (
            "block_size",
            PrefixConfig {
                block_bytes: 0,
                ..PrefixConfig::default()
            },
        ),
        (
            "token_block_size",
            PrefixConfig {
                block_tokens: 5000,
                ..PrefixConfig::default()
            },
        ),
        (
            "max_blocks",
            PrefixConfig {
                max_blocks: 0,
                ..PrefixConfig::default()
            },
        ),
        (
            "shards",
            PrefixConfig {
                shards: 0,
                ..PrefixConfig::default()
            },
        ),
        (
            "balance_rel",
            PrefixConfig {
                balance_rel: f64::NAN,
                ..PrefixConfig::default()
            },
        ),
        (
            "min_match",
            PrefixConfig {
                min_match: 1.5,
                ..PrefixConfig::default()
            },
        ),
    ];
    for (name, config) in cases {
        match PrefixAware::<String>::new(config, vec![], 10.0) {
            Err(Error::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
            _ => panic!("{name} accepted"),
        }
    }
}

#[test]
fn picks_from_many_threads_keep_the_record_consistent() {
    let config = PrefixConfig {
        max_blocks: 2_000,
        shards: 4,
        ..PrefixConfig::default()
    };
    let b = Arc::new(balancer(&["a", "b", "c", "d"], config));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                for i in 0..3_000 {
                    pick(&b, &prompt(rng.u32(..300), 8, i, 12));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = b.prefix_stats();
    assert!(s.blocks <= 2_000);
    assert_eq!(
        s.blocks_per_node.iter().map(|(_, n)| n).sum::<u64>(),
        s.blocks
    );
    assert_eq!(s.prompts, 12_000);
}

/// A config whose load is requests in flight only, seeded.
fn in_flight_only(seed: u64) -> PrefixConfig {
    PrefixConfig {
        prefill_weight: 0.0,
        seed: Some(seed),
        ..PrefixConfig::default()
    }
}

#[test]
fn new_prefixes_through_a_full_record_spread_evenly_and_never_herd() {
    let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let config = PrefixConfig {
        max_blocks: 800,
        ..in_flight_only(5)
    };
    let b = balancer(&ids, config);
    let mut counts = std::collections::HashMap::new();
    let (mut same, mut last) = (0, String::new());
    for g in 0..10_000 {
        let node = pick(&b, &prompt(g, 4, 0, 4));
        if g >= 400 {
            // The record is full from here on (8 nodes x 100 blocks).
            *counts.entry(node.clone()).or_insert(0u32) += 1;
            same += u32::from(node == last);
        }
        last = node;
    }
    assert_eq!(b.prefix_stats().blocks, 800, "the record is full");
    let fair = 9_600.0 / 8.0;
    for id in ids {
        let got = f64::from(counts[id]);
        assert!((got / fair - 1.0).abs() < 0.1, "{id}: {got} of {fair}");
    }
    // The same node twice in a row as often as at random (1 in 8), not more.
    assert!(f64::from(same) < 1.3 * 9_600.0 / 8.0, "{same} repeats");
}

#[test]
fn a_node_that_joins_gets_more_than_its_share_until_its_record_fills() {
    let b = balancer(&["a", "b"], in_flight_only(3));
    for g in 0..40 {
        pick(&b, &prompt(g, 8, 0, 8));
    }
    b.balancer().update(specs(&["a", "b", "c"])).unwrap();
    let to_c: Vec<bool> = (100..160)
        .map(|g| pick(&b, &prompt(g, 8, 0, 8)) == "c")
        .collect();
    // The emptiest record wins until it is as full as the others (20
    // prefixes of 8 blocks), then new prefixes are shared.
    assert!(to_c[..20].iter().all(|&c| c), "{to_c:?}");
    let rest = to_c[20..].iter().filter(|&&c| c).count();
    assert!((8..=20).contains(&rest), "{rest} of 40");
    // An overloaded newcomer is passed over even with the smallest record.
    for _ in 0..20 {
        b.balancer().begin("c").unwrap();
    }
    for g in 200..210 {
        assert_ne!(pick(&b, &prompt(g, 8, 0, 8)), "c");
    }
}

#[test]
fn each_node_keeps_at_most_its_capacity_and_forgets_its_oldest() {
    let config = PrefixConfig {
        node_blocks: 20,
        ..in_flight_only(1)
    };
    let b = balancer(&["a", "b"], config);
    let mut home = Vec::new();
    for g in 0..30 {
        home.push(pick(&b, &prompt(g, 4, 0, 4)));
    }
    let s = b.prefix_stats();
    assert_eq!(s.blocks, 40);
    assert!(s.blocks_per_node.iter().all(|(_, n)| *n == 20));
    // The latest prefixes are held where they went; the first are gone.
    let mut hashes = Vec::new();
    b.config()
        .hash(Prompt::Bytes(&prompt(29, 4, 0, 4)), &mut hashes);
    let depths = b.depths(&hashes);
    assert!(depths.iter().any(|(id, d)| *id == home[29] && *d == 4));
    hashes.clear();
    b.config()
        .hash(Prompt::Bytes(&prompt(0, 4, 0, 4)), &mut hashes);
    assert!(b.depths(&hashes).iter().all(|(_, d)| *d == 0));
    // A node's own capacity overrides the default, and 0 restores it.
    b.set_node_blocks("a", 8).unwrap();
    b.balancer().set_available("b", false).unwrap();
    for g in 100..130 {
        pick(&b, &prompt(g, 4, 0, 4));
    }
    assert_eq!(blocks_of(&b, "a"), 8);
    b.balancer().set_available("b", true).unwrap();
    b.set_node_blocks("a", 0).unwrap();
    assert_eq!(b.queue_stats(0)[0].capacity, 20);
    assert!(matches!(
        b.set_node_blocks("zz", 5),
        Err(Error::UnknownNode { .. })
    ));
}

#[test]
fn a_node_forgotten_is_cold_and_the_others_keep_their_record() {
    let b = balancer(&["a", "b", "c"], PrefixConfig::default());
    for g in 0..12 {
        pick_at(&b, &prompt(g, 4, 0, 4), f64::from(g));
    }
    let before = blocks_of(&b, "b") + blocks_of(&b, "c");
    b.forget("a").unwrap();
    assert_eq!(blocks_of(&b, "a"), 0);
    assert_eq!(blocks_of(&b, "b") + blocks_of(&b, "c"), before);
    assert_eq!(b.queue_stats(0)[0].prefill_blocks, 0.0);
    assert_eq!(b.forget("zz"), Err(Error::UnknownNode { id: "zz".into() }));
}

#[test]
fn prefill_work_sent_to_a_node_counts_as_load_until_it_decays() {
    let config = PrefixConfig {
        prefill_weight: 4.0,
        prefill_decay_s: 1.0,
        balance_abs: 1.0,
        seed: Some(2),
        ..PrefixConfig::default()
    };
    let b = balancer(&["a", "b"], config);
    // A long prompt to "a" at t=0, and nothing in flight anywhere.
    let long = prompt(1, 40, 0, 40);
    let home = pick_at(&b, &long, 0.0);
    // At once, the holder's queued prefill (4 mean prompts of work, with
    // the mean at 40 blocks... of one prompt) makes it overloaded.
    let other = if home == "a" { "b" } else { "a" };
    assert_eq!(pick_at(&b, &prompt(1, 40, 1, 41), 0.0), other);
    let q = b.queue_stats((1e9) as u64);
    let sent = q.iter().find(|s| s.id == home).unwrap().prefill_blocks;
    assert!((sent - 40.0 * (-1.0f64).exp()).abs() < 1e-6, "{sent}");
    // Ten time constants later the work is done: the prefix goes home.
    assert_eq!(pick_at(&b, &prompt(1, 40, 2, 41), 20.0), home);
}

#[test]
fn a_retry_excludes_the_nodes_it_tried_and_records_its_choice() {
    let b = balancer(&["a", "b", "c"], PrefixConfig::default());
    let p = prompt(1, 8, 0, 8);
    let mut hashes = Vec::new();
    b.config().hash(Prompt::Bytes(&p), &mut hashes);
    let home = pick(&b, &p);
    let retry = b
        .pick_excluding(&hashes, &[home.as_str()], |m| m.handle.clone())
        .unwrap();
    assert_ne!(retry, home);
    assert_eq!(
        blocks_of(&b, &retry),
        8,
        "the node a retry chose now holds the prompt"
    );
    let third = b
        .pick_excluding(&hashes, &[home.as_str(), retry.as_str()], |m| {
            m.handle.clone()
        })
        .unwrap();
    assert!(third != home && third != retry);
    assert_eq!(
        b.pick_excluding(&hashes, &["a", "b", "c"], |_| ()),
        Err(Error::NoAvailableNode)
    );
    assert_eq!(
        b.pick_excluding(&[], &["a", "b", "c"], |_| ()),
        Err(Error::NoAvailableNode)
    );
    assert_eq!(
        b.pick_excluding(&[], &["a", "b"], |m| m.handle.clone()),
        Ok("c".into())
    );
    // Ids it does not know exclude nothing.
    assert!(b.pick_excluding(&hashes, &["zz"], |_| ()).is_ok());
}

#[test]
fn a_router_that_merges_anothers_journal_routes_as_it_did() {
    let config = PrefixConfig {
        seed: Some(1),
        ..PrefixConfig::default()
    };
    let one = balancer(&["a", "b", "c", "d"], config.clone());
    let two = balancer(&["a", "b", "c", "d"], config);
    one.set_journal(1 << 20);
    let homes: Vec<String> = (0..8).map(|g| pick(&one, &prompt(g, 8, 0, 10))).collect();
    let data = one.take_journal();
    assert!(one.take_journal().is_empty(), "a take empties the journal");
    assert_eq!(two.merge_journal(&data).unwrap(), 8);
    for (g, home) in homes.iter().enumerate() {
        assert_eq!(&pick(&two, &prompt(g as u32, 8, 1, 10)), home);
    }
    let s = two.prefix_stats();
    assert_eq!((s.merged, s.merge_skipped), (8, 0));
    assert_eq!(
        s.matched_blocks,
        8 * 8,
        "every prompt matched its group's prefix"
    );
    // The second router kept no journal: nothing to take.
    assert!(two.take_journal().is_empty());
}

#[test]
fn picks_of_unknown_nodes_are_skipped_and_a_full_journal_drops_picks() {
    let one = balancer(&["a", "x"], PrefixConfig::default());
    let two = balancer(&["a", "b"], PrefixConfig::default());
    one.set_journal(12 + 2 * (4 + 1 + 8 * 4));
    for g in 0..6 {
        pick(&one, &prompt(g, 4, 0, 4));
    }
    assert_eq!(one.prefix_stats().journal_dropped, 4);
    let data = one.take_journal();
    let merged = two.merge_journal(&data).unwrap();
    let s = two.prefix_stats();
    assert_eq!(merged as u64 + s.merge_skipped, 2);
    assert_eq!(s.merged, merged as u64);
    one.set_journal(0);
    pick(&one, &prompt(9, 4, 0, 4));
    assert!(
        one.take_journal().is_empty(),
        "a journal turned off keeps nothing"
    );
}

#[test]
fn hostile_journals_are_refused_whole_and_name_data() {
    let one = balancer(&["a", "b"], PrefixConfig::default());
    let two = balancer(&["a", "b"], PrefixConfig::default());
    one.set_journal(1 << 20);
    for g in 0..3 {
        pick(&one, &prompt(g, 4, 0, 6));
    }
    let data = one.take_journal();
    // A cut between entries is a shorter journal; any other is refused.
    let entry = 4 + 1 + 8 * 6;
    for cut in 1..data.len() {
        let whole = cut >= 12 && (cut - 12) % entry == 0;
        match two.merge_journal(&data[..cut]) {
            Ok(n) if whole => assert_eq!(n, (cut - 12) / entry),
            Err(Error::InvalidArgument { name, .. }) if !whole => assert_eq!(name, "data"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert_eq!(two.merge_journal(&[]).unwrap(), 0);
    assert_eq!(
        two.prefix_stats().merged,
        3,
        "the whole entries of cut journals"
    );
    let blocks = two.prefix_stats().blocks;
    assert!(two.merge_journal(&data[..data.len() - 1]).is_err());
    assert_eq!(
        two.prefix_stats().blocks,
        blocks,
        "nothing recorded from refused bytes"
    );
    let mut other_version = data.clone();
    other_version[3] = 9;
    assert!(two.merge_journal(&other_version).is_err());
    let tokens = balancer(
        &["a", "b"],
        PrefixConfig {
            block_bytes: 32,
            ..PrefixConfig::default()
        },
    );
    assert!(tokens.merge_journal(&data).is_err(), "other block sizes");
    // Random bytes never panic.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let mut noise = data.clone();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..noise.len());
            noise[at] = rng.u8(..);
        }
        noise.truncate(rng.usize(..=noise.len()));
        let _ = two.merge_journal(&noise);
    }
}

/// vLLM-style event batches (the array form), for the exact-mode tests.
mod events {
    use super::super::kv_events::tests::W;

    /// `BlockStored` of `blocks` blocks of 16 tokens, named `first..` by
    /// the server, continuing from its block `parent`.
    pub fn stored(w: &mut W, first: u64, parent: Option<u64>, tokens: &[u32]) {
        let hashes: Vec<u64> = (0..tokens.len() as u64 / 16).map(|i| first + i).collect();
        w.array(7).str("BlockStored").uints(&hashes);
        match parent {
            Some(p) => w.uint(p),
            None => w.nil(),
        };
        let tokens: Vec<u64> = tokens.iter().map(|&t| u64::from(t)).collect();
        w.uints(&tokens).uint(16).nil().str("GPU");
    }

    pub fn batch(events: usize, write: impl FnOnce(&mut W)) -> Vec<u8> {
        let mut w = W::default();
        w.array(2).float(1.0).array(events);
        write(&mut w);
        w.0
    }
}

fn token_depths(b: &PrefixAware<String>, tokens: &[u32]) -> Vec<(String, u32)> {
    let mut hashes = Vec::new();
    b.config().hash(Prompt::Tokens(tokens), &mut hashes);
    b.depths(&hashes)
}

fn depth_of(b: &PrefixAware<String>, tokens: &[u32], id: &str) -> u32 {
    token_depths(b, tokens)
        .into_iter()
        .find(|(n, _)| n == id)
        .map_or(0, |(_, d)| d)
}

#[test]
fn kv_events_make_the_record_what_the_server_holds() {
    let b = balancer(&["a", "b"], PrefixConfig::default());
    let tokens: Vec<u32> = (0..64).collect();
    // Four blocks stored in two events, the second continuing the first.
    let one = events::batch(1, |w| events::stored(w, 100, None, &tokens[..32]));
    let two = events::batch(1, |w| events::stored(w, 102, Some(101), &tokens[32..]));
    b.apply_kv_events("a", &one).unwrap();
    let counts = b.apply_kv_events("a", &two).unwrap();
    assert_eq!((counts.batches, counts.stored), (1, 2));
    assert_eq!(depth_of(&b, &tokens, "a"), 4);
    assert_eq!(depth_of(&b, &tokens, "b"), 0);
    // The server evicts its last block, then clears everything.
    let removed = events::batch(1, |w| {
        w.array(3).str("BlockRemoved").uints(&[103]).nil();
    });
    b.apply_kv_events("a", &removed).unwrap();
    assert_eq!(depth_of(&b, &tokens, "a"), 3);
    let cleared = events::batch(1, |w| {
        w.array(1).str("AllBlocksCleared");
    });
    b.apply_kv_events("a", &cleared).unwrap();
    assert_eq!(depth_of(&b, &tokens, "a"), 0);
    assert_eq!(blocks_of(&b, "a"), 0);
    let s = b.prefix_stats().events;
    assert_eq!((s.batches, s.stored, s.removed, s.cleared), (4, 4, 1, 1));
    // After the clear the server's old names mean nothing.
    b.apply_kv_events("a", &removed).unwrap();
    assert_eq!(b.prefix_stats().events.unknown_removed, 1);
}

#[test]
fn a_pick_matches_what_the_events_recorded() {
    let b = balancer(&["a", "b", "c"], PrefixConfig::default());
    let tokens: Vec<u32> = (1000..1000 + 16 * 8).collect();
    let batch = events::batch(1, |w| events::stored(w, 7, None, &tokens));
    b.apply_kv_events("c", &batch).unwrap();
    let mut asked = tokens.clone();
    asked.extend(5000..5032);
    let node = b
        .pick_with(Prompt::Tokens(&asked), |m| m.handle.clone())
        .unwrap();
    assert_eq!(node, "c");
    assert_eq!(b.prefix_stats().matched_blocks, 8);
}

#[test]
fn events_a_pick_cannot_match_are_counted_and_skipped() {
    let b = balancer(&["a"], PrefixConfig::default());
    let tokens: Vec<u32> = (0..32).collect();
    // A parent the router never saw, another block size, another medium.
    let orphan = events::batch(1, |w| events::stored(w, 1, Some(999), &tokens));
    let mut w = super::kv_events::tests::W::default();
    w.array(2).float(0.0).array(2);
    w.array(5)
        .str("BlockStored")
        .uints(&[1])
        .nil()
        .uints(&(0..8).collect::<Vec<u64>>())
        .uint(8);
    w.array(7)
        .str("BlockStored")
        .uints(&[2, 3])
        .nil()
        .uints(&(0..32).collect::<Vec<u64>>())
        .uint(16)
        .nil()
        .str("CPU");
    for data in [orphan, w.0] {
        b.apply_kv_events("a", &data).unwrap();
    }
    let s = b.prefix_stats();
    assert_eq!(s.blocks, 0);
    assert_eq!((s.events.orphaned, s.events.ignored), (2, 3));
}

#[test]
fn a_malformed_batch_is_refused_whole_and_leaves_the_record() {
    let b = balancer(&["a"], PrefixConfig::default());
    let tokens: Vec<u32> = (0..32).collect();
    let good = events::batch(2, |w| {
        events::stored(w, 1, None, &tokens[..16]);
        events::stored(w, 2, Some(1), &tokens[16..]);
    });
    for cut in 0..good.len() {
        match b.apply_kv_events("a", &good[..cut]) {
            Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, "data"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let s = b.prefix_stats();
    assert_eq!(
        (s.blocks, s.events.refused, s.events.batches),
        (0, good.len() as u64, 0)
    );
    assert!(matches!(
        b.apply_kv_events("zz", &good),
        Err(Error::UnknownNode { .. })
    ));
    b.apply_kv_events("a", &good).unwrap();
    assert_eq!(depth_of(&b, &tokens, "a"), 2);
}
