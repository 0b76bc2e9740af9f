//! FETCH and UID FETCH (RFC 3501 §6.4.5, RFC 7162 CHANGEDSINCE/VANISHED). Messages are read
//! from the store in batches and written out as they are rendered, so memory stays bounded
//! whatever the mailbox size; stored bytes and the precomputed ENVELOPE/BODYSTRUCTURE are
//! served as they are.

use std::borrow::Cow;

use imap_next::imap_types::command::FetchModifier;
use imap_next::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItemName, Part, Section,
};
use imap_next::imap_types::sequence::SequenceSet;
use imap_next::imap_types::ToStatic;

use super::render::{self, Chunk, Out};
use super::section::{self, SectionText};
use super::sequence;
use super::session::{CmdError, CmdResult, Done, Session};
use crate::store::{ContentData, FlagOp, Flags, MessageRow, Need, Origin};

/// Messages read from the store per round trip.
const BATCH: usize = 1024;
/// Bytes of whole messages read per round trip (at least one message is always read).
const BUDGET: u64 = 4 << 20;
/// Most BODY[...] and RFC822 items one FETCH may name (MUAs name a few).
const MAX_SECTIONS: usize = 100;

impl Session {
    pub(super) async fn fetch(
        &mut self,
        set: SequenceSet,
        names: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> CmdResult {
        let items: Vec<MessageDataItemName<'static>> = match names {
            MacroOrMessageDataItemNames::Macro(m) => {
                m.expand().into_iter().map(|i| i.to_static()).collect()
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        // RFC 3501 §9: a list of at least one item (`FETCH 1 ()` would be answered with
        // `* 1 FETCH ()`, which breaks the grammar of the response too).
        if items.is_empty() {
            return Err(CmdError::bad("FETCH needs at least one data item"));
        }
        // An item named twice is answered once, as Dovecot does: BODYSTRUCTURE named 4,600
        // times in one 64 KB line had one message's response copy its 740 KB each time, 3.4 GB
        // (review).
        // BODY.PEEK[s] and BODY[s] are one response item, BODY[s] (review: it came twice):
        // the one that sets \Seen stands for both.
        let unpeeked = |item: &MessageDataItemName<'static>| match item {
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => MessageDataItemName::BodyExt {
                section: section.clone(),
                partial: *partial,
                peek: false,
            },
            other => other.clone(),
        };
        let seen: std::collections::HashSet<_> = items
            .iter()
            .filter(|i| matches!(i, MessageDataItemName::BodyExt { peek: false, .. }))
            .cloned()
            .collect();
        let mut named = std::collections::HashSet::new();
        let items: Vec<_> = items
            .iter()
            .map(|item| {
                let unpeeked = unpeeked(item);
                match seen.contains(&unpeeked) {
                    true => unpeeked,
                    false => item.clone(),
                }
            })
            .filter(|item| named.insert(item.clone()))
            .collect();
        // Each section of a message is a copy of its bytes in the response (up to 64 KiB
        // each): a client naming thousands made one message's response hundreds of MB.
        let sections = items
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Header
                        | MessageDataItemName::Rfc822Text
                )
            })
            .count();
        if sections > MAX_SECTIONS {
            return Err(CmdError::bad(format!(
                "at most {MAX_SECTIONS} message sections in one FETCH"
            )));
        }
        if items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            return Err(CmdError::bad("BINARY is not supported"));
        }
        let mut changed_since = None;
        let mut vanished = false;
        for modifier in &modifiers {
            match modifier {
                FetchModifier::ChangedSince(_) if self.since_zero => changed_since = Some(0),
                FetchModifier::ChangedSince(v) => changed_since = Some(v.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            return Err(CmdError::bad(
                "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE",
            ));
        }
        if changed_since.is_some()
            || items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            self.enable_condstore().await?;
        }
        let condstore = self.condstore;
        let selected = self.selected()?;
        if !uid && sequence::out_of_range(&set, selected.uids.len() as u32) {
            return Err(CmdError::bad("Message sequence number out of range"));
        }
        let targets = sequence::resolve(&set, &selected.uids, uid);
        let need = need_of(&items);
        let sets_seen = !selected.read_only && items.iter().any(sets_seen);
        let (mailbox, largest) = (
            selected.mailbox.id,
            selected.uids.last().copied().unwrap_or(0),
        );
        let recent = selected.recent.clone();
        // Keywords the session's FLAGS named: one a fetched message carries beyond them (set
        // by another session since) gets new FLAGS before the FETCH naming it (RFC 3501
        // §7.2.6; review: the FETCH came first).
        let named: std::sync::Arc<std::collections::HashSet<String>> = std::sync::Arc::new(
            selected
                .keywords
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
        );

        if let (true, Some(since)) = (vanished, changed_since) {
            let store = self.shared.store.clone();
            let gone =
                tokio::task::spawn_blocking(move || store.vanished_since(mailbox, since)).await??;
            let gone: Vec<u32> = gone
                .into_iter()
                .filter(|&u| sequence::contains_uid(&set, u, largest.max(u)))
                .collect();
            if !gone.is_empty() {
                let line = format!("* VANISHED (EARLIER) {}\r\n", render::sequence_set(&gone));
                self.conn.write(line.as_bytes()).await?;
            }
        }

        // Batches of BATCH messages; whole messages only up to BUDGET bytes per batch, so
        // memory stays bounded whatever the mailbox and message sizes. Each batch is read and
        // rendered on a blocking thread while the previous one is written (at most two in
        // memory). A FETCH that sets \\Seen renders here instead, after the flag change.
        let renderer = std::sync::Arc::new(Renderer {
            sections: prepare_sections(&items),
            // One message's response may copy as much as the largest message there can be,
            // and a batch's worth more: a hundred HEADER.FIELDS.NOT sections of an 8 MB header
            // (each a copy) took the server to 877 MB (review).
            most_copied: self.shared.config.limits.max_append as usize + BUDGET as usize,
            items,
            recent,
            // With QRESYNC, or CONDSTORE, on, every FETCH response names its UID (RFC 7162
            // §3.2.4: a MUST once CONDSTORE is enabled, for a server that offers QRESYNC).
            uid: uid || self.qresync || self.condstore,
            condstore,
            changed_since: changed_since.is_some(),
        });
        let shared_store = self.shared.store.clone();
        let read = |rest: &[(u32, u32)]| {
            let chunk: Vec<(u32, u32)> = rest.iter().take(BATCH).copied().collect();
            let store = shared_store.clone();
            let renderer = renderer.clone();
            let named = named.clone();
            tokio::task::spawn_blocking(move || {
                let wanted: Vec<u32> = chunk.iter().map(|t| t.1).collect();
                let batch = store.fetch_batch(mailbox, &wanted, need, BUDGET)?;
                // Looked up in a set: a batch of messages with thousands of keywords among
                // them is not compared one by one with every keyword named (review).
                let mut unnamed: Vec<String> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for flag in batch.items.iter().flat_map(|(r, _)| r.flags.iter()) {
                    if flag.starts_with('\\') {
                        continue;
                    }
                    let lower = flag.to_ascii_lowercase();
                    if !named.contains(&lower) && seen.insert(lower) {
                        unnamed.push(flag.to_string());
                    }
                }
                let covered = chunk.partition_point(|t| t.1 <= batch.through);
                // The messages of the session's view still there (the others another session
                // expunged since).
                let present: Vec<u32> = batch.items.iter().map(|(r, _)| r.uid).collect();
                let mut fetched = batch.items;
                if let Some(since) = changed_since {
                    fetched.retain(|(r, _)| r.modseq > since);
                }
                let mut covered = chunk[..covered].to_vec();
                let read = if sets_seen {
                    Read::Rows(fetched)
                } else {
                    let (chunks, through) =
                        renderer.render(&covered, &fetched, &Default::default())?;
                    covered.truncate(covered.partition_point(|t| t.1 <= through));
                    Read::Rendered(chunks)
                };
                Ok::<_, CmdError>((covered, read, present, unnamed))
            })
        };
        let mut rest = &targets[..];
        let mut next = (!rest.is_empty()).then(|| read(rest));
        let mut expunged = 0;
        // UIDs this FETCH set \Seen on whose responses are still to come.
        let mut seen_now = std::collections::HashSet::new();
        while let Some(reading) = next.take() {
            let (mut covered, batch, present, unnamed) = reading.await??;
            let selected = self.selected()?;
            if selected.learn_keywords(unnamed.iter().map(String::as_str)) {
                let mut out = Out::default();
                out.flags_lists(&selected.keywords, selected.read_only);
                self.conn.write(&out.bytes).await?;
            }
            let chunks = match batch {
                Read::Rendered(chunks) => chunks,
                Read::Rows(mut fetched) => {
                    seen_now.extend(self.set_seen(mailbox, &mut fetched).await?);
                    // The flags as \Seen was set on them: a keyword another session set since
                    // the batch was read is named first too (review).
                    let selected = self.selected()?;
                    let flags = fetched.iter().flat_map(|(r, _)| r.flags.iter());
                    if selected.learn_keywords(flags) {
                        let mut out = Out::default();
                        out.flags_lists(&selected.keywords, selected.read_only);
                        self.conn.write(&out.bytes).await?;
                    }
                    let (chunks, through) = renderer.render(&covered, &fetched, &seen_now)?;
                    covered.truncate(covered.partition_point(|t| t.1 <= through));
                    chunks
                }
            };
            expunged += covered
                .iter()
                .filter(|t| present.binary_search(&t.1).is_err())
                .count();
            rest = &rest[covered.len()..];
            next = (!rest.is_empty()).then(|| read(rest));
            for chunk in &chunks {
                self.conn.write(chunk.as_slice()).await?;
            }
        }
        if expunged > 0 && !uid {
            // RFC 2180 §4.1.2, RFC 5530: the others' data went out; these have none left.
            // A bare OK would pass them off as messages with nothing in them, a NO would fail
            // every FETCH until the client sends a command that may be told of the expunge
            // (as Dovecot does: OK with the code). UID FETCH ignores UIDs that are gone (RFC
            // 3501 §6.4.8), as UID COPY does.
            return Ok(Done::ok_code(
                "EXPUNGEISSUED".to_string(),
                "Some of the messages were expunged by another session",
            ));
        }
        Ok(Done::ok(if uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        }))
    }
}

