//! Commands that change messages: APPEND, STORE, COPY, MOVE, EXPUNGE (and UID EXPUNGE).

use imap_next::imap_types::command::StoreModifier;
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_next::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_next::imap_types::mailbox::Mailbox as WireMailbox;
use imap_next::imap_types::sequence::SequenceSet;

use super::mailbox::wire;
use super::render::{self, Out};
use super::sequence;
use super::session::{CmdError, CmdResult, Done, Session};
use crate::store::{FlagOp, Flags, InternalDate, Origin, Prepared};

/// A client flag as stored text; \Recent cannot be set (RFC 3501 §2.3.2).
pub(super) fn flag_text(flag: &Flag<'_>) -> String {
    flag.to_string()
}

/// A system flag RFC 3501 §2.3.2 does not define (`\Bogus`) cannot be set: BAD, as Dovecot
/// answers, rather than storing it as if it were one.
fn check_flags(flags: &[Flag<'_>]) -> Result<(), CmdError> {
    // \Recent is ignored where it is stored (session state, never the client's to set).
    let unknown = |f: &&Flag<'_>| {
        matches!(f, Flag::Extension(_)) && !f.to_string().eq_ignore_ascii_case("\\Recent")
    };
    match flags.iter().find(unknown) {
        Some(f) => Err(CmdError::bad(format!("Invalid system flag {f}"))),
        None => Ok(()),
    }
}

/// Whether a STORE of `op` with sealpost's own keywords `asked` (lower case) left `now` other
/// than the client takes it to be: one asked for is not there, one asked away still is, or
/// one replaced away stayed.
fn kept_own(op: FlagOp, asked: &[String], now: &Flags) -> bool {
    let has = |k: &str| now.iter().any(|f| f.eq_ignore_ascii_case(k));
    match op {
        FlagOp::Add => asked.iter().any(|k| !has(k)),
        FlagOp::Remove => asked.iter().any(|k| has(k)),
        FlagOp::Replace => {
            asked.iter().any(|k| !has(k))
                || now
                    .iter()
                    .filter(|f| crate::store::is_local_keyword(f))
                    .any(|f| !asked.contains(&f.to_ascii_lowercase()))
        }
    }
}

impl Session {
    /// The mailbox APPEND, COPY or MOVE writes into; a missing one is answered with
    /// TRYCREATE (RFC 3501 §6.3.11, §6.4.7).
    async fn target_mailbox(
        &self,
        mailbox: &WireMailbox<'_>,
    ) -> Result<crate::store::Mailbox, CmdError> {
        match self.find_mailbox(&wire(mailbox)).await {
            Err(CmdError::NoMailbox) => Err(CmdError::no(Some("TRYCREATE"), "No such mailbox")),
            other => other,
        }
    }

    pub(super) async fn append(
        &mut self,
        mailbox: WireMailbox<'static>,
        flags: Vec<Flag<'static>>,
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'static>,
    ) -> CmdResult {
        check_flags(&flags)?;
        let target = self.target_mailbox(&mailbox).await?;
        let bytes = match message {
            LiteralOrLiteral8::Literal(literal) => literal.into_inner().into_owned(),
            // RFC 3516's ~{n} is for servers that announce BINARY, which this one does not:
            // it let a NUL byte in past the check on literals (review), and served it in a
            // plain literal.
            LiteralOrLiteral8::Literal8(_) => {
                return Err(CmdError::bad(
                    "BINARY is not supported: send the message as a literal",
                ))
            }
        };
        if bytes.is_empty() {
            return Err(CmdError::no(None, "Empty message"));
        }
        if bytes.len() > self.shared.config.limits.max_append as usize {
            return Err(CmdError::no(
                Some("TOOBIG"),
                "Message is larger than APPENDLIMIT",
            ));
        }
        let date = date.map_or_else(InternalDate::now, |d| {
            let d = d.as_ref();
            InternalDate {
                unix: d.timestamp(),
                tz_minutes: d.offset().local_minus_utc() / 60,
            }
        });
        // A bare LF is stored as CRLF: what is served is what was stored (RFC 3501 §2.3.4
        // requires CRLF on the wire). A verdict, field or $Sealpost- keyword, is sealpost's
        // only when sealpost verified the message, which it does not do here: a message from
        // another account or server brings none.
        let mut flags = Flags::new(
            flags
                .iter()
                .map(flag_text)
                .filter(|f| !crate::store::is_local_keyword(f)),
        );
        // Held once: a 60 MB APPEND took 5.5 times its size with a copy at each step.
        let mut bytes = crate::inbound::into_without_verdict(crate::store::into_crlf(bytes));
        let store = self.shared.store.clone();
        let appended = tokio::task::spawn_blocking(move || {
            // Stored again within the account (mbsync's move: an APPEND of what it fetched,
            // with X-TUID added), the message keeps the verdict sealpost gave it: its content
            // is that message's byte for byte but for those two fields (review: a From
            // mismatch warning was gone after a move with mbsync).
            if let Some((field, keywords)) = store.carried_verdict(target.account, &bytes)? {
                bytes = crate::inbound::with_field_added(&bytes, &field);
                for keyword in keywords {
                    flags.insert(keyword);
                }
            }
            let message = Prepared::new(bytes, flags, date);
            store.append(target.id, message, Origin::Client)
        })
        .await??;
        Ok(Done::ok_code(
            format!("APPENDUID {} {}", appended.uidvalidity, appended.uid),
            "APPEND completed",
        ))
    }

