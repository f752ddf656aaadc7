//! Context consolidation: near-duplicates merged, the rest kept by importance and recency
//! within a budget.
//!
//! Near-duplicates are found with MinHash over word shingles (character shingles for texts of
//! fewer words than a shingle): each entry gets a signature of [`HASHES`] minima, and the share
//! of equal minima between two signatures estimates the Jaccard similarity of their shingle
//! sets. Candidate pairs come from locality-sensitive hashing (the signature cut into bands,
//! their width chosen from the threshold; two entries that agree on a whole band are compared),
//! so a large context is not compared pair by pair; an entry at or above the similarity
//! threshold with a member of a group joins it (union-find, so chains of near-duplicates become
//! one group). A group keeps its most important member (the most
//! recent on a tie) with the group's highest importance and latest timestamp.
//!
//! What remains is ranked by `importance + recency_weight x recency` (recency from 0 for the
//! oldest entry to 1 for the newest) and kept in that order while it fits the budget: at most
//! `entries` entries and, when given, `tokens` estimated tokens (a quarter of the characters,
//! rounded up: the usual estimate for English text with BPE tokenizers). The kept entries come
//! back in time order, and every merged or dropped entry with the reason.
//!
//! This is written here rather than taken from a crate: the crates that offer MinHash bring a
//! hashing stack and generic LSH indexes for millions of documents, where an agent's context is
//! tens to thousands of short entries; 80 lines of well-known arithmetic are easier to audit.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Signature length: the estimate's standard error is about 1/sqrt(64) = 0.125 at worst (0.5).
pub(crate) const HASHES: usize = 64;

/// Rows per LSH band (bands x rows = HASHES) for a similarity threshold: a pair at the
/// threshold becomes a candidate with probability 1 - (1 - t^rows)^(64 / rows), at least 0.998
/// for every threshold (4 rows from 0.7: 0.8 gives > 0.999; 2 rows from 0.4: 0.4 gives 0.9995;
/// 1 row below). Fewer rows compare more pairs, so the rows are as many as the threshold allows.
fn rows_for(threshold: f64) -> usize {
    if threshold >= 0.7 {
        4
    } else if threshold >= 0.4 {
        2
    } else {
        1
    }
}

/// One piece of an agent's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) text: String,
    /// 0..1 (default 0.5).
    #[serde(default = "default_importance")]
    pub(crate) importance: f64,
    /// Milliseconds since the epoch (default: when it was given to the plugin).
    #[serde(default)]
    pub(crate) timestamp: Option<u64>,
    /// How many entries this one stands for (1 unless merged).
    #[serde(default = "one", skip_deserializing)]
    pub(crate) merged_count: u32,
}

fn default_importance() -> f64 {
    0.5
}

fn one() -> u32 {
    1
}

/// How consolidation treats entries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// Jaccard similarity at or above which two entries are merged.
    pub(crate) similarity_threshold: f64,
    /// Words per shingle.
    pub(crate) shingle_words: usize,
    /// Weight of recency beside importance.
    pub(crate) recency_weight: f64,
}

/// The budget to consolidate within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) entries: usize,
    pub(crate) tokens: Option<usize>,
}

/// An entry folded into another (chains of near-duplicates become one group, so `similarity`,
/// to the entry kept, may be below the threshold for a member that joined through another).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Merge {
    /// The text it was merged into.
    pub(crate) into: String,
    /// The merged entry's text.
    pub(crate) text: String,
    /// The estimated similarity of the two.
    pub(crate) similarity: f64,
}

/// An entry left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Dropped {
    pub(crate) text: String,
    pub(crate) importance: f64,
    pub(crate) reason: String,
}

/// What consolidation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Outcome {
    pub(crate) kept: Vec<Entry>,
    pub(crate) merged: Vec<Merge>,
    pub(crate) dropped: Vec<Dropped>,
    pub(crate) tokens: usize,
}

/// The estimated token count of `text`.
pub(crate) fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The hashes of `text`'s shingles: lower-cased alphanumeric words, `words` at a time; texts
/// shorter than that use character 4-grams so that short entries still compare.
fn shingles(text: &str, words: usize) -> HashSet<u64> {
    let tokens: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if tokens.len() >= words.max(1) {
        tokens
            .windows(words.max(1))
            .map(|w| fnv1a(w.join(" ").as_bytes()))
            .collect()
    } else {
        let chars: Vec<char> = tokens.join(" ").chars().collect();
        if chars.len() < 4 {
            return HashSet::from([fnv1a(chars.iter().collect::<String>().as_bytes())]);
        }
        chars
            .windows(4)
            .map(|w| fnv1a(w.iter().collect::<String>().as_bytes()))
            .collect()
    }
}