impl Session {
    /// Sets \\Seen on the fetched messages that lack it (RFC 3501 §6.4.5: BODY[] without
    /// .PEEK); returns their UIDs, whose FLAGS go out even when not asked for.
    async fn set_seen(
        &mut self,
        mailbox: crate::store::MailboxId,
        fetched: &mut [(MessageRow, ContentData)],
    ) -> Result<Vec<u32>, CmdError> {
        let unseen: Vec<u32> = fetched
            .iter()
            .filter(|(r, _)| !r.flags.contains("\\Seen"))
            .map(|(r, _)| r.uid)
            .collect();
        if unseen.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.shared.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store.store_flags(
                mailbox,
                &unseen,
                FlagOp::Add,
                &Flags::new(["\\Seen"]),
                None,
                Origin::Client,
            )
        })
        .await??;
        let selected = self.selected()?;
        let mut seen_now = Vec::new();
        for (uid, flags, modseq, _) in stored.rows {
            selected.own.insert(uid, modseq);
            if let Ok(i) = fetched.binary_search_by_key(&uid, |(r, _)| r.uid) {
                fetched[i].0.flags = flags;
                fetched[i].0.modseq = modseq;
            }
            seen_now.push(uid);
        }
        Ok(seen_now)
    }
}

/// One batch as the reading thread hands it over.
enum Read {
    /// The FETCH responses, ready to write.
    Rendered(Vec<Chunk>),
    /// The messages read, to render after \\Seen is set.
    Rows(Vec<(MessageRow, ContentData)>),
}