    pub(super) async fn store(
        &mut self,
        set: SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'static>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) -> CmdResult {
        check_flags(&flags)?;
        let condstore_modifier = modifiers
            .iter()
            .map(|m| match m {
                StoreModifier::UnchangedSince(v) => *v,
            })
            .next();
        if condstore_modifier.is_some() {
            self.enable_condstore().await?;
        }
        let selected = self.selected()?;
        if selected.read_only {
            return Err(CmdError::no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        if !uid && sequence::out_of_range(&set, selected.uids.len() as u32) {
            return Err(CmdError::bad("Message sequence number out of range"));
        }
        let targets = sequence::resolve(&set, &selected.uids, uid);
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let op = match kind {
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
            StoreType::Replace => FlagOp::Replace,
        };
        // Keywords are case-insensitive (RFC 3501 §2.3.2): one the mailbox knows takes the
        // spelling it has there, as with Dovecot, so that FOO sets or clears Foo, not a second
        // keyword no FLAGS response named.
        let flags = Flags::new(flags.iter().map(flag_text).map(|f| {
            if f.starts_with('\\') {
                return f;
            }
            selected
                .keywords
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&f))
                .cloned()
                .unwrap_or(f)
        }));
        // sealpost's own keywords stay as they are whatever a client asks (the store keeps
        // them); a STORE that asked to change one is answered with the flags as they are,
        // .SILENT or not (review: neomutt showed a signed message as unsigned after a silent
        // -FLAGS, and a client resyncing by MODSEQ would never have heard otherwise).
        let asked: Vec<String> = flags
            .iter()
            .filter(|f| crate::store::is_local_keyword(f))
            .map(|f| f.to_ascii_lowercase())
            .collect();
        let id = selected.mailbox.id;
        let store = self.shared.store.clone();
        let requested = uids.len();
        let stored = tokio::task::spawn_blocking(move || {
            store.store_flags(id, &uids, op, &flags, condstore_modifier, Origin::Client)
        })
        .await??;
        let condstore = self.condstore;
        // Once CONDSTORE is on, every FETCH response a STORE causes names its UID (RFC 7162
        // §3.2.4, a MUST for a server that offers QRESYNC; review: only with QRESYNC on).
        let with_uid = uid || self.qresync || condstore;
        let selected = self.selected()?;
        let mut out = Out::default();
        // A keyword new to the mailbox: FLAGS and PERMANENTFLAGS name it before the
        // responses that carry it (RFC 3501 §7.2.6).
        if selected.learn_keywords(stored.rows.iter().flat_map(|(_, flags, ..)| flags.iter())) {
            out.flags_lists(&selected.keywords, selected.read_only);
        }
        for (i, (uid_value, flags, modseq, changed)) in stored.rows.iter().enumerate() {
            // The session's own change needs no report at the next NOOP, unless another
            // session had changed the message since this one last heard: then that report
            // is the only way its client learns of it (RFC 3501 §6.4.6; review: a .SILENT
            // STORE hid another session's \Flagged for good).
            let seen_before = stored.prior_modseq.get(i).is_some_and(|&prior| {
                prior <= selected.modseq || selected.own.get(uid_value) == Some(&prior)
            });
            // RFC 7162 §3.1.3: with UNCHANGEDSINCE, .SILENT still reports changes, never
            // unchanged messages.
            let report = match response {
                StoreResponse::Answer => true,
                StoreResponse::Silent => {
                    condstore_modifier.is_some() && *changed || kept_own(op, &asked, flags)
                }
            };
            // Reported here, the message's flags as they are now need no second report at
            // the next NOOP (review: the fix above sent them twice).
            if report || (*changed && seen_before) {
                selected.own.insert(*uid_value, *modseq);
            }
            if !report {
                continue;
            }
            let Some(seq) = selected.seq_of(*uid_value) else {
                continue;
            };
            out.text("* ").num(seq).text(" FETCH (FLAGS ");
            let recent = selected.is_recent(*uid_value).then_some("\\Recent");
            out.flags(flags.iter().chain(recent));
            if with_uid {
                out.text(" UID ").num(uid_value);
            }
            if condstore {
                out.text(" MODSEQ (").num(modseq).text(")");
            }
            out.text(")").crlf();
        }
        self.conn.write(&out.bytes).await?;
        // Messages another session expunged meanwhile took no flags: said as FETCH says it
        // (RFC 2180 §4.2.1, RFC 5530), not passed off as stored (review: a plain OK). UID
        // STORE ignores UIDs that are gone (RFC 3501 §6.4.8).
        let expunged = !uid && stored.rows.len() + stored.modified.len() < requested;
        if !stored.modified.is_empty() {
            // The tagged OK carries MODIFIED (RFC 7162 §3.1.3); an expunge goes before it
            // (review: it was lost).
            if expunged {
                self.conn
                    .write(b"* OK [EXPUNGEISSUED] Some of the messages were expunged by another session\r\n")
                    .await?;
            }
            let modified: Vec<u32> = if uid {
                stored.modified.clone()
            } else {
                let selected = self.selected()?;
                stored
                    .modified
                    .iter()
                    .filter_map(|u| selected.seq_of(*u))
                    .collect()
            };
            return Ok(Done::ok_code(
                format!("MODIFIED {}", render::sequence_set(&modified)),
                "Conditional STORE failed for some messages",
            ));
        }
        if expunged {
            return Ok(Done::ok_code(
                "EXPUNGEISSUED".to_string(),
                "Some of the messages were expunged by another session",
            ));
        }
        Ok(Done::ok("STORE completed"))
    }

