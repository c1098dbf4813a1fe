//! Deliveries of one inbox in seq order (sans-IO).
//!
//! Sends to one user commit in seq order, but the tasks that deliver them wake in any
//! order: without this, a device could get seq 6 before seq 5. Every send registers with
//! each inbox it writes before it is stored ([`InboxOrder::begin`]) and reports the seq it
//! got, or that it got none, after ([`InboxOrder::finish`]). A delivery is released once
//! the one before it was, or once no send to the inbox is in flight any more (so a seq
//! written by another process is never waited for). The first send to an inbox this process
//! tracks learns where the inbox stands from the store ([`InboxOrder::floor`]).

use std::collections::{BTreeMap, HashMap};

/// Inboxes remembered at most; beyond, those with nothing in flight are forgotten (they
/// read their floor again on their next send).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Inbox<T> {
    in_flight: u32,
    /// The newest seq released (or known to be before anything in flight).
    last: Option<u64>,
    pending: BTreeMap<u64, T>,
}

/// Per inbox, the sends in flight and the deliveries held back.
#[derive(Debug)]
pub(crate) struct InboxOrder<T> {
    inboxes: HashMap<String, Inbox<T>>,
}

impl<T> Default for InboxOrder<T> {
    fn default() -> Self {
        InboxOrder {
            inboxes: HashMap::new(),
        }
    }
}

impl<T> InboxOrder<T> {
    /// A send to `user`'s inbox is about to be stored. True when the inbox is new here:
    /// the caller then reads its newest seq and reports it with [`Self::floor`].
    pub(crate) fn begin(&mut self, user: &str) -> bool {
        if self.inboxes.len() >= MAX_TRACKED && !self.inboxes.contains_key(user) {
            self.inboxes
                .retain(|_, i| i.in_flight > 0 || !i.pending.is_empty());
        }
        let mut fresh = false;
        let inbox = self.inboxes.entry(user.to_owned()).or_insert_with(|| {
            fresh = true;
            Inbox {
                in_flight: 0,
                last: None,
                pending: BTreeMap::new(),
            }
        });
        inbox.in_flight += 1;
        fresh
    }

    /// `user`'s inbox held `head` before the send that asked was stored: what is at or
    /// below it is released, and what follows it contiguously.
    pub(crate) fn floor(&mut self, user: &str, head: u64) -> Vec<T> {
        let Some(inbox) = self.inboxes.get_mut(user) else {
            return Vec::new();
        };
        inbox.last = Some(inbox.last.map_or(head, |l| l.max(head)));
        let mut due = Vec::new();
        while let Some(entry) = inbox.pending.first_entry() {
            if *entry.key() <= head {
                due.push(entry.remove());
            } else {
                break;
            }
        }
        due.extend(Self::contiguous(inbox));
        due
    }

    /// A send to `user`'s inbox ended: stored at `seq` with `delivery`, or (`None`) not
    /// stored or a duplicate. Returns the deliveries now due, in seq order.
    pub(crate) fn finish(&mut self, user: &str, done: Option<(u64, T)>) -> Vec<T> {
        let Some(inbox) = self.inboxes.get_mut(user) else {
            return done.map(|(_, t)| vec![t]).unwrap_or_default();
        };
        inbox.in_flight = inbox.in_flight.saturating_sub(1);
        let mut due = Vec::new();
        if let Some((seq, t)) = done {
            if inbox.last.is_some_and(|last| seq <= last) {
                due.push(t); // late (only around a floor read): never held
            } else {
                inbox.pending.insert(seq, t);
            }
        }
        if inbox.in_flight == 0 {
            // Every send is known: whatever waits goes, in order.
            if let Some((&seq, _)) = inbox.pending.last_key_value() {
                inbox.last = Some(inbox.last.map_or(seq, |l| l.max(seq)));
            }
            due.extend(std::mem::take(&mut inbox.pending).into_values());
            return due;
        }
        due.extend(Self::contiguous(inbox));
        due
    }

    fn contiguous(inbox: &mut Inbox<T>) -> Vec<T> {
        let mut due = Vec::new();
        while let (Some(last), Some(entry)) = (inbox.last, inbox.pending.first_entry()) {
            if *entry.key() != last + 1 {
                break;
            }
            inbox.last = Some(last + 1);
            due.push(entry.remove());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_seq_waits_for_the_earlier_one() {
        let mut o = InboxOrder::default();
        assert!(o.begin("bob"));
        assert!(!o.begin("bob"));
        assert!(o.floor("bob", 4).is_empty());
        assert!(
            o.finish("bob", Some((6, "six"))).is_empty(),
            "5 is still in flight"
        );
        assert_eq!(o.finish("bob", Some((5, "five"))), ["five", "six"]);
    }

    #[test]
    fn contiguous_seqs_go_at_once_and_the_position_is_remembered() {
        let mut o = InboxOrder::default();
        o.begin("bob");
        o.begin("bob");
        o.floor("bob", 4);
        assert_eq!(o.finish("bob", Some((5, "five"))), ["five"]);
        assert!(!o.begin("bob"), "known: no floor read");
        assert_eq!(o.finish("bob", Some((6, "six"))), ["six"]);
        assert_eq!(o.finish("bob", Some((7, "seven"))), ["seven"]);
    }

    #[test]
    fn without_a_floor_nothing_goes_until_all_are_known() {
        let mut o = InboxOrder::default();
        o.begin("bob");
        o.begin("bob");
        assert!(o.finish("bob", Some((2, "two"))).is_empty());
        assert_eq!(o.finish("bob", Some((1, "one"))), ["one", "two"]);
    }

    #[test]
    fn a_failed_send_releases_what_waited() {
        let mut o = InboxOrder::default();
        o.begin("bob");
        o.begin("bob");
        o.floor("bob", 0);
        assert!(
            o.finish("bob", Some((9, "nine"))).is_empty(),
            "1..8 elsewhere"
        );
        assert_eq!(o.finish("bob", None), ["nine"]);
        assert_eq!(
            o.finish("carol", Some((1, "one"))),
            ["one"],
            "untracked: at once"
        );
    }

    #[test]
    fn a_floor_read_after_a_commit_releases_it() {
        let mut o = InboxOrder::default();
        o.begin("bob");
        o.begin("bob");
        assert!(o.finish("bob", Some((5, "five"))).is_empty());
        assert_eq!(o.floor("bob", 5), ["five"]);
    }
}
