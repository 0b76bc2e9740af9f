//! The store against a real SQLite file.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
    (dir, store)
}

/// Account "alice", written back upstream, with its INBOX and Archive.
fn written_back_account(store: &Store) -> (AccountId, Mailbox, Mailbox) {
    let account = store.ensure_account("alice").unwrap();
    store.set_write_back(account, true).unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let archive = store.mailbox(account, "Archive").unwrap().unwrap();
    (account, inbox, archive)
}

/// What a sync of upstream INBOX (UIDVALIDITY 7) that brought `uids` records.
fn inbox_mark(uids: &[u32]) -> SyncMark {
    SyncMark {
        upstream: Vec::new(),
        folder: "INBOX".into(),
        uidvalidity: 7,
        uids: uids.to_vec(),
        next_uid: uids.last().unwrap() + 1,
    }
}

fn message(subject: &str) -> Prepared {
    let raw = format!("Subject: {subject}\r\n\r\nbody\r\n").into_bytes();
    Prepared::new(raw, Flags::default(), InternalDate::now())
}

#[test]
fn open_existing_makes_neither_the_directory_nor_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone/store.sqlite");
    assert!(Store::open_existing(&path).is_err());
    assert!(!dir.path().join("gone").exists());
    let made = Store::open(&path).unwrap();
    made.ensure_account("alice").unwrap();
    drop(made);
    let again = Store::open_existing(&path).unwrap();
    assert!(again.account("alice").unwrap().is_some());
}

#[test]
fn accounts_get_the_special_use_mailboxes() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    assert_eq!(store.ensure_account("alice").unwrap(), account);
    let names: Vec<(String, Option<SpecialUse>)> = store
        .mailboxes(account)
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.special_use))
        .collect();
    assert!(names.contains(&("Sent".into(), Some(SpecialUse::Sent))));
    assert!(names.contains(&("INBOX".into(), None)));
    assert_eq!(names.len(), 6);
}

#[test]
fn uids_ascend_are_never_reused_and_uidvalidity_is_unique() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "inbox").unwrap().unwrap();
    let a = store
        .append(inbox.id, message("a"), Origin::Client)
        .unwrap();
    let b = store
        .append(inbox.id, message("b"), Origin::Client)
        .unwrap();
    assert_eq!((a.uid, b.uid), (1, 2));
    store
        .store_flags(
            inbox.id,
            &[2],
            FlagOp::Add,
            &Flags::new(["\\Deleted"]),
            None,
            Origin::Client,
        )
        .unwrap();
    assert_eq!(store.expunge(inbox.id, None, Origin::Client).unwrap(), [2]);
    let c = store
        .append(inbox.id, message("c"), Origin::Client)
        .unwrap();
    assert_eq!(c.uid, 3, "UID 2 is not reused");
    assert_eq!(store.vanished_since(inbox.id, b.modseq).unwrap(), [2]);

    let work = store.create_mailbox(account, "Work", None).unwrap();
    store.delete_mailbox(account, "Work").unwrap();
    let again = store.create_mailbox(account, "Work", None).unwrap();
    assert!(
        again.uidvalidity > work.uidvalidity,
        "a re-created mailbox gets a new UIDVALIDITY"
    );
    let all: Vec<u32> = store
        .mailboxes(account)
        .unwrap()
        .iter()
        .map(|m| m.uidvalidity)
        .collect();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all.len(), unique.len());
}

#[test]
fn content_is_stored_once_and_collected_when_unused() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let archive = store.mailbox(account, "Archive").unwrap().unwrap();
    store
        .append(inbox.id, message("same"), Origin::Sync)
        .unwrap();
    let (_, pairs) = store
        .copy(inbox.id, &[1], archive.id, Origin::Client)
        .unwrap();
    assert_eq!(pairs, [(1, 1)]);
    // Summaries and bytes are collected together (ON DELETE CASCADE).
    let contents = |store: &Store| -> i64 {
        store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT count(*) FROM contents) * 1000
                          + (SELECT count(*) FROM content_raw)",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    };
    assert_eq!(contents(&store), 1001);
    store
        .move_messages(archive.id, &[1], inbox.id, Origin::Client)
        .unwrap();
    assert_eq!(
        store.select_view(archive.id).unwrap().uids,
        Vec::<u32>::new()
    );
    assert_eq!(store.select_view(inbox.id).unwrap().uids, [1, 2]);
    store
        .store_flags(
            inbox.id,
            &[1, 2],
            FlagOp::Add,
            &Flags::new(["\\deleted"]),
            None,
            Origin::Client,
        )
        .unwrap();
    store.expunge(inbox.id, None, Origin::Client).unwrap();
    assert_eq!(contents(&store), 0);
}

#[test]
fn unchanged_since_and_changes_and_the_journal() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.set_write_back(account, true).unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let a = store.append(inbox.id, message("a"), Origin::Sync).unwrap();
    let stored = store
        .store_flags(
            inbox.id,
            &[1],
            FlagOp::Add,
            &Flags::new(["$Label1"]),
            Some(a.modseq),
            Origin::Client,
        )
        .unwrap();
    assert!(stored.rows[0].3);
    let stale = store
        .store_flags(
            inbox.id,
            &[1],
            FlagOp::Add,
            &Flags::new(["\\Seen"]),
            Some(a.modseq),
            Origin::Client,
        )
        .unwrap();
    assert_eq!(stale.modified, [1]);
    let changes = store.changes_since(inbox.id, a.modseq).unwrap();
    assert_eq!(changes.rows.len(), 1);
    assert!(changes.rows[0].1.contains("$label1"));
    let journal = store.journal_for(account, 0, 10).unwrap();
    assert_eq!(
        journal.len(),
        1,
        "sync appends are not journaled; the client's flag change is"
    );
    assert_eq!(journal[0].kind, "flags");
    store
        .writeback_done(account, journal[0].id, &WrittenBack::default())
        .unwrap();
    assert!(store.journal_for(account, 0, 10).unwrap().is_empty());

    // An account nobody writes back for keeps no journal.
    let local = store.ensure_account("carol").unwrap();
    let mailbox = store.mailbox(local, "INBOX").unwrap().unwrap();
    store
        .append(mailbox.id, message("c"), Origin::Client)
        .unwrap();
    assert!(store.journal_for(local, 0, 10).unwrap().is_empty());
}

