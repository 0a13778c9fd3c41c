//! Which Kafka offsets may be committed. Many bills of one partition are in flight at once
//! and finish in any order, so the offset stored for commit is the lowest unfinished offset of
//! the partition (or one past the highest seen when nothing is unfinished): a crash never
//! skips a bill that was not finished.
//!
//! Trackers are dropped when a partition is revoked; work of an older assignment carries an
//! older generation and is ignored, so it can never move the offset of a new assignment.

use std::collections::{BTreeSet, HashMap};

/// The in-flight offsets of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: Option<i64>,
}

impl PartitionOffsets {
    /// A record was received and is now in flight.
    pub fn begin(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record's outcome is durable.
    pub fn finish(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// The offset to commit (the next one to read after a restart), if any record was seen.
    pub fn commit_point(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Identifies the assignment a record was received under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

#[derive(Debug)]
struct Tracked {
    generation: Generation,
    offsets: PartitionOffsets,
    stored: Option<i64>,
}

/// The trackers of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Tracked>,
    next_generation: u64,
}

impl OffsetTracker {
    /// Records that `offset` is in flight; returns the generation to hand back to [`Self::finish`].
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Generation {
        let key = (topic.to_owned(), partition);
        if !self.partitions.contains_key(&key) {
            self.next_generation += 1;
            let generation = Generation(self.next_generation);
            self.partitions.insert(
                key.clone(),
                Tracked {
                    generation,
                    offsets: PartitionOffsets::default(),
                    stored: None,
                },
            );
        }
        let t = self.partitions.get_mut(&key).expect("inserted above");
        t.offsets.begin(offset);
        t.generation
    }

    /// Marks `offset` done. Returns a new commit point to store when it advanced.
    pub fn finish(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        generation: Generation,
    ) -> Option<i64> {
        let t = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if t.generation != generation {
            return None;
        }
        t.offsets.finish(offset);
        let point = t.offsets.commit_point()?;
        if t.stored.is_some_and(|s| s >= point) {
            return None;
        }
        t.stored = Some(point);
        Some(point)
    }

    /// The partition was revoked: forget it; late completions of its records are ignored.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    /// Current commit points of every partition (for the final commit at shutdown).
    pub fn commit_points(&self) -> Vec<(String, i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|((t, p), tr)| tr.offsets.commit_point().map(|o| (t.clone(), *p, o)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_commit_point_waits_for_the_lowest_unfinished_offset() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.commit_point(), None);
        for o in 10..15 {
            p.begin(o);
        }
        p.finish(11);
        p.finish(12);
        assert_eq!(p.commit_point(), Some(10));
        p.finish(10);
        assert_eq!(p.commit_point(), Some(13));
        p.finish(14);
        p.finish(13);
        assert_eq!(p.commit_point(), Some(15));
    }

    #[test]
    fn completions_of_a_revoked_assignment_are_ignored() {
        let mut t = OffsetTracker::default();
        let old = t.begin("bills.email", 0, 5);
        t.revoke("bills.email", 0);
        let new = t.begin("bills.email", 0, 3);
        assert_eq!(t.finish("bills.email", 0, 5, old), None);
        assert_eq!(t.finish("bills.email", 0, 3, new), Some(4));
    }

    #[test]
    fn a_commit_point_is_reported_only_when_it_advances() {
        let mut t = OffsetTracker::default();
        let g = t.begin("t", 1, 0);
        t.begin("t", 1, 1);
        assert_eq!(t.finish("t", 1, 1, g), Some(0));
        assert_eq!(t.finish("t", 1, 0, g), Some(2));
        t.begin("t", 1, 2);
        assert_eq!(t.commit_points(), vec![("t".to_owned(), 1, 2)]);
    }

    proptest! {
        #[test]
        fn the_commit_point_never_passes_an_unfinished_offset(
            (n, order) in (1usize..200).prop_flat_map(|n| (Just(n), Just((0..n).collect::<Vec<_>>()).prop_shuffle()))
        ) {
            let mut p = PartitionOffsets::default();
            for o in 0..n as i64 {
                p.begin(o);
            }
            let mut done = vec![false; n];
            let mut last = 0;
            for i in order {
                p.finish(i as i64);
                done[i] = true;
                let point = p.commit_point().unwrap();
                // everything before the point is finished, the point itself is not (or is the end)
                prop_assert!(done[..point as usize].iter().all(|d| *d));
                prop_assert!(point as usize == n || !done[point as usize]);
                prop_assert!(point >= last, "the commit point never moves backwards");
                last = point;
            }
            prop_assert_eq!(p.commit_point(), Some(n as i64));
        }
    }
}