/// Renders FETCH responses: the items asked for and the session facts they depend on.
struct Renderer {
    items: Vec<MessageDataItemName<'static>>,
    sections: Vec<Option<PreparedSection>>,
    /// Most bytes one message's response may copy: past it, the FETCH fails (NO [LIMIT]).
    most_copied: usize,
    /// The session's \\Recent UID ranges.
    recent: Vec<(u32, u32)>,
    uid: bool,
    condstore: bool,
    changed_since: bool,
}

impl Renderer {
    /// `covered` and `fetched` are both in UID order; the pairs carry the sequence numbers of
    /// the command's view (expunged messages are absent from `fetched`). Stops after the
    /// message whose responses bring the bytes rendered (copied, not passed on) past
    /// BUDGET: a FETCH naming a 60 KB section 1,200 times had a batch of 60 messages render
    /// 4 GB (review). Returns the responses and the UID they go up to (`u32::MAX`: all).
    fn render(
        &self,
        covered: &[(u32, u32)],
        fetched: &[(MessageRow, ContentData)],
        seen_now: &std::collections::HashSet<u32>,
    ) -> Result<(Vec<Chunk>, u32), CmdError> {
        // Sized for the batch up front: no regrowth copies of a large response. A large
        // message is passed on, not copied in.
        let estimate: usize = fetched
            .iter()
            .map(|(_, c)| {
                let raw = if Out::passes_on(c.raw.len()) {
                    0
                } else {
                    c.raw.len()
                };
                64 + raw + c.header.len() + c.envelope.len() + c.body.len() + c.bodystructure.len()
            })
            .sum();
        let mut out = Out::with_capacity(estimate);
        let mut targets = covered.iter();
        for (row, content) in fetched {
            let Some(&(seq, _)) = targets.find(|t| t.1 == row.uid) else {
                continue;
            };
            let recent = self
                .recent
                .iter()
                .any(|(lo, hi)| (*lo..*hi).contains(&row.uid));
            render_message(
                &mut out,
                seq,
                row,
                content,
                &self.items,
                &self.sections,
                Extras {
                    most_copied: self.most_copied,
                    uid: self.uid,
                    recent,
                    extra_flags: seen_now.contains(&row.uid),
                    condstore: self.condstore,
                    changed_since: self.changed_since,
                },
            )?;
            if out.rendered_len() as u64 > BUDGET {
                return Ok((out.into_chunks(), row.uid));
            }
        }
        Ok((out.into_chunks(), u32::MAX))
    }
}