#[test]
fn recent_is_claimed_once() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    store.append(inbox.id, message("a"), Origin::Sync).unwrap();
    assert_eq!(store.claim_recent(inbox.id).unwrap(), (1, 2));
    assert_eq!(store.claim_recent(inbox.id).unwrap(), (2, 2));
}

#[test]
fn a_version_1_store_is_upgraded_in_place() {
    // A store written by schema version 1 (bytes inside `contents`, no size on messages).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let raw = b"Subject: old\r\n\r\nkept byte for byte\r\n".to_vec();
    let (uidvalidity, summary) = {
        let mut c = Connection::open(&path).unwrap();
        schema::migrations().to_version(&mut c, 1).unwrap();
        let summary = summarize(&raw);
        c.execute_batch(
            "INSERT INTO accounts (id, name) VALUES (1, 'alice');
             INSERT INTO mailboxes (id, account, name, uidvalidity, uidnext, highestmodseq)
             VALUES (1, 1, 'INBOX', 77, 8, 3);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO contents (id, sha256, size, raw, envelope, body, bodystructure, parts)
             VALUES (5, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &Sha256::digest(&raw)[..],
                raw.len() as i64,
                raw,
                summary.envelope,
                summary.body,
                summary.bodystructure,
                summary.parts.to_bytes()
            ],
        )
        .unwrap();
        c.execute_batch(
            "INSERT INTO messages (mailbox, uid, content, flags, modseq, internaldate)
             VALUES (1, 7, 5, '\\Seen', 3, 0);",
        )
        .unwrap();
        (77, summary)
    };
    let store = Store::open(&path).unwrap();
    let inbox = store.mailbox_by_id(1).unwrap();
    assert_eq!((inbox.uidvalidity, inbox.uidnext), (uidvalidity, 8));
    let rows: Vec<MessageRow> = store
        .fetch_batch(1, &[7], Need::default(), 0)
        .unwrap()
        .items
        .into_iter()
        .map(|(row, _)| row)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].uid, rows[0].size), (7, raw.len() as u32));
    assert!(rows[0].flags.contains("\\Seen"));
    let all = Need {
        raw: true,
        envelope: true,
        bodystructure: true,
        parts: true,
        ..Need::default()
    };
    let batch = store.fetch_batch(1, &[7], all, 1 << 20).unwrap();
    let content = &batch.items[0].1;
    assert_eq!(*content.raw, raw);
    assert_eq!(content.envelope, summary.envelope);
    assert_eq!(content.bodystructure, summary.bodystructure);
    let header = Need {
        header: true,
        ..Need::default()
    };
    let batch = store.fetch_batch(1, &[7], header, 1 << 20).unwrap();
    let content = &batch.items[0].1;
    assert_eq!(content.header, b"Subject: old\r\n\r\n");
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn fetch_batches_stop_at_the_byte_budget_and_skip_what_was_not_asked() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    for i in 0..6 {
        store
            .append(inbox.id, message(&format!("m{i}")), Origin::Sync)
            .unwrap();
    }
    let size = u64::from(
        store
            .fetch_batch(inbox.id, &[1], Need::default(), 0)
            .unwrap()
            .items[0]
            .0
            .size,
    );
    let raw = Need {
        raw: true,
        ..Need::default()
    };
    // Room for two whole messages: two are read, and the batch says where it stopped.
    let batch = store
        .fetch_batch(inbox.id, &[1, 2, 4, 5], raw, 2 * size)
        .unwrap();
    let uids: Vec<u32> = batch.items.iter().map(|(r, _)| r.uid).collect();
    assert_eq!((uids, batch.through), (vec![1, 2], 2));
    assert!(batch.items[1].1.raw.starts_with(b"Subject: m1\r\n"));
    // A budget smaller than one message still makes progress.
    let batch = store.fetch_batch(inbox.id, &[4, 5], raw, 1).unwrap();
    assert_eq!((batch.items.len(), batch.through), (1, 4));
    // Sparse sets are read message by message; expunged UIDs are simply absent.
    let batch = store
        .fetch_batch(inbox.id, &[1, 6, 99], Need::default(), 0)
        .unwrap();
    let uids: Vec<u32> = batch.items.iter().map(|(r, _)| r.uid).collect();
    assert_eq!((uids, batch.through), (vec![1, 6], 99));
    let view = store.select_view(inbox.id).unwrap();
    assert_eq!(view.uids, [1, 2, 3, 4, 5, 6]);
    assert_eq!((view.status.unseen, view.first_unseen), (6, Some(1)));
}

