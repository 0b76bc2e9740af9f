//! Mailbox commands: SELECT/EXAMINE (with CONDSTORE and QRESYNC), CREATE, DELETE, RENAME,
//! SUBSCRIBE, LIST/LSUB (with LIST-EXTENDED), STATUS, and IDLE.

use std::collections::HashMap;
use std::time::Duration;

use imap_next::imap_types::command::SelectParameter;
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox as WireMailbox};
use imap_next::imap_types::status::StatusDataItemName;

use super::conn::{ConnError, Input};
use super::list::{self, ListCommand};
use super::render::{self, Out};
use super::session::{CmdError, CmdResult, Done, Selected, Session, State};
use crate::store::{AccountId, Mailbox, MailboxStatus, SelectView, StoreError, DELIMITER};

/// The name bytes of a mailbox argument as the client sent them (INBOX normalised).
pub(super) fn wire(mailbox: &WireMailbox<'_>) -> Vec<u8> {
    match mailbox {
        WireMailbox::Inbox => b"INBOX".to_vec(),
        WireMailbox::Other(other) => other.as_ref().to_vec(),
    }
}

impl Session {
    pub(super) async fn select(
        &mut self,
        mailbox: WireMailbox<'static>,
        parameters: Vec<SelectParameter>,
        read_only: bool,
    ) -> CmdResult {
        // RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected.
        let user = match std::mem::replace(&mut self.state, State::Logout) {
            State::Selected(user, _) => {
                // RFC 7162 §3.2.11: the end of the mailbox selected before is marked, so that
                // no response after it is taken for that mailbox's; by a server that offers
                // QRESYNC whether or not this client enabled it, as Dovecot (and RFC 9051
                // §7.1) does (review: only after ENABLE QRESYNC).
                self.conn
                    .write(b"* OK [CLOSED] Previous mailbox closed\r\n")
                    .await?;
                user
            }
            State::Authenticated(user) => user,
            other => {
                self.state = other;
                return Err(CmdError::bad("not logged in"));
            }
        };
        self.state = State::Authenticated(user.clone());
        let found = self.find_mailbox(&wire(&mailbox)).await?;
        let mut qresync = None;
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.qresync {
                        return Err(CmdError::bad(
                            "QRESYNC must be enabled first (RFC 7162 section 3.2.5)",
                        ));
                    }
                    qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids));
                }
            }
        }
        let store = self.shared.store.clone();
        let id = found.id;
        let (view, recent) = tokio::task::spawn_blocking(move || {
            let view = store.select_view(id)?;
            // EXAMINE shows \Recent without taking it from the next session that selects
            // (RFC 3501 §2.3.2, §6.3.2).
            let recent = if read_only {
                store.recent_range(id)?
            } else {
                store.claim_recent(id)?
            };
            Ok::<_, crate::store::StoreError>((view, recent))
        })
        .await??;
        let SelectView {
            uids,
            status,
            first_unseen,
        } = view;
        let mut selected = Selected {
            mailbox: Mailbox {
                uidnext: status.uidnext,
                highestmodseq: status.highestmodseq,
                ..found
            },
            read_only,
            uids,
            recent: vec![recent],
            modseq: status.highestmodseq,
            own: HashMap::new(),
            own_through: status.highestmodseq,
            keywords: status.keywords.clone(),
        };
        let mut out = Out::default();
        out.flags_lists(&selected.keywords, read_only);
        out.text("* ")
            .num(selected.uids.len())
            .text(" EXISTS")
            .crlf();
        let recent_count = selected
            .uids
            .iter()
            .filter(|&&u| selected.is_recent(u))
            .count();
        out.text("* ").num(recent_count).text(" RECENT").crlf();
        out.text("* OK [UIDVALIDITY ")
            .num(selected.mailbox.uidvalidity)
            .text("] UIDs valid")
            .crlf();
        out.text("* OK [UIDNEXT ")
            .num(status.uidnext)
            .text("] Predicted next UID")
            .crlf();
        out.text("* OK [HIGHESTMODSEQ ")
            .num(status.highestmodseq)
            .text("] Highest")
            .crlf();
        if let Some(first_unseen) = first_unseen.and_then(|uid| selected.seq_of(uid)) {
            out.text("* OK [UNSEEN ")
                .num(first_unseen)
                .text("] First unseen")
                .crlf();
        }
        self.conn.write(&out.bytes).await?;
        if let Some((uidvalidity, modseq, known)) = qresync {
            if uidvalidity == selected.mailbox.uidvalidity {
                self.qresync_report(&mut selected, modseq, known.as_ref())
                    .await?;
            }
        }
        self.state = State::Selected(user, selected);
        let access = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Ok(Done::ok_code(
            access,
            if read_only {
                "EXAMINE completed"
            } else {
                "SELECT completed"
            },
        ))
    }

    /// RFC 7162 §3.2.5.1: what changed since the client's MODSEQ, as VANISHED (EARLIER) and
    /// FETCH responses, right after SELECT.
    async fn qresync_report(
        &mut self,
        selected: &mut Selected,
        since: u64,
        known: Option<&imap_next::imap_types::sequence::SequenceSet>,
    ) -> Result<(), CmdError> {
        let store = self.shared.store.clone();
        let id = selected.mailbox.id;
        let changes = tokio::task::spawn_blocking(move || store.changes_since(id, since)).await??;
        let largest = selected.mailbox.uidnext.saturating_sub(1).max(1);
        // Read after the view: a message expunged between the two reads is still in the view
        // (counted in EXISTS). Its expunge is the session's next news (a live VANISHED), not
        // an EARLIER one: named in both, the client heard of it twice, and a FETCH between
        // them numbered messages by a view the client had left (review).
        // Likewise a message stored after the view (at or above its UIDNEXT), and a change
        // made after it (above its HIGHESTMODSEQ): the session's next catch-up reports them,
        // after FLAGS names any keyword new to it (review: a FETCH named a keyword no FLAGS
        // had, with a MODSEQ above the SELECT's HIGHESTMODSEQ, and came again after).
        let vanished: Vec<u32> = changes
            .expunged
            .iter()
            .copied()
            .filter(|&u| u < selected.mailbox.uidnext && selected.seq_of(u).is_none())
            .filter(|&u| known.is_none_or(|set| super::sequence::contains_uid(set, u, largest)))
            .collect();
        let mut out = Out::default();
        if !vanished.is_empty() {
            out.text("* VANISHED (EARLIER) ")
                .text(&render::sequence_set(&vanished))
                .crlf();
        }
        for (uid, flags, modseq) in &changes.rows {
            // Only the client's known UIDs, when it named them (RFC 7162 §3.2.5.1; review:
            // every changed message was reported, the whole mailbox to a client that named
            // one range).
            let unknown =
                known.is_some_and(|set| !super::sequence::contains_uid(set, *uid, largest));
            if *modseq > selected.modseq || unknown {
                continue;
            }
            let Some(seq) = selected.seq_of(*uid) else {
                continue;
            };
            // \Recent is one of this session's flags, as in every later FETCH (review: the
            // same MODSEQ came with two FLAGS lists).
            let recent = selected.is_recent(*uid).then_some("\\Recent");
            out.flags_fetch(seq, *uid, flags.iter().chain(recent), Some(*modseq));
        }
        self.conn.write(&out.bytes).await?;
        Ok(())
    }

    pub(super) async fn create(&mut self, mailbox: WireMailbox<'static>) -> CmdResult {
        let mut wire = wire(&mailbox);
        // RFC 3501 §6.3.3: a trailing delimiter only says the client intends inferiors.
        if wire.len() > 1 && wire.ends_with(b"/") {
            wire.pop();
        }
        let name = super::names::validate(&wire)?;
        if name == "INBOX" {
            return Err(CmdError::no(Some("ALREADYEXISTS"), "INBOX always exists"));
        }
        let account = self.account()?;
        self.check_upstream_name(account, &name).await?;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.create_client_mailbox(account, &name)).await??;
        Ok(Done::ok("CREATE completed"))
    }

    pub(super) async fn delete(&mut self, mailbox: WireMailbox<'static>) -> CmdResult {
        let name = super::names::validate(&wire(&mailbox))?;
        // Never deleted, selected or not: that is the reason to give (review: INUSE while
        // selected, CANNOT after UNSELECT).
        if name == "INBOX" {
            return Err(CmdError::Store(crate::store::StoreError::InboxDelete));
        }
        let account = self.account()?;
        // The mailbox itself, not the name it had at SELECT: another session may have renamed
        // it since (review: DELETE of the old name got INUSE, of the new one OK, and then
        // this session's BYE).
        let selected = match &self.state {
            State::Selected(_, s) => Some(s.mailbox.id),
            _ => None,
        };
        if selected.is_some() {
            let (store, n) = (self.shared.store.clone(), name.clone());
            let target = tokio::task::spawn_blocking(move || store.mailbox(account, &n)).await??;
            if target.is_some_and(|m| Some(m.id) == selected) {
                return Err(CmdError::no(
                    Some("INUSE"),
                    "Close the mailbox before deleting it",
                ));
            }
        }
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.delete_mailbox(account, &name)).await??;
        Ok(Done::ok("DELETE completed"))
    }

    pub(super) async fn rename(
        &mut self,
        from: WireMailbox<'static>,
        to: WireMailbox<'static>,
    ) -> CmdResult {
        let from = super::names::validate(&wire(&from))?;
        let to = super::names::validate(&wire(&to))?;
        if to == "INBOX" {
            return Err(CmdError::no(Some("ALREADYEXISTS"), "INBOX always exists"));
        }
        let account = self.account()?;
        self.check_upstream_name(account, &to).await?;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.rename_mailbox(account, &from, &to)).await??;
        Ok(Done::ok("RENAME completed"))
    }

    /// A name the account's upstream would read as another folder is refused (NO [CANNOT]).
    async fn check_upstream_name(&self, account: AccountId, name: &str) -> Result<(), CmdError> {
        let (store, name) = (self.shared.store.clone(), name.to_string());
        let problem =
            tokio::task::spawn_blocking(move || store.upstream_name_problem(account, &name))
                .await??;
        match problem {
            Some(text) => Err(CmdError::no(Some("CANNOT"), &text)),
            None => Ok(()),
        }
    }

    pub(super) async fn subscribe(&mut self, mailbox: WireMailbox<'static>, on: bool) -> CmdResult {
        let found = match self.find_mailbox(&wire(&mailbox)).await {
            Ok(found) => found,
            // A subscription lives on its mailbox here, so a deleted one has none left: an
            // UNSUBSCRIBE of it is done already (review: NO [NONEXISTENT], which a client that
            // unsubscribes after DELETE, as Thunderbird does, reports as an error).
            Err(CmdError::NoMailbox) if !on => return Ok(Done::ok("UNSUBSCRIBE completed")),
            Err(e) => return Err(e),
        };
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.set_subscribed(found.id, on)).await??;
        Ok(Done::ok(if on {
            "SUBSCRIBE completed"
        } else {
            "UNSUBSCRIBE completed"
        }))
    }

    pub(super) async fn status(
        &mut self,
        mailbox: WireMailbox<'static>,
        items: &[StatusDataItemName],
    ) -> CmdResult {
        // An item not supported is refused, not left out of an OK (review): DELETED-STORAGE
        // belongs to QUOTA (RFC 9208), which is not offered. APPENDLIMIT (RFC 7889), which
        // imap-codec's STATUS grammar lacks, comes parsed as MESSAGES, its items in
        // `status_items` (see `Input::Status`).
        if items.is_empty() {
            return Err(CmdError::bad("Empty status list"));
        }
        if items.contains(&StatusDataItemName::DeletedStorage) {
            return Err(CmdError::bad("DELETED-STORAGE is not supported (no QUOTA)"));
        }
        let found = self.find_mailbox(&wire(&mailbox)).await?;
        let names: Vec<String> = self.status_items.take().unwrap_or_else(|| {
            items
                .iter()
                .map(|i| status_item_name(i).to_owned())
                .collect()
        });
        let status = self.mailbox_status(found.id).await?;
        let mut out = Out::default();
        let limit = u64::from(self.shared.config.limits.max_append);
        render_status(&mut out, &found.name, &status, &names, limit);
        self.conn.write(&out.bytes).await?;
        Ok(Done::ok("STATUS completed"))
    }

    async fn mailbox_status(&self, id: i64) -> Result<MailboxStatus, CmdError> {
        let store = self.shared.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.status(id)).await??)
    }

    pub(super) async fn list_basic(
        &mut self,
        reference: WireMailbox<'static>,
        pattern: ListMailbox<'static>,
        lsub: bool,
    ) -> CmdResult {
        let command = ListCommand {
            reference: wire(&reference),
            patterns: vec![match &pattern {
                ListMailbox::Token(token) => token.as_ref().to_vec(),
                ListMailbox::String(string) => string.as_ref().to_vec(),
            }],
            subscribed: lsub,
            lsub,
            ..ListCommand::default()
        };
        self.list(command).await
    }

    pub(super) async fn list_line(&mut self, line: &[u8]) -> CmdResult {
        if !self.allowed_list() {
            return Err(CmdError::bad("LIST is not allowed before login"));
        }
        let command = list::parse(line).map_err(CmdError::bad)?;
        self.list(command).await
    }

    fn allowed_list(&self) -> bool {
        self.user().is_some()
    }

    async fn list(&mut self, command: ListCommand) -> CmdResult {
        let verb = if command.lsub { "LSUB" } else { "LIST" };
        let mut out = Out::default();
        // RFC 3501 §6.3.8: an empty pattern asks LIST for the delimiter and the root. Not
        // LSUB (§6.3.9 lists subscribed names, and "" is none), nor a LIST that selects
        // subscribed or special-use mailboxes only (review: a nameless folder in LSUB).
        if command.patterns.iter().all(|p| p.is_empty()) {
            if !command.lsub && !command.subscribed && !command.special_use {
                out.text("* LIST (\\Noselect) \"/\" \"\"").crlf();
                self.conn.write(&out.bytes).await?;
            }
            return Ok(Done::ok(format!("{verb} completed")));
        }
        let account = self.account()?;
        let store = self.shared.store.clone();
        let mailboxes = tokio::task::spawn_blocking(move || store.mailboxes(account)).await??;
        for mailbox in &mailboxes {
            let wanted = command
                .patterns
                .iter()
                .any(|p| list::matches(&command.reference, p, &mailbox.name));
            let prefix = format!("{}{DELIMITER}", mailbox.name);
            // A subscribed descendant the patterns do not reach (`%` stops at "/"): RFC 3501
            // §6.3.9 lists its unsubscribed ancestor in LSUB as \Noselect, RFC 5258 §3.5 with
            // CHILDINFO under RECURSIVEMATCH.
            let subscribed_below = |hidden_only: bool| {
                mailboxes.iter().any(|m| {
                    m.subscribed
                        && m.name.starts_with(&prefix)
                        && !(hidden_only
                            && command
                                .patterns
                                .iter()
                                .any(|p| list::matches(&command.reference, p, &m.name)))
                })
            };
            let stand_in = command.subscribed
                && !mailbox.subscribed
                && (command.lsub || command.recursive)
                && subscribed_below(command.lsub);
            if !wanted
                || (command.subscribed && !mailbox.subscribed && !stand_in)
                || (command.special_use && mailbox.special_use.is_none())
            {
                continue;
            }
            let children = mailboxes.iter().any(|m| m.name.starts_with(&prefix));
            let mut attributes: Vec<&str> = Vec::new();
            if command.lsub && stand_in {
                attributes.push("\\Noselect");
            }
            if !command.lsub {
                attributes.push(if children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
                if let Some(use_) = mailbox.special_use {
                    attributes.push(use_.attribute());
                }
                if mailbox.subscribed && (command.return_subscribed || command.subscribed) {
                    attributes.push("\\Subscribed");
                }
            }
            out.text("* ")
                .text(verb)
                .text(" ")
                .flags(attributes)
                .text(" \"/\" ")
                .mailbox(&mailbox.name);
            if !command.lsub && command.recursive && subscribed_below(false) {
                out.text(" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            out.crlf();
            if let Some(items) = &command.return_status {
                let status = self.mailbox_status(mailbox.id).await?;
                let limit = u64::from(self.shared.config.limits.max_append);
                render_status(&mut out, &mailbox.name, &status, items, limit);
            }
        }
        self.conn.write(&out.bytes).await?;
        Ok(Done::ok(format!("{verb} completed")))
    }

    fn account(&self) -> Result<i64, CmdError> {
        Ok(self
            .user()
            .ok_or_else(|| CmdError::bad("not logged in"))?
            .account)
    }

    /// RFC 2177 IDLE: changes are pushed as they are committed until the client says DONE.
    pub(super) async fn idle(&mut self, tag: String) -> Result<(), ConnError> {
        self.conn.idle_accept();
        let mut changed = self.shared.store.watch();
        changed.borrow_and_update();
        let limits = self.shared.config.limits.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.autologout_secs);
        loop {
            match self.catch_up(true).await {
                Ok(_) => {}
                // The selected mailbox deleted by another session: the client is told now,
                // as Dovecot does, not when it ends the IDLE.
                Err(CmdError::Store(StoreError::NoMailbox(_))) => {
                    self.bye_mailbox_deleted().await;
                    return Ok(());
                }
                Err(error) => tracing::warn!(%error, "imap: IDLE update failed"),
            }
            if let Some(input) = self.conn.next_queued() {
                return match input {
                    Input::IdleDone => {
                        self.finish(&tag, Ok(Done::ok("IDLE terminated")), true)
                            .await
                    }
                    // A line that was not DONE: the IDLE ends with BAD, the connection goes on.
                    Input::NotDone => {
                        self.finish(&tag, Err(CmdError::bad("Expected DONE")), true)
                            .await
                    }
                    // Anything but DONE: imap-next still waits for DONE, so the connection
                    // could take no further command; it ends here.
                    _ => {
                        let result = Err(CmdError::bad("expected DONE"));
                        self.finish(&tag, result, true).await?;
                        self.bye("IDLE ends with DONE only").await;
                        Ok(())
                    }
                };
            }
            // The server stopping: BYE now (RFC 3501 §7.1.5), not after its grace period
            // (review: the IDLE client was cut off 10 s later without a word).
            // (It only ever turns true; a server gone without saying so stops it too.)
            let mut stopping = *self.shutdown.borrow_and_update();
            if !stopping {
                self.conn.flush().await?;
                tokio::select! {
                    filled = self.conn.fill(&limits, true) => filled?,
                    _ = changed.changed() => {}
                    _ = self.shutdown.changed() => stopping = true,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.conn.write(b"* BYE Autologout; idle for too long\r\n").await?;
                        self.state = State::Logout;
                        return Ok(());
                    }
                }
            }
            if stopping {
                self.conn.write(b"* BYE Server shutting down\r\n").await?;
                self.state = State::Logout;
                return Ok(());
            }
        }
    }
}

