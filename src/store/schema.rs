//! The store's schema and its migrations. A migration is only ever appended: an upgrade never
//! rewrites an existing mailbox's UIDVALIDITY or UIDs (RFC 3501 §2.3.1.1: a client may cache
//! messages under (UIDVALIDITY, UID) forever).

use rusqlite_migration::{Migrations, M};

/// Migration 1: content stored once by hash, mutable state per mailbox, tombstones for QRESYNC
/// (RFC 7162 §3.2.5.2 VANISHED needs the UIDs expunged since a MODSEQ) and the change journal
/// that the sync side writes back upstream.
const V1: &str = "
-- Store-wide counters: the highest UIDVALIDITY ever handed out, so a mailbox created after the
-- newest one was deleted never gets that value again.
CREATE TABLE store_meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);

CREATE TABLE accounts (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE
);

-- One row per mailbox. uidvalidity is a 32-bit value unique across the whole store, so a
-- mailbox deleted and re-created under the same name never reuses its old UIDVALIDITY.
CREATE TABLE mailboxes (
    id            INTEGER PRIMARY KEY,
    account       INTEGER NOT NULL REFERENCES accounts(id),
    name          TEXT NOT NULL,
    uidvalidity   INTEGER NOT NULL UNIQUE CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext       INTEGER NOT NULL DEFAULT 1 CHECK (uidnext BETWEEN 1 AND 4294967296),
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    recent_floor  INTEGER NOT NULL DEFAULT 1,
    special_use   TEXT,
    subscribed    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account, name)
);

-- Immutable message content: the exact bytes, served back unchanged, and what IMAP needs of
-- them, computed once at insert.
CREATE TABLE contents (
    id            INTEGER PRIMARY KEY,
    sha256        BLOB NOT NULL UNIQUE,
    size          INTEGER NOT NULL,
    raw           BLOB NOT NULL,
    envelope      BLOB NOT NULL,
    body          BLOB NOT NULL,
    bodystructure BLOB NOT NULL,
    parts         BLOB NOT NULL
);

-- Mutable per-mailbox state. flags holds system flags and keywords, space-separated.
CREATE TABLE messages (
    mailbox       INTEGER NOT NULL REFERENCES mailboxes(id),
    uid           INTEGER NOT NULL,
    content       INTEGER NOT NULL REFERENCES contents(id),
    flags         TEXT NOT NULL DEFAULT '',
    modseq        INTEGER NOT NULL,
    internaldate  INTEGER NOT NULL,
    tz_minutes    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, uid)
) WITHOUT ROWID;
CREATE INDEX messages_modseq ON messages (mailbox, modseq);
CREATE INDEX messages_content ON messages (content);

CREATE TABLE expunged (
    mailbox  INTEGER NOT NULL REFERENCES mailboxes(id),
    uid      INTEGER NOT NULL,
    modseq   INTEGER NOT NULL,
    PRIMARY KEY (mailbox, uid)
) WITHOUT ROWID;
CREATE INDEX expunged_modseq ON expunged (mailbox, modseq);

-- Changes made by IMAP clients, in order, for the sync side to write back upstream. Changes
-- made by the sync itself are not journaled (they came from upstream).
CREATE TABLE journal (
    id       INTEGER PRIMARY KEY,
    account  INTEGER NOT NULL REFERENCES accounts(id),
    mailbox  TEXT NOT NULL,
    uid      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT '',
    at       INTEGER NOT NULL
);
";

/// Migration 2: the exact bytes move out of `contents` into `content_raw`, and the size is
/// copied onto each message row. In one row, a column stored after a large blob can only be
/// reached by walking the blob's overflow pages, so in V1 every ENVELOPE or BODYSTRUCTURE read
/// walked the whole message, and every FLAGS/RFC822.SIZE read touched the content table. Now
/// message state, summaries and bytes are three separate b-trees: a FLAGS fetch reads only
/// `messages`, a BODYSTRUCTURE fetch only small `contents` rows, and a header fetch only the
/// first pages of a `content_raw` blob (incremental blob I/O).
const V2: &str = "
CREATE TABLE content_raw (
    id   INTEGER PRIMARY KEY REFERENCES contents(id) ON DELETE CASCADE,
    raw  BLOB NOT NULL
);
INSERT INTO content_raw (id, raw) SELECT id, raw FROM contents;
ALTER TABLE contents DROP COLUMN raw;
-- The size is immutable, so the copy on each message can never disagree with contents.size.
ALTER TABLE messages ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET size = (SELECT c.size FROM contents c WHERE c.id = messages.content);
";

/// Migration 3: what the sync has taken from each upstream folder. `sync_folders` holds the
/// folder's UIDVALIDITY and the next upstream UID to fetch; `sync_map` links each imported
/// upstream (folder, UIDVALIDITY, UID) to the local message. Both are written in the same
/// transaction as the messages, so after a crash the sync resumes exactly where the last
/// commit left it: no message twice, none skipped.
const V3: &str = "
CREATE TABLE sync_folders (
    account      INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder       TEXT NOT NULL,
    uidvalidity  INTEGER NOT NULL,
    next_uid     INTEGER NOT NULL,
    PRIMARY KEY (account, folder)
);
CREATE TABLE sync_map (
    account       INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder        TEXT NOT NULL,
    uidvalidity   INTEGER NOT NULL,
    upstream_uid  INTEGER NOT NULL,
    mailbox       INTEGER NOT NULL,
    uid           INTEGER NOT NULL,
    PRIMARY KEY (account, folder, uidvalidity, upstream_uid)
);
CREATE INDEX sync_map_local ON sync_map (mailbox, uid);
";