    /// COPY and MOVE (RFC 6851); both answer with COPYUID (RFC 4315).
    pub(super) async fn copy(
        &mut self,
        set: SequenceSet,
        mailbox: WireMailbox<'static>,
        uid: bool,
        moving: bool,
    ) -> CmdResult {
        let target = self.target_mailbox(&mailbox).await?;
        let selected = self.selected()?;
        if moving && selected.read_only {
            return Err(CmdError::no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        if !uid && sequence::out_of_range(&set, selected.uids.len() as u32) {
            return Err(CmdError::bad("Message sequence number out of range"));
        }
        let uids: Vec<u32> = sequence::resolve(&set, &selected.uids, uid)
            .iter()
            .map(|t| t.1)
            .collect();
        if uids.is_empty() {
            return Ok(Done::ok("No messages"));
        }
        let from = selected.mailbox.id;
        let (store, to) = (self.shared.store.clone(), target.id);
        let (uidvalidity, pairs) = tokio::task::spawn_blocking(move || {
            if moving {
                store.move_messages(from, &uids, to, Origin::Client)
            } else {
                store.copy(from, &uids, to, Origin::Client)
            }
        })
        .await??;
        // All of them expunged meanwhile by another session: nothing was copied, and a
        // COPYUID with empty sets would be no valid response (RFC 4315 §3).
        if pairs.is_empty() {
            if uid {
                return Ok(Done::ok("No messages"));
            }
            return Err(CmdError::no(
                Some("EXPUNGEISSUED"),
                "The messages were expunged meanwhile",
            ));
        }
        let sources: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let targets: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let code = format!(
            "COPYUID {uidvalidity} {} {}",
            render::ordered_set(&sources),
            render::ordered_set(&targets)
        );
        if !moving {
            return Ok(Done::ok_code(code, "COPY completed"));
        }
        // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
        let mut out = Out::default();
        out.text("* OK [").text(&code).text("] Moved").crlf();
        self.report_expunged(&mut out, &sources)?;
        self.conn.write(&out.bytes).await?;
        Ok(Done::ok("MOVE completed"))
    }

    pub(super) async fn expunge(&mut self, only: Option<SequenceSet>) -> CmdResult {
        let selected = self.selected()?;
        if selected.read_only {
            return Err(CmdError::no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        // Only messages this session knows of: one another session stored with \Deleted since
        // (not announced here yet) stays, as with Dovecot; its client may mean to undelete it
        // (review: it was expunged unseen, here and upstream).
        let restrict: Vec<u32> = match &only {
            Some(set) => sequence::resolve(set, &selected.uids, true)
                .iter()
                .map(|t| t.1)
                .collect(),
            None => selected.uids.clone(),
        };
        let id = selected.mailbox.id;
        let store = self.shared.store.clone();
        let gone =
            tokio::task::spawn_blocking(move || store.expunge(id, Some(&restrict), Origin::Client))
                .await??;
        let mut out = Out::default();
        self.report_expunged(&mut out, &gone)?;
        self.conn.write(&out.bytes).await?;
        Ok(Done::ok("EXPUNGE completed"))
    }

    /// EXPUNGE responses for UIDs this session removed itself, each numbered against the view
    /// at that moment (RFC 3501 §7.4.1), or one VANISHED with QRESYNC (RFC 7162 §3.2.10).
    fn report_expunged(&mut self, out: &mut Out, uids: &[u32]) -> Result<(), CmdError> {
        let qresync = self.qresync;
        let selected = self.selected()?;
        let mut present: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| selected.uids.binary_search(u).is_ok())
            .collect();
        present.sort_unstable();
        if qresync {
            if !present.is_empty() {
                out.text("* VANISHED ")
                    .text(&render::sequence_set(&present))
                    .crlf();
            }
            selected.uids.retain(|u| present.binary_search(u).is_err());
            return Ok(());
        }
        for uid in present {
            if let Ok(i) = selected.uids.binary_search(&uid) {
                out.text("* ").num(i + 1).text(" EXPUNGE").crlf();
                selected.uids.remove(i);
            }
        }
        Ok(())
    }
}
