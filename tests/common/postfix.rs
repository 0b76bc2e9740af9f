//! A private Postfix instance for the milter tests: `postfix -c DIR start` with its own
//! main.cf/master.cf, queue and data directories under DIR, smtpd on a free 127.0.0.1 port with
//! sealpost's milter, a second smtpd without milters (the re-injection listener), and
//! catch-all virtual delivery into one Maildir. Needs root (Postfix's master runs as root).
//!
//! The milter benchmark includes this file too (`#[path]`, with relay.rs for `free_port`).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::relay::free_port;

pub struct Postfix {
    pub dir: PathBuf,
    pub smtp_port: u16,
    pub reinject_port: u16,
}

impl Postfix {
    /// Starts an instance whose smtpd and sendmail path use the milter on `milter_port`.
    pub fn start(milter_port: u16) -> Postfix {
        Self::start_with(Some(milter_port))
    }

    /// Like `start`; with None, no milter at all (the plain-Postfix baseline).
    pub fn start_with(milter_port: Option<u16>) -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("spf")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let p = Postfix {
            smtp_port: free_port(),
            reinject_port: free_port(),
            dir,
        };
        let d = p.dir.display();
        for sub in ["q", "d", "mail"] {
            std::fs::create_dir_all(p.dir.join(sub)).unwrap();
        }
        // Recipients the re-injection listener refuses for now (`fail_reinjection`).
        std::fs::write(p.dir.join("reinject-access"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&p.dir.join("d"), "postfix:postfix");
        chown(&p.dir.join("mail"), "65534:65534");
        std::fs::write(
            p.dir.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {d}/q\ndata_directory = {d}/d\n\
                 mail_owner = postfix\nsetgid_group = postdrop\n\
                 daemon_directory = /usr/lib/postfix/sbin\ncommand_directory = /usr/sbin\n\
                 shlib_directory = /usr/lib/postfix\nmeta_directory = /etc/postfix\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 myhostname = mx.sealpost.test\nmydomain = sealpost.test\nmyorigin = sealpost.test\n\
                 mydestination =\nmynetworks = 127.0.0.0/8\nrelay_domains =\n\
                 alias_maps =\nalias_database =\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = /tmp\n\
                 smtp_dns_support_level = disabled\n\
                 virtual_mailbox_domains = example.org example.net example.com sealpost.test\n\
                 virtual_mailbox_base = {d}/mail\nvirtual_mailbox_maps = static:box/\n\
                 virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
                 smtpd_recipient_restrictions = permit_mynetworks, reject\n\
                 smtpd_milters = {m}\nnon_smtpd_milters = {m}\n\
                 milter_default_action = tempfail\n\
                 queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n",
                m = milter_port.map_or(String::new(), |m| format!("inet:127.0.0.1:{m}"))
            ),
        )
        .unwrap();
        std::fs::write(
            p.dir.join("master.cf"),
            format!(
                "127.0.0.1:{s} inet n - n - - smtpd\n\
                 127.0.0.1:{r} inet n - n - - smtpd -o smtpd_milters= -o smtpd_milter_maps= -o non_smtpd_milters= \
                 -o local_header_rewrite_clients= \
                 -o smtpd_recipient_restrictions=check_recipient_access,texthash:{d}/reinject-access,permit_mynetworks,reject\n\
                 pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
                 smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n\
                 showq unix n - n - - showq\nerror unix - - n - - error\n\
                 retry unix - - n - - error\ndiscard unix - - n - - discard\n\
                 local unix - n n - - local\nvirtual unix - n n - - virtual\n\
                 anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
                 postlog unix-dgram n - n - 1 postlogd\n",
                s = p.smtp_port,
                r = p.reinject_port
            ),
        )
        .unwrap();
        p.postfix(&["start"]);
        wait_for_port(p.smtp_port);
        wait_for_port(p.reinject_port);
        p
    }

    /// Runs `postfix -c DIR ARGS`; panics with the log's tail when it fails.
    pub fn postfix(&self, args: &[&str]) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix {args:?}: {out:?}\n{}",
            self.log()
        );
    }

    /// Sets one main.cf parameter (`name = value`) and reloads.
    pub fn set(&self, parameter: &str) {
        let ok = Command::new("postconf")
            .arg("-c")
            .arg(&self.dir)
            .arg("-e")
            .arg(parameter)
            .status()
            .unwrap()
            .success();
        assert!(ok, "postconf -e {parameter}");
        self.postfix(&["reload"]);
    }

    /// Makes the re-injection listener answer 451 for `recipient` (None: accept all again).
    pub fn fail_reinjection(&self, recipient: Option<&str>) {
        match recipient {
            Some(r) => self.reinjection_answers(r, "451 4.3.0 re-injection test failure"),
            None => {
                let rules = self.dir.join("reinject-access");
                let old = std::fs::read_to_string(&rules).unwrap();
                std::fs::write(&rules, "").unwrap();
                self.postfix(&["reload"]);
                if let Some(recipient) = old.split_whitespace().next() {
                    self.wait_reinjection_reply(recipient, "250");
                }
            }
        }
    }

    /// Makes the re-injection listener answer `reply` to RCPT for `recipient`.
    pub fn reinjection_answers(&self, recipient: &str, reply: &str) {
        self.reinjection_answers_each(&[(recipient, reply)]);
    }

    /// Like `reinjection_answers`, for several recipients at once (set once: a later reload
    /// leaves an idle smtpd with the old rules to serve the next connection).
    pub fn reinjection_answers_each(&self, rules: &[(&str, &str)]) {
        let map: String = rules
            .iter()
            .map(|(r, reply)| format!("{r} {reply}\n"))
            .collect();
        std::fs::write(self.dir.join("reinject-access"), map).unwrap();
        // texthash maps are read when a process starts: new smtpd processes for new rules.
        self.postfix(&["reload"]);
        for (recipient, reply) in rules {
            self.wait_reinjection_reply(recipient, &reply[..3]);
        }
    }

    /// Makes the re-injection listener stop announcing DSN (RFC 3461), as
    /// `smtpd_discard_ehlo_keywords = dsn` does; it then refuses DSN parameters.
    pub fn reinjection_without_dsn(&self) {
        let service = format!(
            "127.0.0.1:{}/inet/smtpd_discard_ehlo_keywords=dsn",
            self.reinject_port
        );
        let ok = Command::new("postconf")
            .arg("-c")
            .arg(&self.dir)
            .arg("-P")
            .arg(&service)
            .status()
            .unwrap()
            .success();
        assert!(ok, "postconf -P {service}");
        self.postfix(&["reload"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ehlo_reply(self.reinject_port).contains("DSN") {
            assert!(
                Instant::now() < deadline,
                "the listener still announces DSN"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postfix reload` only signals the master, and an smtpd started before it may still
    /// take a connection: the listener is asked (up to a minute) until RCPT for `recipient`
    /// gets the reply code `code`.
    fn wait_reinjection_reply(&self, recipient: &str, code: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = rcpt_reply(self.reinject_port, recipient);
            if reply.starts_with(code) {
                return;
            }
            assert!(Instant::now() < deadline, "re-injection listener: {reply}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master process, from its pid file.
    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("q/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.join("mail/box/new")
    }

    /// The delivered messages, waiting (up to a minute) until there are `n`.
    pub fn wait_messages(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = read_dir_files(&self.maildir());
            if found.len() >= n || Instant::now() > deadline {
                assert_eq!(found.len(), n, "delivered messages; log:\n{}", self.log());
                return found;
            }
            // Postfix gives no event a test can wait on; the Maildir is polled briefly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs Postfix's own sendmail (the non_smtpd_milters path).
    pub fn sendmail(&self, args: &[&str], message: &[u8]) -> std::process::Output {
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Messages in the hold queue (quarantined by a milter).
    pub fn held(&self) -> usize {
        count_files(&self.dir.join("q").join("hold"))
    }

    /// Queue entries still waiting (deferred or incoming), from the queue directories.
    /// The delivered messages once there are `n` and nothing is left in the queues: a copy
    /// sent twice, or a report, would have arrived by then.
    pub fn settled_messages(&self, n: usize) -> Vec<Vec<u8>> {
        self.wait_messages(n);
        self.wait_queue_empty();
        self.wait_messages(n)
    }

    /// Waits (up to a minute) until Postfix's queues are empty: everything it took is
    /// delivered or bounced. A message is in the Maildir before qmgr removes its queue file,
    /// so a test that counts the Maildir must wait for this before it counts for good.
    pub fn wait_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.queued() > 0 {
            assert!(
                Instant::now() < deadline,
                "still queued; log:\n{}",
                self.log()
            );
            // Postfix gives no event for this either; the queue directories are polled.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn queued(&self) -> usize {
        ["incoming", "active", "deferred", "maildrop", "hold"]
            .iter()
            .map(|q| count_files(&self.dir.join("q").join(q)))
            .sum()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir)
            .arg("abort")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown(path: &Path, owner: &str) {
    let ok = Command::new("chown")
        .arg(owner)
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {owner} {}", path.display());
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
/// The reply of the SMTP server on `port` to RCPT TO:<recipient> (after EHLO and MAIL FROM:<>).
fn rcpt_reply(port: u16, recipient: &str) -> String {
    smtp_replies(port, &["MAIL FROM:<>", &format!("RCPT TO:<{recipient}>")]).remove(2)
}

/// The whole reply of the SMTP server on `port` to EHLO.
fn ehlo_reply(port: u16) -> String {
    smtp_replies(port, &[]).remove(0)
}

/// The replies of the SMTP server on `port` to EHLO and then each of `commands` (each reply
/// whole, its lines joined by newlines); QUIT ends the session.
fn smtp_replies(port: u16, commands: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || {
        let mut whole = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            whole.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return whole.trim_end().to_string();
            }
        }
    };
    reply();
    let mut replies = Vec::new();
    for command in ["EHLO probe.sealpost.test"].iter().chain(commands) {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        replies.push(reply());
    }
    writer.write_all(b"QUIT\r\n").unwrap();
    replies
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