#[test]
fn a_new_upstream_uidvalidity_relinks_what_is_already_stored() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let mark = |uidvalidity, uid| SyncMark {
        upstream: Vec::new(),
        folder: "INBOX".into(),
        uidvalidity,
        uids: vec![uid],
        next_uid: uid + 1,
    };
    let first = store
        .append_synced(inbox.id, vec![message("a")], &mark(7, 1))
        .unwrap()[0];
    assert_eq!(folder_mark(&store, account), Some((7, 2)));
    let seen = Flags::new(["\\Seen"]);
    store
        .store_flags(
            inbox.id,
            &[first.uid],
            FlagOp::Add,
            &seen,
            None,
            Origin::Client,
        )
        .unwrap();

    // Upstream renumbered: the same content under the new UIDVALIDITY is the same message.
    store.reset_sync_folder(account, "INBOX", 8).unwrap();
    assert_eq!(folder_mark(&store, account), Some((8, 1)));
    let again = store
        .append_synced(
            inbox.id,
            vec![message("a"), message("b")],
            &SyncMark {
                upstream: Vec::new(),
                folder: "INBOX".into(),
                uidvalidity: 8,
                uids: vec![3, 4],
                next_uid: 5,
            },
        )
        .unwrap();
    assert_eq!(again[0].uid, first.uid, "re-linked, not stored again");
    assert!(again[0].linked && !again[1].linked);
    assert!(again[1].uid > first.uid, "new content is appended");
    assert_eq!(store.status(inbox.id).unwrap().messages, 2);
    assert_eq!(
        store.status(inbox.id).unwrap().unseen,
        1,
        "the local \\Seen stays"
    );
    assert_eq!(folder_mark(&store, account), Some((8, 5)));
}

fn folder_mark(store: &Store, account: AccountId) -> Option<(u32, u32)> {
    store
        .sync_folder(account, "INBOX")
        .unwrap()
        .map(|f| (f.uidvalidity, f.next_uid))
}

#[test]
fn write_back_links_and_upstream_flags() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let other = store.ensure_account("bob").unwrap();
    store.set_write_back(account, true).unwrap();
    store.set_write_back(other, true).unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let archive = store.mailbox(account, "Archive").unwrap().unwrap();
    let mark = inbox_mark(&[10]);
    let mut verdict = message("a");
    verdict.flags = Flags::new(["$Sealpost-Encrypted", "$Mine", "$Gone"]);
    let a = store.append_synced(inbox.id, vec![verdict], &mark).unwrap()[0];
    let upstream = |folder: &str, uid| UpstreamRef {
        folder: folder.into(),
        uidvalidity: 7,
        uid,
    };
    assert_eq!(
        store.upstream_of(inbox.id, a.uid).unwrap(),
        Some(upstream("INBOX", 10))
    );
    assert_eq!(
        store.linked_upstream(account, "INBOX", 7, 10).unwrap(),
        [10]
    );

    // Upstream flags replace the local ones but for the verdict keyword, and keywords the
    // upstream refused ($Mine); $Gone is gone upstream, and here.
    let refused = ["$MINE".to_string(), "$Gone".to_string()];
    store.keyword_refusals(account, &refused, &[]).unwrap();
    store
        .keyword_refusals(account, &[], &["$gone".to_string()])
        .unwrap();
    let changed = store
        .apply_upstream_flags(account, "INBOX", 7, &[(10, Flags::new(["\\Seen"]))])
        .unwrap();
    assert_eq!(changed, (1, 0));
    let flags = |mailbox, uid| {
        store
            .fetch_batch(mailbox, &[uid], Need::default(), 0)
            .unwrap()
            .items[0]
            .0
            .flags
            .clone()
    };
    assert!(flags(inbox.id, a.uid).contains("\\Seen"));
    assert!(flags(inbox.id, a.uid).contains("$Sealpost-Encrypted"));
    assert!(flags(inbox.id, a.uid).contains("$Mine"));
    assert!(!flags(inbox.id, a.uid).contains("$Gone"));

    // A local move is journaled for this account only; written back with the COPYUID, the
    // link follows the message.
    let (_, pairs) = store
        .move_messages(inbox.id, &[a.uid], archive.id, Origin::Client)
        .unwrap();
    assert!(store.journal_for(other, 0, 10).unwrap().is_empty());
    let entry = store.journal_for(account, 0, 10).unwrap().remove(0);
    assert_eq!(
        (entry.kind.as_str(), entry.detail.clone()),
        ("move", format!("Archive\t{}", pairs[0].1))
    );
    // While the move waits, an upstream flag change does not undo local state.
    store.journal_attempt(entry.id, "upstream down").unwrap();
    assert_eq!(
        store.journal_backlog(account).unwrap(),
        (1, Some("upstream down".to_string()))
    );
    store
        .writeback_done(
            account,
            entry.id,
            &WrittenBack {
                unlink: Some((inbox.id, a.uid)),
                link: Some((archive.id, pairs[0].1, upstream("Archive", 3))),
                ..WrittenBack::default()
            },
        )
        .unwrap();
    assert_eq!(store.upstream_of(inbox.id, a.uid).unwrap(), None);
    assert_eq!(
        store.upstream_of(archive.id, pairs[0].1).unwrap(),
        Some(upstream("Archive", 3))
    );

    // Without a COPYUID the link is lost; the moved message is found again by its content
    // when the target folder is synced, and not stored twice.
    let (_, back) = store
        .move_messages(archive.id, &[pairs[0].1], inbox.id, Origin::Client)
        .unwrap();
    let entry = store.journal_for(account, 0, 10).unwrap().remove(0);
    store
        .writeback_done(
            account,
            entry.id,
            &WrittenBack {
                unlink: Some((archive.id, pairs[0].1)),
                ..WrittenBack::default()
            },
        )
        .unwrap();
    let mut again = message("a");
    again.flags = Flags::new(["$Sealpost-Encrypted"]);
    let relinked = store
        .append_synced(
            inbox.id,
            vec![again],
            &SyncMark {
                upstream: Vec::new(),
                folder: "INBOX".into(),
                uidvalidity: 7,
                uids: vec![12],
                next_uid: 13,
            },
        )
        .unwrap();
    assert_eq!(relinked[0].uid, back[0].1, "linked, not stored twice");
    assert_eq!(store.status(inbox.id).unwrap().messages, 1);
    assert_eq!(
        store.upstream_of(inbox.id, back[0].1).unwrap(),
        Some(upstream("INBOX", 12))
    );
}

