//! A private Postfix instance for the milter benchmark, with the settings of
//! tests/common/postfix.rs (which needs the test crate's helpers, so it is not included here):
//! `postfix -c DIR start` with its own main.cf/master.cf and queue under DIR, smtpd on a free
//! 127.0.0.1 port (with the milter, or without any for the plain-Postfix baseline), a second
//! smtpd without milters (the milter's re-injection listener), and catch-all virtual delivery
//! into one Maildir. Needs root (Postfix's master runs as root).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    pub dir: PathBuf,
    pub smtp_port: u16,
    pub reinject_port: u16,
}

impl Postfix {
    /// Starts an instance whose smtpd uses the milter on `milter_port`, or no milter at all.
    pub fn start(milter_port: Option<u16>) -> Postfix {
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
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&p.dir.join("d"), "postfix:postfix");
        chown(&p.dir.join("mail"), "65534:65534");
        let milters = milter_port.map_or(String::new(), |m| format!("inet:127.0.0.1:{m}"));
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
                 smtpd_milters = {milters}\nnon_smtpd_milters = {milters}\n\
                 milter_default_action = tempfail\n\
                 queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"
            ),
        )
        .unwrap();
        std::fs::write(
            p.dir.join("master.cf"),
            format!(
                "127.0.0.1:{s} inet n - n - - smtpd\n\
                 127.0.0.1:{r} inet n - n - - smtpd -o smtpd_milters= -o non_smtpd_milters=\n\
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
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&p.dir)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "postfix start: {out:?}\n{}", p.log());
        wait_for_port(p.smtp_port);
        wait_for_port(p.reinject_port);
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The master process, from its pid file.
    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("q/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.join("mail/box/new")
    }

    /// Queue entries still waiting (incoming, active, deferred, hold), from the queue
    /// directories.
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
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
