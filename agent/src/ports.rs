//! Host ports, pure: a task asks for `ports` (0 = any free one, else that
//! port) from the node's range (`port_range`, inclusive); no two live
//! tasks on a node hold one port. Ports are held while the task is not
//! final, so they are released when it ends; [`ALLOCATION`] serialises the
//! allocations of concurrent submissions.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Held from reading the ports in use until the new tasks are inserted.
pub static ALLOCATION: Mutex<()> = Mutex::new(());

/// The ports for one request, or why there are none. Fixed ports first
/// (in range, free, distinct), then the lowest free ports for the zeros.
pub fn allocate(range: [u16; 2], in_use: &BTreeSet<u16>, want: &[u16]) -> Result<Vec<u16>, String> {
    let [lo, hi] = range;
    let mut taken = in_use.clone();
    let mut out = vec![0u16; want.len()];
    for (i, &p) in want.iter().enumerate() {
        if p == 0 {
            continue;
        }
        if p < lo || p > hi {
            return Err(format!("port {p} is outside this node's range {lo}-{hi}"));
        }
        if !taken.insert(p) {
            return Err(format!("port {p} is already in use on this node"));
        }
        out[i] = p;
    }
    let mut next = lo;
    for (i, &p) in want.iter().enumerate() {
        if p != 0 {
            continue;
        }
        let exhausted = || {
            format!(
                "no free port left in this node's range {lo}-{hi} ({} wanted)",
                want.len()
            )
        };
        loop {
            if next < lo || next > hi {
                return Err(exhausted());
            }
            if taken.insert(next) {
                break;
            }
            // Wraps to 0 past 65535, which the range check above refuses.
            next = next.wrapping_add(1);
        }
        out[i] = next;
    }
    Ok(out)
}

/// The environment Marathon gives a task with ports.
pub fn env(ports: &[u16], host: &str) -> Vec<String> {
    if ports.is_empty() {
        return Vec::new();
    }
    let mut env: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("PORT{i}={p}"))
        .collect();
    env.push(format!("PORT={}", ports[0]));
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    env.push(format!("PORTS={}", list.join(",")));
    env.push(format!("HOST={host}"));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_then_lowest_free() {
        let used = BTreeSet::from([31000, 31002]);
        assert_eq!(
            allocate([31000, 31010], &used, &[0, 31001, 0]).unwrap(),
            vec![31003, 31001, 31004]
        );
        assert!(allocate([31000, 31010], &used, &[31002])
            .unwrap_err()
            .contains("in use"));
        assert!(allocate([31000, 31010], &used, &[80])
            .unwrap_err()
            .contains("outside"));
        assert!(allocate([31000, 31001], &used, &[0, 0])
            .unwrap_err()
            .contains("no free port"));
        assert_eq!(
            allocate([65535, 65535], &BTreeSet::new(), &[0]).unwrap(),
            vec![65535]
        );
        assert!(allocate([65535, 65535], &BTreeSet::from([65535]), &[0]).is_err());
        assert!(allocate([31000, 31010], &used, &[31005, 31005]).is_err());
        assert_eq!(
            env(&[31003, 31004], "n1"),
            [
                "PORT0=31003",
                "PORT1=31004",
                "PORT=31003",
                "PORTS=31003,31004",
                "HOST=n1"
            ]
        );
        assert!(env(&[], "n1").is_empty());
    }

    proptest! {
        #[test]
        fn never_a_port_twice_and_always_in_range(
            lo in 1000u16..1100, len in 0u16..40,
            used in prop::collection::btree_set(1000u16..1200, 0..30),
            want in prop::collection::vec(prop_oneof![Just(0u16), 1000u16..1200], 0..10),
        ) {
            let hi = lo + len;
            match allocate([lo, hi], &used, &want) {
                Ok(got) => {
                    prop_assert_eq!(got.len(), want.len());
                    let set: BTreeSet<u16> = got.iter().copied().collect();
                    prop_assert_eq!(set.len(), got.len());
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert!(*g >= lo && *g <= hi);
                        prop_assert!(!used.contains(g));
                        if *w != 0 { prop_assert_eq!(g, w); }
                    }
                }
                Err(_) => {
                    // Refused only when it could not be done.
                    let free = (lo..=hi).filter(|p| !used.contains(p)).count();
                    let fixed_bad = want.iter().any(|&w| w != 0 && (w < lo || w > hi || used.contains(&w)))
                        || { let f: Vec<_> = want.iter().filter(|&&w| w != 0).collect();
                             let s: BTreeSet<_> = f.iter().collect(); s.len() != f.len() };
                    prop_assert!(fixed_bad || free < want.len());
                }
            }
        }
    }
}