/// Message changes waiting in the journal follow a renamed mailbox (and its children); the
/// rename itself keeps the old name, which upstream still has.
#[test]
fn journal_entries_follow_a_renamed_mailbox() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.set_write_back(account, true).unwrap();
    let foo = store.create_mailbox(account, "Foo", None).unwrap().id;
    let sub = store.create_mailbox(account, "Foo/Sub", None).unwrap().id;
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap().id;
    let a = store.append(foo, message("a"), Origin::Client).unwrap();
    store.append(sub, message("b"), Origin::Client).unwrap();
    store.copy(foo, &[a.uid], inbox, Origin::Client).unwrap();
    store.rename_mailbox(account, "Foo", "Bar").unwrap();
    let entries: Vec<(String, String, String)> = store
        .journal_for(account, 0, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.mailbox, e.kind, e.detail))
        .collect();
    assert_eq!(
        entries,
        [
            ("Bar".to_string(), "append".to_string(), String::new()),
            ("Bar/Sub".into(), "append".into(), String::new()),
            ("INBOX".into(), "copy".into(), format!("Bar\t{}", a.uid)),
            ("Foo".into(), "rename-mailbox".into(), "Bar".into()),
        ]
    );
}

/// SQLite's substr counts characters: a parent whose name is not ASCII still has its
/// children found when it is deleted or renamed.
#[test]
fn non_ascii_parents_keep_their_children() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.create_mailbox(account, "Entwürfe", None).unwrap();
    store.create_mailbox(account, "Entwürfe/Alt", None).unwrap();
    assert!(matches!(
        store.delete_mailbox(account, "Entwürfe"),
        Err(StoreError::HasChildren(_))
    ));
    store
        .rename_mailbox(account, "Entwürfe", "Brouillons")
        .unwrap();
    let names: Vec<String> = store
        .mailboxes(account)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .filter(|n| n.contains("Entw") || n.contains("Brouillons"))
        .collect();
    assert_eq!(names, ["Brouillons", "Brouillons/Alt"]);
}

/// A message given new content (a re-decryption) keeps its waiting changes: those journaled on
/// it, and a move's or a copy's detail that names it.
#[test]
fn new_content_keeps_the_changes_that_name_the_message() {
    let (_dir, store) = store();
    let (account, inbox, archive) = written_back_account(&store);
    let mark = inbox_mark(&[10, 11]);
    let stored = store
        .append_synced(inbox.id, vec![message("a"), message("b")], &mark)
        .unwrap();
    let (_, moved) = store
        .move_messages(inbox.id, &[stored[0].uid], archive.id, Origin::Client)
        .unwrap();
    let (_, copied) = store
        .copy(inbox.id, &[stored[1].uid], archive.id, Origin::Client)
        .unwrap();
    let moved_to = store
        .replace_content(archive.id, moved[0].1, message("a, readable"))
        .unwrap()
        .unwrap();
    let copied_from = store
        .replace_content(inbox.id, stored[1].uid, message("b, readable"))
        .unwrap()
        .unwrap();
    let details: Vec<(String, String)> = store
        .journal_for(account, 0, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.detail))
        .collect();
    assert_eq!(
        details,
        [
            ("move".to_string(), format!("Archive\t{moved_to}")),
            ("copy".to_string(), format!("INBOX\t{copied_from}")),
        ],
        "{copied:?}"
    );
}

/// A message past DIRECT_BLOB_MAX goes through a zeroblob: it is read back byte for byte, and
/// a second copy of the same content is still stored once.
#[test]
fn a_large_message_is_stored_whole() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "inbox").unwrap().unwrap();
    let mut raw = b"Subject: large\r\n\r\n".to_vec();
    let mut n = 0u32;
    while raw.len() <= DIRECT_BLOB_MAX + 12_345 {
        raw.extend_from_slice(format!("line {n} of a large message\r\n").as_bytes());
        n += 1;
    }
    let prepared = || Prepared::new(raw.clone(), Flags::default(), InternalDate::now());
    let a = store.append(inbox.id, prepared(), Origin::Client).unwrap();
    let b = store.append(inbox.id, prepared(), Origin::Client).unwrap();
    for uid in [a.uid, b.uid] {
        assert_eq!(store.raw_message(inbox.id, uid).unwrap().unwrap(), raw);
    }
    let contents: i64 = store
        .read(|c| Ok(c.query_row("SELECT count(*) FROM content_raw", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(contents, 1);
    // FETCH reads it through a blob handle, between small messages read by query.
    let small = store
        .append(inbox.id, message("small"), Origin::Client)
        .unwrap();
    let need = Need {
        raw: true,
        ..Need::default()
    };
    let batch = store
        .fetch_batch(inbox.id, &[a.uid, small.uid], need, u64::MAX)
        .unwrap();
    assert_eq!(*batch.items[0].1.raw, raw);
    assert!(batch.items[1].1.raw.starts_with(b"Subject: small\r\n"));
}

/// meta_prefixed reads a range of the key's index: every key with the prefix, no other.
#[test]
fn meta_keys_by_prefix() {
    let (_dir, store) = store();
    for (i, key) in [
        "a:1",
        "a:10",
        "a:1:since",
        "a;",
        "a",
        "b:1",
        "a:\u{e9}",
        "a:",
        "a:\u{10FFFF}x",
    ]
    .iter()
    .enumerate()
    {
        store.set_meta(key, i as i64).unwrap();
    }
    let keys: Vec<String> = store
        .meta_prefixed("a:")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "a:",
            "a:1",
            "a:10",
            "a:1:since",
            "a:\u{e9}",
            "a:\u{10FFFF}x"
        ]
    );
    assert!(store.meta_prefixed("c").unwrap().is_empty());
}