fn status_item_name(item: &StatusDataItemName) -> &'static str {
    match item {
        StatusDataItemName::Messages => "MESSAGES",
        StatusDataItemName::Recent => "RECENT",
        StatusDataItemName::UidNext => "UIDNEXT",
        StatusDataItemName::UidValidity => "UIDVALIDITY",
        StatusDataItemName::Unseen => "UNSEEN",
        StatusDataItemName::Deleted => "DELETED",
        StatusDataItemName::DeletedStorage => "DELETED-STORAGE",
        StatusDataItemName::HighestModSeq => "HIGHESTMODSEQ",
        StatusDataItemName::Size => "SIZE",
    }
}

/// The STATUS items answered (upper case): a LIST RETURN (STATUS ...) naming another is BAD.
pub(super) const STATUS_ITEMS: &[&str] = &[
    "MESSAGES",
    "RECENT",
    "UIDNEXT",
    "UIDVALIDITY",
    "UNSEEN",
    "DELETED",
    "HIGHESTMODSEQ",
    "SIZE",
    "APPENDLIMIT",
];

/// "* STATUS name (MESSAGES 3 UNSEEN 1)", items in the order asked; `append_limit` is the
/// APPENDLIMIT (RFC 7889), the same for every mailbox.
fn render_status(
    out: &mut Out,
    name: &str,
    status: &MailboxStatus,
    items: &[String],
    append_limit: u64,
) {
    out.text("* STATUS ").mailbox(name).text(" (");
    let mut first = true;
    for item in items {
        let value = match item.as_str() {
            "MESSAGES" => u64::from(status.messages),
            "RECENT" => u64::from(status.recent),
            "UIDNEXT" => u64::from(status.uidnext),
            "UIDVALIDITY" => u64::from(status.uidvalidity),
            "UNSEEN" => u64::from(status.unseen),
            "HIGHESTMODSEQ" => status.highestmodseq,
            "SIZE" => status.size,
            "DELETED" => u64::from(status.deleted),
            "APPENDLIMIT" => append_limit,
            _ => continue,
        };
        if !first {
            out.text(" ");
        }
        first = false;
        out.text(item).text(" ").num(value);
    }
    out.text(")").crlf();
}