fn signature(shingles: &HashSet<u64>) -> [u64; HASHES] {
    let mut signature = [u64::MAX; HASHES];
    for &s in shingles {
        for (i, slot) in signature.iter_mut().enumerate() {
            let h = splitmix(s ^ splitmix(i as u64));
            if h < *slot {
                *slot = h;
            }
        }
    }
    signature
}

fn similarity(a: &[u64; HASHES], b: &[u64; HASHES]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / HASHES as f64
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Consolidates `entries` within `budget`.
pub(crate) fn consolidate(entries: Vec<Entry>, budget: Budget, policy: &Policy) -> Outcome {
    let n = entries.len();
    let signatures: Vec<[u64; HASHES]> = entries
        .iter()
        .map(|e| signature(&shingles(&e.text, policy.shingle_words)))
        .collect();

    // Candidate pairs from LSH bands, confirmed on the whole signature. Within a bucket each
    // member is compared with one member of each group already seen there, not with every
    // member: a bucket of identical entries costs its length, not its length squared.
    let mut parent: Vec<usize> = (0..n).collect();
    let rows = rows_for(policy.similarity_threshold);
    for band in 0..HASHES / rows {
        let mut buckets: HashMap<&[u64], Vec<usize>> = HashMap::new();
        for (i, sig) in signatures.iter().enumerate() {
            buckets.entry(&sig[band * rows..(band + 1) * rows]).or_default().push(i);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            let mut groups_seen: Vec<usize> = Vec::new();
            for &i in members {
                let mut joined = false;
                for &j in &groups_seen {
                    if find(&mut parent, i) == find(&mut parent, j) {
                        joined = true;
                        break;
                    }
                    if similarity(&signatures[i], &signatures[j]) >= policy.similarity_threshold {
                        let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                        parent[ri] = rj;
                        joined = true;
                        break;
                    }
                }
                if !joined {
                    groups_seen.push(i);
                }
            }
        }
    }

    // One representative per group: the most important, then the most recent, then the first.
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..n {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(i);
    }
    let mut merged = Vec::new();
    let mut survivors: Vec<(Entry, usize)> = Vec::new();
    let mut group_list: Vec<Vec<usize>> = groups.into_values().collect();
    group_list.sort_by_key(|g| g[0]);
    for members in group_list {
        let representative = *members
            .iter()
            .max_by(|&&a, &&b| {
                let (ea, eb) = (&entries[a], &entries[b]);
                ea.importance
                    .total_cmp(&eb.importance)
                    .then(ea.timestamp.cmp(&eb.timestamp))
                    .then(b.cmp(&a))
            })
            .unwrap_or(&members[0]);
        let mut kept = entries[representative].clone();
        for &m in members.iter().filter(|&&m| m != representative) {
            let e = &entries[m];
            kept.importance = kept.importance.max(e.importance);
            kept.timestamp = kept.timestamp.max(e.timestamp);
            kept.merged_count += e.merged_count;
            let similarity = similarity(&signatures[m], &signatures[representative]);
            merged.push(Merge {
                into: entries[representative].text.clone(),
                text: e.text.clone(),
                similarity,
            });
        }
        survivors.push((kept, representative));
    }

    // Rank by importance and recency, keep while within budget.
    let (oldest, newest) = survivors
        .iter()
        .filter_map(|(e, _)| e.timestamp)
        .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let recency = |e: &Entry| match e.timestamp {
        Some(t) if newest > oldest => (t - oldest) as f64 / (newest - oldest) as f64,
        _ => 1.0,
    };
    survivors.sort_by(|(a, ia), (b, ib)| {
        let sa = a.importance + policy.recency_weight * recency(a);
        let sb = b.importance + policy.recency_weight * recency(b);
        sb.total_cmp(&sa).then(ia.cmp(ib))
    });
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut used_tokens = 0;
    for (entry, index) in survivors {
        let cost = tokens(&entry.text);
        let reason = if kept.len() >= budget.entries {
            Some(format!(
                "over the budget of {} entries (lower importance or older)",
                budget.entries
            ))
        } else if budget.tokens.is_some_and(|t| used_tokens + cost > t) {
            Some(format!(
                "over the budget of {} tokens ({cost} more would make {})",
                budget.tokens.unwrap_or(0),
                used_tokens + cost
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => dropped.push(Dropped {
                text: entry.text,
                importance: entry.importance,
                reason,
            }),
            None => {
                used_tokens += cost;
                kept.push((entry, index));
            }
        }
    }
    kept.sort_by(|(a, ia), (b, ib)| a.timestamp.cmp(&b.timestamp).then(ia.cmp(ib)));
    Outcome {
        kept: kept.into_iter().map(|(e, _)| e).collect(),
        merged,
        dropped,
        tokens: used_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str, importance: f64, timestamp: u64) -> Entry {
        Entry {
            text: text.to_owned(),
            importance,
            timestamp: Some(timestamp),
            merged_count: 1,
        }
    }

    fn policy() -> Policy {
        Policy {
            similarity_threshold: 0.6,
            shingle_words: 2,
            recency_weight: 0.25,
        }
    }

    const ROOMY: Budget = Budget {
        entries: 100,
        tokens: None,
    };

    #[test]
    fn minhash_estimates_jaccard() {
        let a = shingles("the quick brown fox jumps over the lazy dog", 2);
        let b = shingles("the quick brown fox jumps over the lazy cat", 2);
        let exact = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
        let estimate = similarity(&signature(&a), &signature(&b));
        assert!((estimate - exact).abs() < 0.2, "estimate {estimate}, exact {exact}");
        let unrelated = shingles("deploy the release to production tonight", 2);
        assert!(similarity(&signature(&a), &signature(&unrelated)) < 0.2);
    }

    #[test]
    fn near_duplicates_merge_into_the_most_important() {
        let out = consolidate(
            vec![
                entry("The user prefers dark mode in the editor", 0.4, 1),
                entry("the user prefers dark mode in the editor!", 0.9, 2),
                entry("Deploys happen on Fridays after the review", 0.5, 3),
            ],
            ROOMY,
            &policy(),
        );
        assert_eq!(out.kept.len(), 2, "{out:?}");
        let kept = &out.kept[0];
        assert_eq!((kept.importance, kept.merged_count), (0.9, 2));
        assert_eq!(kept.text, "the user prefers dark mode in the editor!");
        assert_eq!(out.merged.len(), 1);
        assert!(out.merged[0].similarity >= 0.6);
        assert!(out.dropped.is_empty());
    }

    #[test]
    fn the_budget_keeps_important_and_recent_entries() {
        let entries: Vec<Entry> = (0..10)
            .map(|i| {
                entry(
                    &format!("fact number {i} about topic {}", i * 7919),
                    if i == 0 { 1.0 } else { 0.3 },
                    i,
                )
            })
            .collect();
        let out = consolidate(
            entries,
            Budget {
                entries: 3,
                tokens: None,
            },
            &policy(),
        );
        let texts: Vec<&str> = out.kept.iter().map(|e| e.text.as_str()).collect();
        // The important old one, then the two most recent; in time order.
        assert_eq!(
            texts,
            vec![
                "fact number 0 about topic 0",
                "fact number 8 about topic 63352",
                "fact number 9 about topic 71271"
            ]
        );
        assert_eq!(out.dropped.len(), 7);
        assert!(out.dropped.iter().all(|d| d.reason.contains("3 entries")));
    }

    #[test]
    fn the_token_budget_is_respected() {
        let entries: Vec<Entry> = (0..20)
            .map(|i| entry(&format!("{i} {}", "word ".repeat(10 + i)), 0.5, i as u64))
            .collect();
        let out = consolidate(
            entries,
            Budget {
                entries: 100,
                tokens: Some(100),
            },
            &policy(),
        );
        assert!(out.tokens <= 100);
        assert_eq!(out.tokens, out.kept.iter().map(|e| tokens(&e.text)).sum::<usize>());
        assert!(out.dropped.iter().any(|d| d.reason.contains("100 tokens")));
    }

    #[test]
    fn many_identical_entries_merge_in_linear_work() {
        // Quadratic pair checks would take minutes here (and gigabytes); grouping per bucket
        // takes milliseconds.
        let entries: Vec<Entry> = (0..5_000).map(|i| entry("the same note again", 0.5, i)).collect();
        let out = consolidate(entries, ROOMY, &policy());
        assert_eq!((out.kept.len(), out.merged.len()), (1, 4_999));
        assert_eq!(out.kept[0].merged_count, 5_000);
    }

    #[test]
    fn lower_thresholds_still_find_their_pairs() {
        let low = Policy {
            similarity_threshold: 0.45,
            ..policy()
        };
        // Jaccard 7/12 = 0.58 on 2-word shingles: with 16 bands of 4 rows such a pair would be a
        // candidate only 70% of the time; with the 32 bands of 2 rows this threshold gets, always.
        let a = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
        let b = "alpha beta gamma delta epsilon zeta eta theta lambda mu nu";
        let out = consolidate(vec![entry(a, 0.5, 1), entry(b, 0.5, 2)], ROOMY, &low);
        assert_eq!(out.kept.len(), 1, "{out:?}");
    }

    #[test]
    fn short_and_empty_texts_do_not_panic() {
        let out = consolidate(
            vec![
                entry("", 0.5, 1),
                entry("a", 0.5, 2),
                entry("a", 0.5, 3),
                entry("ok", 0.1, 4),
            ],
            ROOMY,
            &policy(),
        );
        assert_eq!(out.kept.len() + out.merged.len(), 4);
    }
}