/// A client's STORE neither sets nor clears sealpost's verdict keywords, replacing, adding or
/// removing (review: a replacing STORE FLAGS (\Flagged) dropped the verdict for good, and
/// +FLAGS could make one up); a STORE that only touches them changes nothing.
#[test]
fn a_client_store_leaves_the_verdict_keywords_alone() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.set_write_back(account, true).unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let mut verdict = message("a");
    verdict.flags = Flags::new(["$Sealpost-Encrypted", "\\Seen"]);
    let a = store.append(inbox.id, verdict, Origin::Sync).unwrap();
    let flags = || {
        store
            .fetch_batch(inbox.id, &[a.uid], Need::default(), 0)
            .unwrap()
            .items[0]
            .0
            .flags
            .clone()
    };
    let set = |op, given: &[&str]| {
        store
            .store_flags(
                inbox.id,
                &[a.uid],
                op,
                &Flags::new(given.iter().map(|f| f.to_string())),
                None,
                Origin::Client,
            )
            .unwrap()
    };
    set(FlagOp::Replace, &["\\Flagged"]);
    set(FlagOp::Add, &["$Sealpost-Signed", "\\Answered"]);
    set(FlagOp::Remove, &["$sealpost-encrypted"]);
    let now = flags();
    assert!(now.contains("$Sealpost-Encrypted"), "{now:?}");
    assert!(!now.contains("$Sealpost-Signed"), "{now:?}");
    assert!(
        now.contains("\\Flagged") && now.contains("\\Answered"),
        "{now:?}"
    );
    assert!(!now.contains("\\Seen"), "replaced: {now:?}");
    let before = store.journal_backlog(account).unwrap().0;
    let stored = set(FlagOp::Remove, &["$Sealpost-Encrypted"]);
    assert!(!stored.rows[0].3, "nothing changed");
    assert_eq!(
        store.journal_backlog(account).unwrap().0,
        before,
        "nothing journaled"
    );
}

/// mbsync's move (an expunge of a message linked upstream, then an APPEND of its bytes with
/// the verdict field removed and an X-TUID field added) is journaled as the original's move
/// (a new entry, marked as standing for an expunge) and one flag change that sets the new
/// message's flags and takes away every other the original may have upstream; the flag
/// changes made to the original are not written back, unless one was tried already.
#[test]
fn an_expunge_then_the_same_message_stored_again_is_a_move() {
    for tried in [false, true] {
        let (_dir, store) = store();
        let (account, inbox, archive) = written_back_account(&store);
        let mark = inbox_mark(&[10]);
        let body = "Subject: filed\r\n\r\nbody\r\n";
        let synced = Prepared::new(
            format!("Sealpost-Verdict: encrypted\r\n{body}").into_bytes(),
            Flags::default(),
            InternalDate::now(),
        );
        let a = store.append_synced(inbox.id, vec![synced], &mark).unwrap()[0];
        for flag in ["\\Seen", "\\Deleted"] {
            store
                .store_flags(
                    inbox.id,
                    &[a.uid],
                    FlagOp::Add,
                    &Flags::new([flag]),
                    None,
                    Origin::Client,
                )
                .unwrap();
        }
        if tried {
            let first = store.journal_for(account, 0, 1).unwrap().remove(0);
            store.journal_attempt(first.id, "broken pipe").unwrap();
        }
        store.expunge(inbox.id, None, Origin::Client).unwrap();
        let again = Prepared::new(
            body.replace("\r\n\r\n", "\r\nX-TUID: abcdefghijkl\r\n\r\n")
                .into_bytes(),
            Flags::new(["\\Seen", "\\Flagged"]),
            InternalDate::now(),
        );
        let b = store.append(archive.id, again, Origin::Client).unwrap();
        let journal: Vec<(String, String, u32, String)> = store
            .journal_for(account, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.mailbox, e.uid, e.detail))
            .collect();
        let moved = (
            "move".to_string(),
            "INBOX".to_string(),
            a.uid,
            format!("Archive\t{}\texpunged", b.uid),
        );
        // Whatever upstream has (the flags then, or a change tried already): every flag not
        // the new message's is taken away, \Deleted always.
        let refiled = (
            "flags".to_string(),
            "Archive".to_string(),
            b.uid,
            "\\Seen \\Flagged\t\\Deleted".to_string(),
        );
        let expected = if tried {
            vec![
                (
                    "flags".to_string(),
                    "INBOX".to_string(),
                    a.uid,
                    "\\Seen\t".to_string(),
                ),
                (
                    "flags".into(),
                    "INBOX".into(),
                    a.uid,
                    "\\Seen \\Deleted\t\\Seen".into(),
                ),
                moved,
                refiled,
            ]
        } else {
            vec![moved, refiled]
        };
        assert_eq!(journal, expected, "tried: {tried}");
    }
}

