//! Where new assets go: the pure decision behind the manager's subscriptions. All tokens of a
//! market on one connection (each `price_change`, sent for both tokens of a market in one
//! message, then arrives once), at most `max` assets per connection, new connections only
//! when no open one has room.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

/// Where the new assets of one refresh go (`A`: the asset id's type).
#[derive(Debug, PartialEq, Eq)]
pub struct Placement<A> {
    /// Assets added to running shards, by shard index (sent as an `operation: subscribe`).
    pub existing: BTreeMap<usize, Vec<A>>,
    /// New shards to open, by the index each will have (after the existing ones, in order).
    pub fresh: Vec<(usize, BTreeSet<A>)>,
}

impl<A> Default for Placement<A> {
    fn default() -> Self {
        Placement { existing: BTreeMap::new(), fresh: Vec::new() }
    }
}

/// Places the assets of `groups` (each the tokens of one market) that no shard owns yet.
/// `sizes`: the assets each running shard carries; `owner`: the shard owning an asset, if
/// any. A market goes to the shard already carrying one of its tokens if it has room, else to
/// the first shard with room for all of its new tokens, else to a new shard; a market with
/// more tokens than `max` is split.
pub fn place<A: Clone + Ord + Hash + Borrow<str>>(
    sizes: &[usize],
    owner: impl Fn(&str) -> Option<usize>,
    groups: Vec<Vec<A>>,
    max: usize,
) -> Placement<A> {
    let max = max.max(1);
    let mut sizes = sizes.to_vec();
    let first_new = sizes.len();
    let mut placed: HashMap<A, usize> = HashMap::new();
    let mut out = Placement::default();
    // A shard before this index had no room the last time one was looked for: shards only
    // fill during one placement, so the search for room starts here.
    let mut full_before = 0;
    for group in groups {
        let owned = |a: &str, placed: &HashMap<A, usize>| owner(a).or_else(|| placed.get(a).copied());
        let sibling = group.iter().find_map(|a| owned(a.borrow(), &placed));
        let mut new: Vec<A> = group.into_iter().filter(|a| owned(a.borrow(), &placed).is_none()).collect();
        new.dedup();
        for chunk in new.chunks(max) {
            let mut chunk: Vec<A> = chunk.iter().filter(|a| !placed.contains_key(Borrow::<str>::borrow(*a))).cloned().collect();
            chunk.sort_unstable();
            chunk.dedup();
            if chunk.is_empty() {
                continue;
            }
            let fits = |i: usize, sizes: &[usize]| sizes[i] + chunk.len() <= max;
            let idx = match sibling.filter(|i| fits(*i, &sizes)) {
                Some(i) => i,
                None => {
                    while full_before < sizes.len() && sizes[full_before] >= max {
                        full_before += 1;
                    }
                    match (full_before..sizes.len()).find(|i| fits(*i, &sizes)) {
                        Some(i) => i,
                        None => {
                            sizes.push(0);
                            out.fresh.push((sizes.len() - 1, BTreeSet::new()));
                            sizes.len() - 1
                        }
                    }
                }
            };
            sizes[idx] += chunk.len();
            for a in chunk {
                placed.insert(a.clone(), idx);
                if idx >= first_new {
                    out.fresh.iter_mut().find(|(i, _)| *i == idx).expect("a fresh shard").1.insert(a);
                } else {
                    out.existing.entry(idx).or_default().push(a);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(m: usize, tokens: usize) -> Vec<String> {
        (0..tokens).map(|t| format!("m{m}t{t}")).collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn markets_stay_whole_and_connections_fill_up_to_the_cap() {
        let groups: Vec<Vec<String>> = (0..5).map(|m| market(m, 2)).collect();
        let p = place(&[], |_| None, groups, 4);
        assert!(p.existing.is_empty());
        let sets: Vec<BTreeSet<String>> = p.fresh.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(p.fresh.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(sets[0], set(&["m0t0", "m0t1", "m1t0", "m1t1"]));
        assert_eq!(sets[1], set(&["m2t0", "m2t1", "m3t0", "m3t1"]));
        assert_eq!(sets[2], set(&["m4t0", "m4t1"]));
    }

    #[test]
    fn a_new_token_joins_its_markets_shard_and_room_is_found_in_running_ones() {
        // Shard 0 carries m0t0 (3 of 4 slots used), shard 1 has room for 2.
        let owner = |a: &str| (a == "m0t0").then_some(0);
        let p = place(&[3, 2], owner, vec![vec!["m0t0".into(), "m0t1".into()], market(7, 2), market(8, 2)], 4);
        assert_eq!(p.existing.get(&0), Some(&vec!["m0t1".to_string()]), "beside its sibling");
        assert_eq!(p.existing.get(&1), Some(&vec!["m7t0".to_string(), "m7t1".to_string()]), "room in a running shard");
        assert_eq!(p.fresh, vec![(2, set(&["m8t0", "m8t1"]))], "no room left: a new shard");
    }

    #[test]
    fn a_full_siblings_shard_sends_the_market_elsewhere_and_big_markets_are_split() {
        let owner = |a: &str| (a == "m0t0").then_some(0);
        let p = place(&[4], owner, vec![vec!["m0t0".into(), "m0t1".into()], market(1, 5)], 4);
        assert_eq!(p.existing.len(), 0);
        assert_eq!(p.fresh.len(), 2);
        assert_eq!(p.fresh[0], (1, set(&["m0t1", "m1t4"])), "the full shard's market goes elsewhere; a split market's rest fills in");
        assert_eq!(p.fresh[1], (2, set(&["m1t0", "m1t1", "m1t2", "m1t3"])));
    }

    #[test]
    fn owned_and_repeated_assets_are_placed_once() {
        let owner = |a: &str| (a == "m0t0" || a == "m0t1").then_some(0);
        let p = place(&[2], owner, vec![market(0, 2), market(1, 2), market(1, 2), vec!["m1t0".into(), "m1t0".into()]], 200);
        assert_eq!(p.existing.get(&0), Some(&vec!["m1t0".to_string(), "m1t1".to_string()]));
        assert!(p.fresh.is_empty());
    }
}