/// Migration 4: write-back and the other sources. Journal entries count their attempts (an
/// upload retried after a crash first looks for its earlier copy upstream) and keep the last
/// error for `sealpost sync` to show; `sync_folders` remembers the upstream HIGHESTMODSEQ
/// (RFC 7162 CONDSTORE: flag changes are fetched with CHANGEDSINCE); `sync_files` links each
/// imported Maildir file (by its unique base name) to the local message. Only accounts synced
/// from an upstream IMAP account journal their changes (`write_back`): elsewhere nobody would
/// empty the journal.
const V4: &str = "
ALTER TABLE accounts ADD COLUMN write_back INTEGER NOT NULL DEFAULT 0;
ALTER TABLE journal ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE journal ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
CREATE INDEX journal_account ON journal (account, id);
ALTER TABLE sync_folders ADD COLUMN highestmodseq INTEGER NOT NULL DEFAULT 0;
CREATE TABLE sync_files (
    account  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder   TEXT NOT NULL,
    name     TEXT NOT NULL,
    mailbox  INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    PRIMARY KEY (account, folder, name)
) WITHOUT ROWID;
";

/// Migration 5: each upstream link keeps the SHA-256 of the message as the server sent it. After
/// an upstream UIDVALIDITY change the resync matches messages by it: the stored message is the
/// processed one, whose verdict field can differ from one import to the next (a signer's key
/// imported meanwhile), so matching by stored content missed and stored the message twice.
/// Links made before have none and are matched by stored content as before.
const V5: &str = "
ALTER TABLE sync_map ADD COLUMN upstream_sha256 BLOB;
";

/// Migration 6: the resync's lookup by upstream hash (migration 5) on an index (which a
/// store opened by a build of the day it came may have from migration 5 already), and no
/// more marks of an expunge-search skip that was taken out again.
const V6: &str = "
CREATE INDEX IF NOT EXISTS sync_map_upstream ON sync_map (account, folder, upstream_sha256);
DELETE FROM store_meta WHERE key LIKE 'expunge-check:%';
";

// The message's SHA-256 without sealpost's verdict field and mbsync's X-TUID field: what a
// message a client fetched and stores again (mbsync's move) is recognised by, since APPEND
// removes the one and mbsync adds the other. NULL for contents stored before this version.
const V7: &str = "
ALTER TABLE contents ADD COLUMN carried_sha256 BLOB;
CREATE INDEX contents_carried ON contents (carried_sha256) WHERE carried_sha256 IS NOT NULL;
";

/// Migration 8: journal ids are never given twice (AUTOINCREMENT). Without it SQLite gave a new
/// entry the id of the newest one deleted, and a write-back pass holding that deleted entry
/// in hand then removed the new one as done: the move journaled for mbsync's move (its
/// APPEND removes the expunge and flag changes before it) was lost, and the message with it
/// upstream (review: 3 of 8 moves). The table is made again with the same rows and ids.
const V8: &str = "
CREATE TABLE journal_v8 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account    INTEGER NOT NULL REFERENCES accounts(id),
    mailbox    TEXT NOT NULL,
    uid        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    at         INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
INSERT INTO journal_v8 (id, account, mailbox, uid, kind, detail, at, attempts, last_error)
    SELECT id, account, mailbox, uid, kind, detail, at, attempts, last_error FROM journal;
DROP TABLE journal;
ALTER TABLE journal_v8 RENAME TO journal;
CREATE INDEX journal_account ON journal (account, id);
";

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up(V2),
        M::up(V3),
        M::up(V4),
        M::up(V5),
        M::up(V6),
        M::up(V7),
        M::up(V8),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }

    /// Migration 8 keeps every journal entry with its id, and the next id comes after the
    /// highest kept.
    #[test]
    fn the_journal_keeps_its_entries_and_ids_through_migration_8() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let migrations = super::migrations();
        migrations.to_version(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (id, name) VALUES (1, 'alice');
             INSERT INTO journal (id, account, mailbox, uid, kind, detail, at, attempts)
             VALUES (5, 1, 'INBOX', 3, 'expunge', 'x', 7, 2);",
        )
        .unwrap();
        migrations.to_latest(&mut conn).unwrap();
        let kept: (i64, String, i64) = conn
            .query_row("SELECT id, kind, attempts FROM journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(kept, (5, "expunge".to_string(), 2));
        conn.execute("DELETE FROM journal", []).unwrap();
        conn.execute(
            "INSERT INTO journal (account, mailbox, uid, kind, at) VALUES (1, 'INBOX', 4, 'flags', 8)",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 6);
    }
}