/// A client's CREATE of a default mailbox whose special use no mailbox has any more gives it
/// back; one whose use another mailbox took (a renamed Trash keeps \Trash) does not.
#[test]
fn a_default_mailbox_made_again_gets_its_special_use_back() {
    let (_dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.delete_mailbox(account, "Junk").unwrap();
    let junk = store.create_client_mailbox(account, "Junk").unwrap();
    assert_eq!(junk.special_use, Some(SpecialUse::Junk));
    store.rename_mailbox(account, "Trash", "Bin").unwrap();
    let trash = store.create_client_mailbox(account, "Trash").unwrap();
    assert_eq!(trash.special_use, None);
    let other = store.create_client_mailbox(account, "Junk2").unwrap();
    assert_eq!(other.special_use, None);
}

/// What a client stores again after fetching a message is recognised: without sealpost's
/// verdict field and mbsync's X-TUID, and with each NUL as the 0x80 FETCH sent for it (review:
/// a decrypted message holding a NUL went up as an upload).
#[test]
fn a_message_fetched_and_stored_again_has_the_same_carried_hash() {
    let stored = b"Sealpost-Verdict: encrypted\r\nSubject: a\0b\r\n\r\nbo\0dy\r\n";
    let again = b"Subject: a\x80b\r\nX-TUID: abcdefghijkl\r\n\r\nbo\x80dy\r\n";
    assert_eq!(carried_sha256(stored), carried_sha256(again));
    assert_ne!(
        carried_sha256(stored),
        carried_sha256(b"Subject: a\x80b\r\n\r\nbody\r\n")
    );
}

/// An upstream rename is followed here (the mailbox, its mark and links take the new name),
/// but not while another rename of the mailbox made here waits to go up (it would be undone:
/// review). The same rename waiting here is taken as done; a rename to another name, or
/// several one after another, goes up from the new name upstream.
#[test]
fn an_upstream_rename_is_followed_unless_a_mailbox_change_waits() {
    for waiting in [None, Some("Mine"), Some("Mine/Again"), Some("RN2")] {
        let (_dir, store) = store();
        let account = store.ensure_account("alice").unwrap();
        store.set_write_back(account, true).unwrap();
        let rn = store.create_client_mailbox(account, "RN").unwrap();
        store
            .journal_for(account, 0, 10)
            .unwrap()
            .iter()
            .for_each(|e| {
                store
                    .writeback_done(account, e.id, &WrittenBack::default())
                    .unwrap()
            });
        let mark = SyncMark {
            folder: "RN".into(),
            ..inbox_mark(&[4])
        };
        store
            .append_synced(rn.id, vec![message("a")], &mark)
            .unwrap();
        if let Some(to) = waiting {
            let (first, second) = to.split_once('/').unwrap_or((to, ""));
            store.rename_mailbox(account, "RN", first).unwrap();
            if !second.is_empty() {
                store.rename_mailbox(account, first, second).unwrap();
            }
        }
        let followed = store
            .follow_upstream_rename(account, "RN", "RN2", "RN", "RN2", None)
            .unwrap();
        if waiting == Some("Mine") {
            assert_eq!(followed, FollowedRename::Carried);
            assert!(store.mailbox(account, "Mine").unwrap().is_some());
            let entries = store.journal_for(account, 0, 10).unwrap();
            let renames: Vec<_> = entries
                .iter()
                .map(|e| (e.kind.as_str(), e.mailbox.as_str(), e.detail.as_str()))
                .collect();
            assert_eq!(renames, [("rename-mailbox", "RN2", "Mine")]);
            assert!(store.sync_folder(account, "RN2").unwrap().is_some());
            assert!(store.sync_folder(account, "RN").unwrap().is_none());
        } else if waiting == Some("Mine/Again") {
            // Renamed twice here: the first of the two goes up from the new name.
            assert_eq!(followed, FollowedRename::Carried);
            assert!(store.mailbox(account, "Again").unwrap().is_some());
            let entries = store.journal_for(account, 0, 10).unwrap();
            let renames: Vec<_> = entries
                .iter()
                .map(|e| (e.mailbox.as_str(), e.detail.as_str()))
                .collect();
            assert_eq!(renames, [("RN2", "Mine"), ("Mine", "Again")]);
            assert!(store.sync_folder(account, "RN2").unwrap().is_some());
        } else if waiting == Some("RN2") {
            assert_eq!(followed, FollowedRename::AlsoHere);
            assert!(store.journal_for(account, 0, 10).unwrap().is_empty());
            assert!(store.sync_folder(account, "RN2").unwrap().is_some());
            assert!(store.sync_folder(account, "RN").unwrap().is_none());
        } else {
            assert_eq!(followed, FollowedRename::Renamed("RN".into()));
            let renamed = store.mailbox(account, "RN2").unwrap().unwrap();
            assert_eq!(renamed.id, rn.id);
            assert!(store.sync_folder(account, "RN2").unwrap().is_some());
            assert!(store.sync_folder(account, "RN").unwrap().is_none());
        }
    }
}

#[test]
fn the_upload_secret_is_made_once_per_store() {
    let (dir, store) = store();
    let secret = store.upload_secret().unwrap();
    assert_eq!(store.upload_secret().unwrap(), secret);
    drop(store);
    let again = Store::open(&dir.path().join("s.sqlite")).unwrap();
    assert_eq!(
        again.upload_secret().unwrap(),
        secret,
        "kept across a reopen"
    );
    let (_other_dir, other) = self::store();
    assert_ne!(other.upload_secret().unwrap(), secret, "each store its own");
}

/// A journal entry's id is never given to another: a write-back pass that finishes an entry
/// removed meanwhile must not remove a newer one by that id (review: the move journaled for
/// mbsync's move took the id of the expunge it replaced, and the pass removed it).
#[test]
fn journal_ids_are_never_given_twice() {
    let (_dir, store) = store();
    let (account, inbox, _) = written_back_account(&store);
    store.append(inbox.id, message("a"), Origin::Sync).unwrap();
    let flag = |name: &str| {
        store
            .store_flags(
                inbox.id,
                &[1],
                FlagOp::Add,
                &Flags::new([name]),
                None,
                Origin::Client,
            )
            .unwrap();
    };
    flag("$Label1");
    let first = store.journal_for(account, 0, 10).unwrap()[0].id;
    store
        .writeback_done(account, first, &WrittenBack::default())
        .unwrap();
    flag("$Label2");
    let second = store.journal_for(account, 0, 10).unwrap()[0].id;
    assert!(second > first, "{second} after {first}");
}

/// An SQLite error on a store already open names the store's file, reading or writing (it
/// said only "store: no such table: ..."; a daemon's log did not tell which store).
#[test]
fn an_error_of_an_open_store_names_its_file() {
    let (dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    let path = dir.path().join("s.sqlite");
    let other = Connection::open(&path).unwrap();
    other.execute_batch("DROP TABLE mailboxes").unwrap();
    let read = store.mailboxes(account).unwrap_err().to_string();
    assert!(
        read.starts_with(&format!("store {}: ", path.display())) && read.contains("mailboxes"),
        "{read}"
    );
    let written = store.ensure_account("bob").unwrap_err().to_string();
    assert!(
        written.starts_with(&format!("store {}: ", path.display())),
        "{written}"
    );
}

/// Explaining an I/O error opens none of the store's files: closing a descriptor of the
/// database, its -wal or its -shm would drop every fcntl lock the process holds on it,
/// SQLite's own (review: after a full disk during an APPEND the IMAP daemon held no lock on
/// its store, and another process could reset the WAL under its readers).
#[test]
fn explaining_an_io_error_keeps_the_stores_locks() {
    use std::os::unix::fs::MetadataExt;
    let (dir, store) = store();
    let account = store.ensure_account("alice").unwrap();
    store.mailboxes(account).unwrap();
    let path = dir.path().join("s.sqlite");
    let inodes: Vec<u64> = ["", "-shm"]
        .iter()
        .map(|s| {
            std::fs::metadata(format!("{}{s}", path.display()))
                .unwrap()
                .ino()
        })
        .collect();
    let pid = std::process::id().to_string();
    let locks = || -> Vec<String> {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 6
                    && f[4] == pid
                    && inodes
                        .iter()
                        .any(|i| f[5].rsplit(':').next() == Some(&i.to_string()))
            })
            .map(str::to_string)
            .collect()
    };
    let before = locks();
    assert!(!before.is_empty(), "SQLite holds locks on the store");
    let full =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    let _ = file_system_trouble(&path, &full);
    let _ = StoreError::from(full).in_store(&path).to_string();
    assert_eq!(locks(), before);
}