#[derive(Clone, Copy)]
struct Extras {
    /// Most bytes this message's response may copy.
    most_copied: usize,
    uid: bool,
    recent: bool,
    /// \Seen was just set by this FETCH: FLAGS goes out even if not asked for.
    extra_flags: bool,
    condstore: bool,
    /// CHANGEDSINCE was given: every response carries MODSEQ (RFC 7162 §3.1.4.1).
    changed_since: bool,
}

fn sets_seen(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { peek: false, .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

fn need_of(items: &[MessageDataItemName<'_>]) -> Need {
    let mut need = Need {
        lean: items.iter().all(|i| {
            matches!(
                i,
                MessageDataItemName::Uid | MessageDataItemName::Flags | MessageDataItemName::ModSeq
            )
        }),
        ..Need::default()
    };
    for item in items {
        match item {
            MessageDataItemName::Body => need.body = true,
            MessageDataItemName::BodyStructure => need.bodystructure = true,
            MessageDataItemName::Envelope => need.envelope = true,
            // The part map gives the header's length when the whole message is read too (for
            // RFC822 or a BODY[] section next to it): the header is then cut from it.
            MessageDataItemName::Rfc822Header => {
                need.header = true;
                need.parts = true;
            }
            MessageDataItemName::Rfc822 => need.raw = true,
            MessageDataItemName::Rfc822Text => {
                need.raw = true;
                need.parts = true;
            }
            MessageDataItemName::BodyExt { section, .. } => match section {
                Some(
                    Section::Header(None)
                    | Section::HeaderFields(None, _)
                    | Section::HeaderFieldsNot(None, _),
                ) => {
                    need.header = true;
                    need.parts = true;
                }
                _ => {
                    need.raw = true;
                    need.parts = true;
                }
            },
            _ => {}
        }
    }
    if need.raw {
        need.header = false;
    }
    need
}

fn render_message(
    out: &mut Out,
    seq: u32,
    row: &MessageRow,
    content: &ContentData,
    items: &[MessageDataItemName<'_>],
    sections: &[Option<PreparedSection>],
    extras: Extras,
) -> Result<(), CmdError> {
    // Bytes the message's sections copied: BODYSTRUCTURE, ENVELOPE and BODY are one copy each
    // of what was stored, whatever their size (counted, an 8 MB BODYSTRUCTURE failed every
    // FETCH of the mailbox: review).
    let mut sections_copied = 0;
    out.text("* ").num(seq).text(" FETCH (");
    let mut first = true;
    let mut sep = |out: &mut Out| {
        if !first {
            out.text(" ");
        }
        first = false;
    };
    let asked_uid = items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
    if extras.uid && !asked_uid {
        sep(out);
        out.text("UID ").num(row.uid);
    }
    let asked_flags = items
        .iter()
        .any(|i| matches!(i, MessageDataItemName::Flags));
    let mut modseq_done = false;
    for (item, prepared) in items.iter().zip(sections) {
        // Nothing of this message's response has been written yet: it goes out whole or not.
        if sections_copied > extras.most_copied {
            return Err(CmdError::no(
                Some("LIMIT"),
                "FETCH response too large: ask for fewer sections at a time",
            ));
        }
        let before = out.rendered_len();
        sep(out);
        match item {
            MessageDataItemName::Uid => {
                out.text("UID ").num(row.uid);
            }
            MessageDataItemName::Flags => {
                out.text("FLAGS ");
                out.flags(row.flags.iter().chain(extras.recent.then_some("\\Recent")));
            }
            MessageDataItemName::InternalDate => {
                let date =
                    render::internal_date(row.internaldate.unix, row.internaldate.tz_minutes);
                out.text("INTERNALDATE \"").text(&date).text("\"");
            }
            MessageDataItemName::Rfc822Size => {
                out.text("RFC822.SIZE ").num(row.size);
            }
            MessageDataItemName::Envelope => {
                out.text("ENVELOPE ").raw(&content.envelope);
            }
            MessageDataItemName::Body => {
                out.text("BODY ").raw(&content.body);
            }
            MessageDataItemName::BodyStructure => {
                out.text("BODYSTRUCTURE ").raw(&content.bodystructure);
            }
            MessageDataItemName::Rfc822 => {
                out.text("RFC822 ")
                    .stored_literal(&content.raw, &content.raw);
            }
            MessageDataItemName::Rfc822Header => {
                let header = if content.raw.is_empty() {
                    &content.header[..]
                } else {
                    header_of(content)
                };
                out.text("RFC822.HEADER ")
                    .stored_literal(&content.raw, header);
            }
            MessageDataItemName::Rfc822Text => {
                let header_len = header_of(content).len();
                out.text("RFC822.TEXT ").stored_literal(
                    &content.raw,
                    &content.raw[header_len.min(content.raw.len())..],
                );
            }
            MessageDataItemName::ModSeq => {
                out.text("MODSEQ (").num(row.modseq).text(")");
                modseq_done = true;
            }
            MessageDataItemName::BodyExt { partial, .. } => {
                if let Some(prepared) = prepared {
                    body_section(out, content, prepared, *partial);
                }
            }
            MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {
                return Err(CmdError::bad("BINARY is not supported"));
            }
        }
        if matches!(
            item,
            MessageDataItemName::BodyExt { .. }
                | MessageDataItemName::Rfc822
                | MessageDataItemName::Rfc822Header
                | MessageDataItemName::Rfc822Text
        ) {
            sections_copied += out.rendered_len() - before;
        }
    }
    if sections_copied > extras.most_copied {
        return Err(CmdError::no(
            Some("LIMIT"),
            "FETCH response too large: ask for fewer sections at a time",
        ));
    }
    if extras.extra_flags && !asked_flags {
        sep(out);
        out.text("FLAGS ");
        out.flags(row.flags.iter().chain(extras.recent.then_some("\\Recent")));
    }
    // RFC 7162 §3.1.4.1: with CONDSTORE enabled, FETCH responses carrying FLAGS carry MODSEQ,
    // and with CHANGEDSINCE all of them do.
    if extras.condstore
        && !modseq_done
        && (asked_flags || extras.extra_flags || extras.changed_since)
    {
        sep(out);
        out.text("MODSEQ (").num(row.modseq).text(")");
    }
    out.text(")").crlf();
    Ok(())
}

fn header_of(content: &ContentData) -> &[u8] {
    if !content.header.is_empty() {
        return &content.header;
    }
    let len = content
        .parts
        .as_ref()
        .map_or(content.raw.len(), |p| p.header_len());
    &content.raw[..len.min(content.raw.len())]
}

fn part_path(part: Option<&Part>) -> Vec<u32> {
    part.map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
        .unwrap_or_default()
}

/// BODY[section]<origin.count> (RFC 3501 §6.4.5) and its response label.
/// A BODY[section] item as parsed once per command: the part path, what of it, and the
/// label echoed in each response.
struct PreparedSection {
    path: Vec<u32>,
    what: SectionText,
    /// Bytes, not text: a field name with 8-bit bytes is echoed as the literal it came as.
    label: Vec<u8>,
}

/// The prepared sections of a FETCH's items, aligned with them (None for other items).
fn prepare_sections(items: &[MessageDataItemName<'_>]) -> Vec<Option<PreparedSection>> {
    items
        .iter()
        .map(|item| match item {
            MessageDataItemName::BodyExt { section, .. } => Some(prepare_section(section.as_ref())),
            _ => None,
        })
        .collect()
}

fn prepare_section(section: Option<&Section<'_>>) -> PreparedSection {
    let (path, what, label) = match section {
        None => (Vec::new(), SectionText::Full, Vec::new()),
        Some(Section::Part(part)) => {
            let path = part_path(Some(part));
            let label = join(&path).into_bytes();
            (path, SectionText::Full, label)
        }
        Some(Section::Header(part)) => {
            let path = part_path(part.as_ref());
            let label = prefixed(&path, "HEADER").into_bytes();
            (path, SectionText::Header, label)
        }
        Some(Section::Text(part)) => {
            let path = part_path(part.as_ref());
            let label = prefixed(&path, "TEXT").into_bytes();
            (path, SectionText::Text, label)
        }
        Some(Section::Mime(part)) => {
            let path = part_path(Some(part));
            let label = prefixed(&path, "MIME").into_bytes();
            (path, SectionText::Mime, label)
        }
        Some(Section::HeaderFields(part, names) | Section::HeaderFieldsNot(part, names)) => {
            let not = matches!(section, Some(Section::HeaderFieldsNot(..)));
            let path = part_path(part.as_ref());
            let names: Vec<Vec<u8>> = names.as_ref().iter().map(|n| n.as_ref().to_vec()).collect();
            let mut label = prefixed(
                &path,
                if not {
                    "HEADER.FIELDS.NOT"
                } else {
                    "HEADER.FIELDS"
                },
            )
            .into_bytes();
            label.extend_from_slice(b" (");
            let mut rendered = Out::default();
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    rendered.text(" ");
                }
                // Field names are echoed as atoms, the way clients sent them (RFC 3501 §7.4.2).
                if !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
                {
                    rendered.raw(name);
                } else {
                    rendered.string(name);
                }
            }
            label.extend_from_slice(&rendered.bytes);
            label.push(b')');
            (path, SectionText::HeaderFields { names, not }, label)
        }
    };
    PreparedSection { path, what, label }
}

fn body_section(
    out: &mut Out,
    content: &ContentData,
    prepared: &PreparedSection,
    partial: Option<(u32, std::num::NonZeroU32)>,
) {
    let PreparedSection { path, what, label } = prepared;
    let source: &[u8] = if content.raw.is_empty() {
        &content.header
    } else {
        &content.raw
    };
    let bytes: Option<Cow<'_, [u8]>> = match &content.parts {
        Some(parts) => section::section(source, parts, path, what),
        None => None,
    };
    out.text("BODY[").raw(label).text("]");
    match (bytes, partial) {
        // A part that does not exist reads as empty, as Dovecot answers it.
        (None, Some((origin, _))) => {
            out.text("<").num(origin).text("> \"\"");
        }
        (None, None) => {
            out.text(" \"\"");
        }
        (Some(bytes), Some((origin, count))) => {
            out.text("<").num(origin).text("> ");
            let slice = section::partial(&bytes, origin, Some(count.get()));
            body_value(out, content, slice);
        }
        (Some(bytes), None) => {
            out.text(" ");
            body_value(out, content, &bytes);
        }
    }
}

/// A section's bytes: passed on from the stored message when they are part of it (see
/// [`Out::stored_literal`]).
fn body_value(out: &mut Out, content: &ContentData, bytes: &[u8]) {
    if bytes.is_empty() {
        out.text("\"\"");
    } else {
        out.stored_literal(&content.raw, bytes);
    }
}

fn join(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn prefixed(path: &[u32], what: &str) -> String {
    if path.is_empty() {
        what.to_owned()
    } else {
        format!("{}.{what}", join(path))
    }
}
