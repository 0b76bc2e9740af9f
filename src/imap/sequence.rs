//! Sequence sets against a session's view (pure). Message sequence numbers belong to the session
//! (RFC 3501 §2.3.1.2): they are positions in the session's own UID list, which changes only
//! when the session is told about EXISTS and EXPUNGE.

use imap_next::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

/// The messages a set names, as (sequence number, UID) pairs in ascending order.
/// `uids` is the session's view, ascending.
pub fn resolve(set: &SequenceSet, uids: &[u32], by_uid: bool) -> Vec<(u32, u32)> {
    if uids.is_empty() {
        return Vec::new();
    }
    let mut picked = vec![false; uids.len()];
    for sequence in set.0.as_ref() {
        let (a, b) = match sequence {
            Sequence::Single(x) => (x, x),
            Sequence::Range(a, b) => (a, b),
        };
        if by_uid {
            // "*" is the highest UID in the mailbox; "559:*" always includes the last message
            // (RFC 3501 §6.4.8).
            let largest = *uids.last().unwrap_or(&0);
            let (lo, hi) = ordered(value(a, largest), value(b, largest));
            let start = uids.partition_point(|&u| u < lo);
            let end = uids.partition_point(|&u| u <= hi);
            picked[start..end].iter_mut().for_each(|p| *p = true);
        } else {
            let count = uids.len() as u32;
            let (lo, hi) = ordered(value(a, count), value(b, count));
            // Numbers past the end name nothing (the caller answers BAD when required).
            let hi = hi.min(count);
            if lo >= 1 && lo <= hi {
                picked[(lo - 1) as usize..hi as usize]
                    .iter_mut()
                    .for_each(|p| *p = true);
            }
        }
    }
    picked
        .iter()
        .enumerate()
        .filter(|(_, &p)| p)
        .map(|(i, _)| (i as u32 + 1, uids[i]))
        .collect()
}

/// Whether a message-sequence set names a number beyond the mailbox (RFC 9051 §6.4: a BAD).
pub fn out_of_range(set: &SequenceSet, count: u32) -> bool {
    set.0.as_ref().iter().any(|sequence| match sequence {
        Sequence::Single(SeqOrUid::Value(v)) => v.get() > count,
        Sequence::Range(a, b) => {
            matches!(a, SeqOrUid::Value(v) if v.get() > count)
                && matches!(b, SeqOrUid::Value(v) if v.get() > count)
        }
        Sequence::Single(SeqOrUid::Asterisk) => count == 0,
    })
}

fn value(x: &SeqOrUid, largest: u32) -> u32 {
    match x {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    }
}

fn ordered(a: u32, b: u32) -> (u32, u32) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Whether a UID is in a UID set given the mailbox's largest UID (for SEARCH UID and
/// QRESYNC known-UIDs).
pub fn contains_uid(set: &SequenceSet, uid: u32, largest: u32) -> bool {
    set.0.as_ref().iter().any(|sequence| {
        let (a, b) = match sequence {
            Sequence::Single(x) => (x, x),
            Sequence::Range(a, b) => (a, b),
        };
        let (lo, hi) = ordered(value(a, largest), value(b, largest));
        (lo..=hi).contains(&uid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> SequenceSet {
        SequenceSet::try_from(text).unwrap()
    }

    #[test]
    fn sequence_numbers_and_uids() {
        let uids = [3, 5, 9, 12];
        assert_eq!(resolve(&set("2:3"), &uids, false), [(2, 5), (3, 9)]);
        assert_eq!(resolve(&set("*"), &uids, false), [(4, 12)]);
        assert_eq!(resolve(&set("3:*"), &uids, false), [(3, 9), (4, 12)]);
        assert_eq!(
            resolve(&set("4:2"), &uids, false),
            [(2, 5), (3, 9), (4, 12)]
        );
        assert_eq!(resolve(&set("5:9"), &uids, true), [(2, 5), (3, 9)]);
        assert_eq!(resolve(&set("100:*"), &uids, true), [(4, 12)]);
        assert_eq!(resolve(&set("1,12"), &uids, true), [(4, 12)]);
        assert_eq!(resolve(&set("1:*"), &[], true), []);
        assert!(out_of_range(&set("7"), 4));
        assert!(!out_of_range(&set("1:*"), 4));
        assert!(contains_uid(&set("5:*"), 12, 12));
    }
}