/// The -wal file gives back what a large transaction made it grow by, once it starts over,
/// whether the transaction was committed (a 24 MB APPEND) or rolled back (one that failed):
/// it stayed at its largest for as long as the store was open (review).
#[test]
fn the_wal_is_cut_back_after_a_large_transaction_committed_or_not() {
    let (dir, store) = store();
    let wal = dir.path().join("s.sqlite-wal");
    let wal_bytes = || std::fs::metadata(&wal).unwrap().len() as i64;
    let account = store.ensure_account("alice").unwrap();
    let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(24 << 20)).into_bytes();
    let big = Prepared::new(big, Flags::default(), InternalDate::now());
    store.append(inbox.id, big, Origin::Client).unwrap();
    assert!(wal_bytes() > 24 << 20, "{}", wal_bytes());
    store
        .append(inbox.id, message("small"), Origin::Client)
        .unwrap();
    assert!(wal_bytes() <= WAL_KEPT_BYTES, "{}", wal_bytes());

    // SQLite failing in the middle of the transaction, as on a full disk.
    let failed = store.write(|tx| {
        tx.execute(
            "UPDATE accounts SET name = name || ?1 WHERE id = ?2",
            params!["y".repeat(24 << 20), account],
        )?;
        tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    assert!(matches!(failed, Err(StoreError::Sql { .. })), "{failed:?}");
    assert!(failed.is_err());
    assert!(wal_bytes() > 24 << 20, "{}", wal_bytes());
    store
        .append(inbox.id, message("after"), Origin::Client)
        .unwrap();
    assert!(wal_bytes() <= WAL_KEPT_BYTES, "{}", wal_bytes());
    assert_eq!(
        store.account("alice").unwrap(),
        Some(account),
        "rolled back"
    );
}

/// The reason the journal's backlog is shown with is the earliest change's own, which the
/// changes behind it wait for (review: the latest's "waits for an earlier change", which never
/// said what for); with only changes held back, the latest's.
#[test]
fn the_backlog_names_the_reason_the_first_change_waits() {
    let (_dir, store) = store();
    let (account, inbox, _) = written_back_account(&store);
    for subject in ["a", "b", "c"] {
        store
            .append(inbox.id, message(subject), Origin::Client)
            .unwrap();
    }
    let entries = store.journal_for(account, 0, 10).unwrap();
    assert_eq!(entries.len(), 3);
    store.journal_attempt(entries[2].id, HELD_BACK).unwrap();
    assert_eq!(
        store.journal_backlog(account).unwrap(),
        (3, Some(HELD_BACK.to_string()))
    );
    store
        .journal_attempt(entries[1].id, "CREATE: [CANNOT] Invalid mailbox name")
        .unwrap();
    store.journal_attempt(entries[0].id, HELD_BACK).unwrap();
    assert_eq!(
        store.journal_backlog(account).unwrap().1.as_deref(),
        Some("CREATE: [CANNOT] Invalid mailbox name")
    );
}

/// A store locked by another process past the busy timeout, or on a full disk, is worth
/// trying again later; a damaged one is not.
#[test]
fn locked_or_full_is_temporary() {
    let sql = |code: i32| StoreError::Sql {
        path: None,
        source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
    };
    assert!(sql(rusqlite::ffi::SQLITE_BUSY).is_temporary());
    assert!(sql(rusqlite::ffi::SQLITE_LOCKED).is_temporary());
    assert!(sql(rusqlite::ffi::SQLITE_FULL).is_temporary());
    assert!(sql(rusqlite::ffi::SQLITE_IOERR).is_temporary());
    assert!(!sql(rusqlite::ffi::SQLITE_CORRUPT).is_temporary());
    assert!(!StoreError::NoMailbox("x".into()).is_temporary());
}

/// A store others could read or slip files into is refused, as the queue refuses its own
/// (review: another user's -wal and -shm, 0666, in a directory anyone may write to, were
/// taken over, and that user read the decrypted mail): a directory any user may write to,
/// and a -wal not owned by the database's owner. Files of the owner's that others may read
/// are made 0600.
#[test]
fn a_store_others_could_read_is_refused_or_made_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    match Store::open(&open_dir.join("s.sqlite")) {
        Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("any user"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened in a directory anyone may write to"),
    }
    let path = dir.path().join("s.sqlite");
    drop(Store::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(&path).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    // A store path that is a link is checked where it leads (review: the link's directory
    // was, and a link into a directory anyone may write to passed).
    let link = dir.path().join("link.sqlite");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    drop(Store::open(&link).unwrap());
    let open_link = dir.path().join("open-link.sqlite");
    std::os::unix::fs::symlink(open_dir.join("s.sqlite"), &open_link).unwrap();
    std::fs::write(open_dir.join("s.sqlite"), b"").unwrap();
    assert!(matches!(
        Store::open(&open_link),
        Err(StoreError::Unsafe { .. })
    ));
    // A -wal that is a link is refused, and what it names is left alone (review: root's
    // open made the file it named 0600).
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let wal = dir.path().join("s.sqlite-wal");
    let _ = std::fs::remove_file(&wal);
    std::os::unix::fs::symlink(&victim, &wal).unwrap();
    match Store::open(&path) {
        Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("no regular file"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened with a -wal that is a link"),
    }
    assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o644);
    std::fs::remove_file(&wal).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // making a file another user's needs root
    }
    let wal = dir.path().join("s.sqlite-wal");
    std::fs::write(&wal, b"").unwrap();
    std::os::unix::fs::chown(&wal, Some(65534), Some(65534)).unwrap();
    match Store::open(&path) {
        Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("uid 65534"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened with another user's -wal"),
    }
    std::fs::remove_file(&wal).unwrap();
    // Root opening a database someone else put in a directory its group may write to.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    std::os::unix::fs::chown(&shared, Some(65533), Some(65533)).unwrap();
    let planted = shared.join("s.sqlite");
    std::fs::copy(&path, &planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    match Store::open(&planted) {
        Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("uid 65534"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a database neither root's nor its directory owner's"),
    }
    // The directory owner's own store, opened by root (as `deliver` run by root does).
    std::os::unix::fs::chown(&planted, Some(65533), Some(65533)).unwrap();
    drop(Store::open(&planted).unwrap());
}

/// A store path that names something else — a mail file, another program's database (the
/// milter's journal) — is refused before anything changes it (review: the mail file was made
/// 0600 with a lock file beside it, and the journal got the store's tables and then mail).
#[test]
fn a_file_that_is_no_store_is_refused_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("m.eml");
    std::fs::write(&mail, b"Subject: x\r\n\r\nbody\r\n").unwrap();
    std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o644)).unwrap();
    match Store::open(&mail) {
        Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("no SQLite database"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a mail file opened as a store"),
    }
    assert_eq!(
        std::fs::metadata(&mail).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!dir.path().join("m.eml.migrate-lock").exists());
    let other = dir.path().join("journal.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE reinjected(identity TEXT, recipient TEXT, at INTEGER);")
        .unwrap();
    match Store::open(&other) {
        Err(StoreError::Unsafe { why, .. }) => {
            assert!(why.contains("tables reinjected"), "{why}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("another program's database opened as a store"),
    }
    let tables: i64 = rusqlite::Connection::open(&other)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "nothing added to it");
    // A store, new or opened again, is one.
    let store = dir.path().join("s.sqlite");
    drop(Store::open(&store).unwrap());
    Store::open(&store).unwrap();
}

/// Flags built from many keywords (a message with 25,000 upstream took 32 s, each compared
/// with all before it): each once whatever its case, in the order first given, system flags
/// in their RFC 3501 spelling, \Recent never; adding and removing many alike.
#[test]
fn many_keywords_are_taken_each_once() {
    let mut names: Vec<String> = (0..25_000).map(|i| format!("$kw{i}")).collect();
    names.extend((0..25_000).map(|i| format!("$KW{i}")));
    names.extend(["\\seen".into(), "\\Recent".into(), "".into(), "a b".into()]);
    let flags = Flags::new(names.iter().cloned());
    let got: Vec<&str> = flags.iter().collect();
    assert_eq!(got.len(), 25_001);
    assert_eq!(
        (got[0], got[24_999], got[25_000]),
        ("$kw0", "$kw24999", "\\Seen")
    );
    let mut some = Flags::new(["\\Flagged", "$a"]);
    assert!(some.apply(FlagOp::Add, &flags));
    assert_eq!(some.iter().count(), 25_003);
    assert!(some.apply(FlagOp::Remove, &Flags::new(names.iter().cloned())));
    assert_eq!(some.iter().collect::<Vec<_>>(), ["\\Flagged", "$a"]);
    assert!(!some.apply(FlagOp::Remove, &Flags::new(["$B"])));
    assert!(!some.apply(FlagOp::Add, &Flags::new(["$A", "\\flagged"])));
}
