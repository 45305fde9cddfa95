//! The requests an upstream connection waits on, by the id it gave each.
//!
//! The connection chooses the ids, counting up, so a table indexed by an id's low bits holds
//! them without hashing or probing: an insert, a lookup and a removal each touch one slot. An
//! id whose slot is taken (by a request still waiting from a lap of the table ago) is skipped
//! when ids are given out ([`ById::free_id`]). The table doubles when three quarters full, so a
//! free slot is always near. Its slots number at most about 2.7 times the peak of requests in
//! flight (a peak just past three quarters of a size doubles it), at least 16, and it gives its
//! memory back as the load falls ([`ById::release_unused`]): all of it once empty, most of it
//! once it holds under an eighth of its slots.

/// Values keyed by request id, each in the slot of the id's low bits.
pub(super) struct ById<T> {
    /// A power of two long, or empty until the first insert.
    slots: Vec<Option<(u64, T)>>,
    len: usize,
}

/// The slots of a table's first allocation.
const FIRST_SLOTS: usize = 16;

impl<T> Default for ById<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ById<T> {
    /// The values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of `id`; the table has slots.
    fn slot(&self, id: u64) -> usize {
        // The low bits: truncation is the point.
        id as usize & (self.slots.len() - 1)
    }

    /// The first id after `after`, counting up from 1 and wrapping after `max_id`, that
    /// [`ById::insert`] can take without displacing a value: `None` when `max_id` values are
    /// held. Grows the table first if it is three quarters full.
    pub fn free_id(&mut self, after: u64, max_id: u64) -> Option<u64> {
        if u64::try_from(self.len).unwrap_or(u64::MAX) >= max_id {
            return None;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        // Fewer values than slots and than ids: within one lap of either, an id's slot is free.
        let mut id = after;
        loop {
            id = id % max_id + 1;
            if self.slots[self.slot(id)].is_none() {
                return Some(id);
            }
        }
    }

    /// Doubles the slots (or makes the first ones). Ids in different slots of the smaller
    /// table are in different slots of the larger.
    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(FIRST_SLOTS));
    }

    /// Moves every value to a table of `size` slots (a power of two), in which their ids'
    /// slots differ.
    fn resize(&mut self, size: usize) {
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| None).take(size).collect(),
        );
        for (id, value) in old.into_iter().flatten() {
            let slot = self.slot(id);
            self.slots[slot] = Some((id, value));
        }
    }

    /// True if the ids held fall in different slots of a table of `size` slots.
    fn fits(&self, size: usize) -> bool {
        let mut taken = vec![false; size];
        self.slots
            .iter()
            .flatten()
            .all(|(id, _)| !std::mem::replace(&mut taken[*id as usize & (size - 1)], true))
    }

    /// Keeps `value` under `id`, which [`ById::free_id`] gave.
    pub fn insert(&mut self, id: u64, value: T) {
        let slot = self.slot(id);
        debug_assert!(self.slots[slot].is_none(), "id {id} was not free");
        if self.slots[slot].replace((id, value)).is_none() {
            self.len += 1;
        }
    }

    /// Takes the value under `id`, if one is held.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slot(id);
        match &self.slots[slot] {
            Some((held, _)) if *held == id => {
                self.len -= 1;
                self.slots[slot].take().map(|(_, value)| value)
            }
            _ => None,
        }
    }

    /// Keeps only the values for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        for slot in &mut self.slots {
            if let Some((_, value)) = slot
                && !keep(value)
            {
                *slot = None;
                self.len -= 1;
            }
        }
    }

    /// Gives back the memory a burst of requests in flight left: all of it once the table is
    /// empty, and, while it holds under an eighth of its slots, all but the smallest table (at
    /// least four slots a value) in which every id held keeps a slot of its own. A connection
    /// whose load falls but never to nothing keeps no table sized for its peak.
    pub fn release_unused(&mut self) {
        if self.len == 0 {
            self.slots = Vec::new();
            return;
        }
        if self.len * 8 >= self.slots.len() {
            return;
        }
        let mut size = (self.len * 4).next_power_of_two().max(FIRST_SLOTS);
        // Ids far apart may share low bits: a smaller table is taken only if they do not.
        while size < self.slots.len() {
            if self.fits(size) {
                self.resize(size);
                return;
            }
            size *= 2;
        }
    }

    /// Takes every value, and the table's memory with them.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + use<T> {
        self.len = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Gives out an id after `after` and keeps `value` under it.
    fn add(table: &mut ById<u32>, after: u64, max_id: u64, value: u32) -> Option<u64> {
        let id = table.free_id(after, max_id)?;
        table.insert(id, value);
        Some(id)
    }

    /// A table holding `count` values, 0 up, under the ids given out after `after`; and the
    /// last of those ids.
    fn filled(after: u64, max_id: u64, count: u32) -> (ById<u32>, u64) {
        let mut table = ById::default();
        let mut last = after;
        for value in 0..count {
            last = add(&mut table, last, max_id, value).unwrap_or_default();
        }
        (table, last)
    }

    #[test]
    fn ids_count_up_and_skip_those_whose_slot_is_taken() {
        let mut table = ById::default();
        let ids: Vec<_> = (0..4)
            .map(|n| add(&mut table, n, u64::MAX, n as u32))
            .collect();
        assert_eq!(ids, [Some(1), Some(2), Some(3), Some(4)]);
        // A lap of the table later, id 1's slot is still taken: 17 is skipped.
        for id in [2, 3, 4] {
            assert_eq!(table.remove(id), Some(id as u32 - 1));
        }
        assert_eq!(table.free_id(16, u64::MAX), Some(18));
        assert_eq!(table.remove(17), None, "a stray id in a taken slot");
        assert_eq!(table.remove(1), Some(0));
        assert_eq!(table.free_id(16, u64::MAX), Some(17));
        assert!(table.is_empty());
    }

    #[test]
    fn a_small_id_space_wraps_and_runs_out() {
        let (mut table, last) = filled(0, 3, 3);
        assert_eq!((last, table.len()), (3, 3));
        assert_eq!(table.free_id(last, 3), None, "every id is waiting");
        assert_eq!(table.remove(2), Some(1));
        assert_eq!(table.free_id(last, 3), Some(2), "wrapped past 3 and 1");
    }

    #[test]
    fn growing_keeps_every_value_where_its_id_finds_it() {
        let (mut table, last) = filled(1000, u64::MAX, 200);
        assert_eq!((last, table.len()), (1200, 200));
        assert!(table.slots.len() <= 512, "{} slots", table.slots.len());
        for (value, id) in (1001..=1200).enumerate() {
            assert_eq!(table.remove(id), u32::try_from(value).ok());
        }
        assert!(table.is_empty());
    }

    #[test]
    fn retain_and_drain_take_what_they_say() {
        let (mut table, _) = filled(0, u64::MAX, 10);
        table.retain(|value| *value % 2 == 0);
        assert_eq!(table.len(), 5);
        table.release_unused();
        assert_eq!(
            table.slots.len(),
            16,
            "a table holding values keeps its first slots"
        );
        let mut drained: Vec<_> = table.drain().collect();
        drained.sort_unstable();
        assert_eq!(drained, [0, 2, 4, 6, 8]);
        assert!(table.is_empty() && table.slots.is_empty());
        assert_eq!(
            add(&mut table, 0, u64::MAX, 1),
            Some(1),
            "drained, it takes more"
        );
        table.retain(|_| false);
        table.release_unused();
        assert!(table.slots.is_empty());
    }

    #[test]
    fn a_table_whose_load_fell_gives_back_what_its_ids_do_not_need() {
        let (mut table, last) = filled(0, u64::MAX, 10_000);
        assert_eq!(table.slots.len(), 16_384);
        // Ten requests still waiting, far apart: ids 1 to 10.
        table.retain(|value| *value < 10);
        table.release_unused();
        assert_eq!(
            table.slots.len(),
            64,
            "four slots a value, as a power of two"
        );
        for id in 1..=10 {
            assert_eq!(table.remove(id), u32::try_from(id - 1).ok());
        }
        // Ids that share their low bits with each other in every smaller table: 64 apart, then
        // 4,096 apart. The table stays as large as keeps them apart.
        let (mut table, _) = filled(last, u64::MAX, 10_000);
        let waiting = [last + 1, last + 65, last + 4_097];
        table.retain(|value| [0, 64, 4_096].contains(value));
        table.release_unused();
        assert_eq!(table.slots.len(), 8_192);
        for (id, value) in waiting.into_iter().zip([0, 64, 4_096]) {
            assert_eq!(table.remove(id), Some(value));
        }
        // A table holding an eighth of its slots or more keeps them.
        let (mut table, _) = filled(0, u64::MAX, 2_048);
        table.retain(|value| *value < 1_024);
        table.release_unused();
        assert_eq!(table.slots.len(), 4_096);
    }

    /// What a connection does to its table.
    #[derive(Clone, Debug)]
    enum Op {
        /// A request written.
        Add,
        /// An answer to the `n`th request waiting (modulo), or to an id never given out.
        Answer(usize),
        Stray(u64),
        /// A sweep that forgets the requests whose value is odd.
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Add),
            4 => any::<usize>().prop_map(Op::Answer),
            1 => any::<u64>().prop_map(Op::Stray),
            1 => Just(Op::Sweep),
        ]
    }

    proptest! {
        /// Whatever the order of requests, answers and sweeps, the table holds what a map
        /// would, and never gives out an id that is waiting.
        #[test]
        fn the_table_agrees_with_a_map(
            ops in prop::collection::vec(op(), 0..400),
            max_id in prop_oneof![Just(u64::MAX), 1..40u64],
        ) {
            let mut table = ById::default();
            let mut map = HashMap::new();
            let (mut last, mut next_value) = (0, 0u32);
            for op in ops {
                match op {
                    Op::Add => {
                        let id = table.free_id(last, max_id);
                        prop_assert_eq!(id.is_none(), map.len() as u64 >= max_id);
                        if let Some(id) = id {
                            prop_assert!(!map.contains_key(&id) && (1..=max_id).contains(&id));
                            table.insert(id, next_value);
                            map.insert(id, next_value);
                            (last, next_value) = (id, next_value + 1);
                        }
                    }
                    Op::Answer(n) => {
                        let mut ids: Vec<u64> = map.keys().copied().collect();
                        ids.sort_unstable();
                        if let Some(&id) = ids.get(n % ids.len().max(1)) {
                            prop_assert_eq!(table.remove(id), map.remove(&id));
                        }
                    }
                    Op::Stray(id) => prop_assert_eq!(table.remove(id), map.remove(&id)),
                    Op::Sweep => {
                        table.retain(|value| *value % 2 == 0);
                        table.release_unused();
                        map.retain(|_, value| *value % 2 == 0);
                    }
                }
                prop_assert_eq!(table.len(), map.len());
            }
            let mut drained: Vec<u32> = table.drain().collect();
            let mut held: Vec<u32> = map.into_values().collect();
            drained.sort_unstable();
            held.sort_unstable();
            prop_assert_eq!(drained, held);
        }
    }
}
