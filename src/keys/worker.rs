//! GPGME behind a bounded worker pool. Async callers send a [`Request`] over a bounded queue
//! and wait with a deadline; a job whose deadline passed before a worker picked it up is
//! dropped unrun. Each worker is a thread that runs its jobs one of two ways:
//!
//! - **in a worker process** (what the `sealpost` binary uses): the thread owns a
//!   `sealpost gpg-worker` child, a small single-threaded process with its own GPGME context,
//!   and passes each job to it over a pipe. GPGME starts every gpg process with fork(); from
//!   a multi-threaded process of some megabytes that fork write-protects every page, and each
//!   page the other threads write afterwards costs a page fault and a TLB shootdown to the
//!   other cores. In the sync benchmark those faults were 57 % of the sync process's CPU time
//!   (`perf record`). The child forks cheaply (one thread, little memory). It is also a
//!   boundary: a job past its deadline kills the child's process group (the child and the
//!   gpg it waits for) and the next job starts a fresh one, where a thread stuck in GPGME
//!   would stay stuck for good.
//! - **on the thread itself** (library users such as the tests, which have no worker
//!   executable): the thread owns a GPGME context. A `Context` is not `Send`, so it never
//!   leaves its thread.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpgme::{Context, Key, PinentryMode, Protocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::ops::{execute, Request, Response};
use super::KeyError;

/// What one worker owns: its GPGME context and the key objects it has loaded. Loading a key
/// is a gpg process of its own, as long as the operation that needs it, so keys are kept
/// until the keyring changes (the generation moves on).
pub struct Gpg {
    pub ctx: Context,
    /// The configured GnuPG home (None: GnuPG's default).
    pub home: Option<PathBuf>,
    keys: HashMap<(String, bool), Key>,
    /// Per key (fingerprint): whether its self-signatures all prefer AES-256, which a copy
    /// sharing an encryption with others needs (see `ops::encrypt_shared`).
    pub strong_ciphers: HashMap<String, bool>,
    generation: u64,
}

impl Gpg {
    fn new(home: Option<&std::path::Path>, auto_key_locate: &str) -> Result<Gpg, gpgme::Error> {
        let mut ctx = Context::from_protocol(Protocol::OpenPgp)?;
        if let Some(home) = home {
            ctx.set_engine_home_dir(home.to_string_lossy().as_bytes())?;
        }
        // A daemon never waits for a person: loopback mode without a passphrase callback
        // makes a protected key fail at once instead of popping up a pinentry.
        ctx.set_pinentry_mode(PinentryMode::Loopback)?;
        ctx.set_armor(true);
        ctx.set_flag("auto-key-locate", auto_key_locate)?;
        Ok(Gpg {
            ctx,
            home: home.map(std::path::Path::to_path_buf),
            keys: HashMap::new(),
            strong_ciphers: HashMap::new(),
            generation: 0,
        })
    }

    /// The key with this fingerprint (`secret`: its secret part must be present).
    pub fn key(&mut self, fingerprint: &str, secret: bool) -> Result<Key, gpgme::Error> {
        let id = (fingerprint.to_string(), secret);
        if let Some(k) = self.keys.get(&id) {
            return Ok(k.clone());
        }
        let key = if secret {
            self.ctx.get_secret_key(fingerprint)?
        } else {
            self.ctx.get_key(fingerprint)?
        };
        self.keys.insert(id, key.clone());
        Ok(key)
    }

    /// Runs a request; key objects loaded under an older keyring generation are dropped first.
    fn run(&mut self, generation: u64, request: Request) -> Result<Response, KeyError> {
        if self.generation != generation {
            self.keys.clear();
            self.strong_ciphers.clear();
            self.generation = generation;
        }
        execute(self, request)
    }
}

/// How the workers are set up.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// GnuPG home for every context (`None`: GnuPG's own default). Set per context, never via
    /// the process environment.
    pub home: Option<PathBuf>,
    /// Worker threads, so at most this many gpg operations run at once.
    pub threads: usize,
    /// Jobs that may wait for a worker; submitters wait (within their deadline) beyond that.
    pub queue: usize,
    /// Deadline for one operation, queueing included.
    pub deadline: Duration,
    /// Value for gpg's --auto-key-locate: "local" unless network sources are configured.
    pub auto_key_locate: String,
    /// The `sealpost` executable to run `gpg-worker` from; `None`: GPGME on the threads.
    pub executable: Option<PathBuf>,
}

struct Job {
    due: Instant,
    /// The time `due` allows, for errors.
    deadline: Duration,
    what: &'static str,
    generation: u64,
    request: Request,
    reply: oneshot::Sender<Result<Response, KeyError>>,
}

/// A handle on the pool; cheap to clone. Workers stop when the last handle is dropped.
#[derive(Clone)]
pub struct GpgWorker {
    tx: mpsc::Sender<Job>,
    deadline: Duration,
    generation: Arc<AtomicU64>,
}

impl GpgWorker {
    pub fn start(settings: WorkerSettings) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(settings.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..settings.threads.max(1) {
            let rx = Arc::clone(&rx);
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("gpg-{n}"))
                .spawn(move || {
                    let mut engine = Engine::new(&settings);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = match rx.lock() {
                            Ok(mut guard) => guard.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = next else { break };
                        if Instant::now() >= job.due {
                            // Dropped unrun; the caller hears of its deadline, not of a
                            // pool that stopped.
                            let _ = job.reply.send(Err(KeyError::Deadline {
                                op: job.what,
                                after: job.deadline,
                            }));
                            continue;
                        }
                        let Job { reply, .. } = job;
                        let result = engine.run(
                            job.what,
                            job.generation,
                            job.request,
                            (job.due, job.deadline),
                        );
                        let _ = reply.send(result);
                    }
                })
                .expect("spawning a worker thread");
        }
        GpgWorker {
            tx,
            deadline: settings.deadline,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Forgets every key object the workers hold (the keyring changed).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The per-operation deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `request` on a worker within the deadline. `what` names the operation in errors.
    pub async fn call(&self, what: &'static str, request: Request) -> Result<Response, KeyError> {
        let (reply, reply_rx) = oneshot::channel();
        let deadline = self.deadline + request.size_allowance();
        let job = Job {
            due: Instant::now() + deadline,
            deadline,
            what,
            generation: self.generation.load(Ordering::SeqCst),
            request,
            reply,
        };
        let work = async {
            self.tx.send(job).await.map_err(|_| KeyError::WorkerGone)?;
            reply_rx.await.map_err(|_| KeyError::WorkerGone)?
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(KeyError::Deadline {
                op: what,
                after: deadline,
            }),
        }
    }
}

/// How one worker thread runs its jobs.
enum Engine {
    /// GPGME on this thread; None until a context could be set up.
    Thread {
        settings: WorkerSettings,
        gpg: Option<Gpg>,
    },
    /// `settings.executable` is set.
    Process {
        settings: WorkerSettings,
        /// Started at the first job, and again after one was killed or died.
        child: Option<WorkerProcess>,
    },
}

impl Engine {
    fn new(settings: &WorkerSettings) -> Engine {
        if settings.executable.is_some() {
            Engine::Process {
                settings: settings.clone(),
                child: None,
            }
        } else {
            Engine::Thread {
                settings: settings.clone(),
                gpg: None,
            }
        }
    }

    fn run(
        &mut self,
        what: &'static str,
        generation: u64,
        request: Request,
        (due, deadline): (Instant, Duration),
    ) -> Result<Response, KeyError> {
        match self {
            Engine::Thread { settings, gpg } => {
                let gpg = match gpg {
                    Some(gpg) => gpg,
                    None => gpg.insert(
                        Gpg::new(settings.home.as_deref(), &settings.auto_key_locate)
                            .map_err(setup_failed)?,
                    ),
                };
                gpg.run(generation, request)
            }
            Engine::Process { settings, child } => {
                // The message's bytes go as they are after the JSON ([`take_parts`]): a large
                // message is not held again as base64 and as JSON while GnuPG works.
                let mut request = request;
                let mut parts = take_parts(request.parts_mut());
                let frame = serde_json::to_vec(&Envelope {
                    generation,
                    request: &request,
                })
                .map_err(|e| unavailable(what, format!("cannot encode the request: {e}")))?;
                drop(request);
                // Every length checked before anything is written: one too large is this
                // request's fault, not the worker's (a failed write would replace it).
                let sizes = std::iter::once(frame.len()).chain(parts.iter().map(Vec::len));
                if let Some(e) = sizes.map(frame_header).find_map(Result::err) {
                    return Err(KeyError::Refused {
                        op: what,
                        detail: format!("too large for the GnuPG worker: {e}"),
                    });
                }
                // A child that died since its last job (killed with the service, say) fails
                // at the write, before it could read anything: a fresh one gets the request.
                let mut retried = false;
                loop {
                    let process = match child {
                        Some(p) => p,
                        None => child.insert(WorkerProcess::spawn(settings).map_err(|e| {
                            unavailable(what, format!("cannot start the GnuPG worker process: {e}"))
                        })?),
                    };
                    let answer = process.call(&frame, &parts, due);
                    let failure = match answer {
                        Ok(answer) => {
                            // Answered: the request's bytes are not sent again.
                            drop(std::mem::take(&mut parts));
                            // A worker that could not set GnuPG up ends after its answer: the
                            // next job starts a fresh one rather than writing into its pipe
                            // (review: the next recipient got "unexpected end of file"
                            // instead of the reason).
                            if matches!(&answer, Err(WireError::Unavailable { op, .. })
                                if op == "setting up GnuPG")
                            {
                                if let Some(p) = child.take() {
                                    p.kill();
                                }
                            }
                            return answer.map_err(|e| e.into_key_error(what));
                        }
                        Err(Failed::Nonsense(e)) => unavailable(
                            what,
                            format!("the GnuPG worker process answered nonsense: {e}"),
                        ),
                        Err(Failed::Write(e)) if !retried && e.kind() != ErrorKind::TimedOut => {
                            retried = true;
                            if let Some(p) = child.take() {
                                p.kill();
                            }
                            continue;
                        }
                        Err(Failed::Write(e) | Failed::Read(e))
                            if e.kind() == ErrorKind::TimedOut =>
                        {
                            KeyError::Deadline {
                                op: what,
                                after: deadline,
                            }
                        }
                        Err(Failed::Write(e) | Failed::Read(e)) => {
                            unavailable(what, format!("the GnuPG worker process failed: {e}"))
                        }
                    };
                    // Past its deadline, dead, or out of step: the child and the gpg it runs
                    // go; the next job starts a fresh one.
                    if let Some(p) = child.take() {
                        p.kill();
                    }
                    return Err(failure);
                }
            }
        }
    }
}

fn unavailable(op: &'static str, detail: String) -> KeyError {
    KeyError::Unavailable { op, detail }
}

fn setup_failed(e: gpgme::Error) -> KeyError {
    // GPGME finds no usable engine when gpg is not installed or not where gpgconf says.
    let hint = if e.code() == gpgme::Error::INV_ENGINE.code() {
        " (is GnuPG's gpg installed, and on the PATH?)"
    } else {
        ""
    };
    unavailable("setting up GnuPG", format!("{e}{hint}"))
}

/// A request on the wire, with the keyring generation it was made under.
#[derive(Serialize)]
struct Envelope<'a> {
    generation: u64,
    request: &'a Request,
}

#[derive(Deserialize)]
struct OwnedEnvelope {
    generation: u64,
    request: Request,
}

/// A [`KeyError`] on the wire. Operation names cross as text and are matched back to the
/// names the operations use; an unknown one becomes the job's own name.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    Gpg { op: String, code: u32 },
    Refused { op: String, detail: String },
    Unavailable { op: String, detail: String },
}

/// Every operation name [`super::ops`] and this module put into their errors.
const OPS: &[&str] = &[
    "setting up GnuPG",
    "locating a key",
    "looking up a public key",
    "looking up a signing key",
    "signing",
    "encrypting",
    "signing and encrypting",
    "exporting a key",
    "decrypting",
    "verifying",
    "generating a key",
];

impl WireError {
    fn from_key_error(e: KeyError) -> WireError {
        match e {
            KeyError::Gpg { op, source } => WireError::Gpg {
                op: op.to_string(),
                code: source.raw(),
            },
            KeyError::Refused { op, detail } => WireError::Refused {
                op: op.to_string(),
                detail,
            },
            KeyError::Unavailable { op, detail } => WireError::Unavailable {
                op: op.to_string(),
                detail,
            },
            // A worker process runs no deadline and no pool of its own.
            other @ (KeyError::Deadline { .. } | KeyError::WorkerGone) => WireError::Unavailable {
                op: String::new(),
                detail: other.to_string(),
            },
        }
    }

    fn into_key_error(self, what: &'static str) -> KeyError {
        let name = |op: &str| OPS.iter().copied().find(|o| *o == op).unwrap_or(what);
        match self {
            WireError::Gpg { op, code } => KeyError::Gpg {
                op: name(&op),
                source: gpgme::Error::new(code),
            },
            WireError::Refused { op, detail } => KeyError::Refused {
                op: name(&op),
                detail,
            },
            WireError::Unavailable { op, detail } => KeyError::Unavailable {
                op: name(&op),
                detail,
            },
        }
    }
}

/// A `sealpost gpg-worker` child: requests go to its stdin, answers come from its stdout,
/// each as pieces of a 4-byte little-endian length and bytes: its JSON, then its byte fields
/// (see [`take_parts`]).
struct WorkerProcess {
    child: Child,
    /// Non-blocking, so that a write has a deadline too. None once closed.
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

/// Where a call to a worker process failed: a failed write means the request was not read.
enum Failed {
    Write(std::io::Error),
    Read(std::io::Error),
    /// An answer that is no answer (a bug, or a worker out of step).
    Nonsense(String),
}

impl WorkerProcess {
    fn spawn(settings: &WorkerSettings) -> std::io::Result<Self> {
        let executable = settings
            .executable
            .as_deref()
            .ok_or_else(|| std::io::Error::other("no worker executable configured"))?;
        let mut command = Command::new(executable);
        // argv[0] "sealpost": the executable may be installed as /usr/sbin/sendmail, and that
        // name would select the sendmail command line.
        command.arg0("sealpost").arg("gpg-worker");
        if let Some(home) = &settings.home {
            // One word, so that a home starting with '-' is not taken for an option.
            let mut arg = std::ffi::OsString::from("--home=");
            arg.push(home);
            command.arg(arg);
        }
        command
            .arg(format!("--auto-key-locate={}", settings.auto_key_locate))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a kill reaches the gpg it waits for too (GPGME's
            // children stay in the group).
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{} gpg-worker: {e}", executable.display()),
            )
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        // SAFETY: fcntl on a descriptor this process owns.
        let nonblocking = unsafe {
            let fd = stdin.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        let mut process = WorkerProcess {
            child,
            stdin: Some(stdin),
            stdout,
        };
        if !nonblocking {
            let e = std::io::Error::last_os_error();
            process.stdin.take();
            let _ = process.child.kill();
            return Err(e);
        }
        Ok(process)
    }

    /// Sends one request (its JSON `frame`, then its `parts`) and waits for its answer, both
    /// until `due`.
    fn call(
        &mut self,
        frame: &[u8],
        parts: &[Vec<u8>],
        due: Instant,
    ) -> Result<Result<Response, WireError>, Failed> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(Failed::Write(ErrorKind::BrokenPipe.into()))?;
        for piece in std::iter::once(frame).chain(parts.iter().map(Vec::as_slice)) {
            let len = frame_header(piece.len()).map_err(Failed::Write)?;
            write_until(stdin, &len, due).map_err(Failed::Write)?;
            write_until(stdin, piece, due).map_err(Failed::Write)?;
        }
        let mut read_piece = || {
            let mut len = [0u8; 4];
            read_until(&mut self.stdout, &mut len, due)?;
            let mut piece = vec![0u8; frame_len(len)?];
            read_until(&mut self.stdout, &mut piece, due)?;
            Ok(piece)
        };
        let frame = read_piece().map_err(Failed::Read)?;
        let mut answer = serde_json::from_slice::<Result<Response, WireError>>(&frame)
            .map_err(|e| Failed::Nonsense(e.to_string()))?;
        if let Ok(response) = &mut answer {
            for part in response.parts_mut() {
                *part = read_piece().map_err(Failed::Read)?;
            }
        }
        Ok(answer)
    }

    fn kill(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: killpg has no memory effects; the group is the child's own.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A worker thread drops its child between jobs, when the child is waiting for the
        // next request: end of input ends it at once, and it is reaped (no zombie left in a
        // long-running daemon). After kill() this wait returns the status already reaped.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Largest piece accepted (see [`take_parts`]): a message to encrypt or decrypt, with room.
const MAX_FRAME: usize = 1 << 30;

fn frame_len(len: [u8; 4]) -> std::io::Result<usize> {
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {n} bytes"),
        ));
    }
    Ok(n)
}

fn frame_header(len: usize) -> std::io::Result<[u8; 4]> {
    u32::try_from(len)
        .ok()
        .filter(|n| *n as usize <= MAX_FRAME)
        .map(u32::to_le_bytes)
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "request too large"))
}

/// Waits until `fd` is ready for `events` or `due` passes (TimedOut).
fn wait_ready(fd: i32, events: i16, due: Instant) -> std::io::Result<()> {
    loop {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        let mut fds = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        if ready > 0 {
            // Readable, writable, or hung up / in error: the next read or write says which.
            return Ok(());
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Writes all of `data` to the (non-blocking) child's stdin, waiting at most until `due`.
fn write_until(to: &mut ChildStdin, data: &[u8], due: Instant) -> std::io::Result<()> {
    let mut written = 0;
    while written < data.len() {
        match to.write(&data[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_ready(to.as_raw_fd(), libc::POLLOUT, due)?
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` from the child's stdout, waiting at most until `due`.
fn read_until(from: &mut ChildStdout, buf: &mut [u8], due: Instant) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        wait_ready(from.as_raw_fd(), libc::POLLIN, due)?;
        match from.read(&mut buf[filled..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Does nothing: a caught signal is reset to its default at exec, so the gpg processes GPGME
/// starts are not affected (an ignored one would stay ignored there).
extern "C" fn ignore_signal(_: libc::c_int) {}

/// The parent is gone: this worker's process group goes, the gpg it waits for with it (review:
/// a `rewrite` that exited at its deadline left a gpg behind, one spinning at 94% CPU on a
/// locked TOFU database). GPGME's gpg processes are in the group; gpg-agent has a session of
/// its own.
extern "C" fn parent_gone(_: libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe; the group is this worker's own.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// `sealpost gpg-worker`: serves requests on stdin until it closes. Started by the pool,
/// not by people; it logs nothing (its errors travel back with the answers).
///
/// It ends when its parent does, not before: SIGTERM, SIGINT and SIGHUP are caught and
/// dropped (systemd signals the whole service; the daemon may still be finishing the mail in
/// hand, with these workers), and the parent's death kills it and the gpg it runs
/// (PR_SET_PDEATHSIG, [`parent_gone`]) even in the middle of an operation no deadline would
/// end any more.
pub fn serve_stdio(home: Option<PathBuf>, auto_key_locate: &str) -> ExitCode {
    // SAFETY: installing a handler that touches nothing; prctl and getppid have no memory
    // effects.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        let mut gone: libc::sigaction = std::mem::zeroed();
        gone.sa_sigaction = parent_gone as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGUSR1, &gone, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1, 0, 0, 0);
        // Started from /proc/self/exe, the process would be named "exe" in ps and top.
        libc::prctl(libc::PR_SET_NAME, c"sealpost-gpg".as_ptr(), 0, 0, 0);
        // The parent may have gone before the line above.
        if libc::getppid() == 1 {
            return ExitCode::FAILURE;
        }
    }
    let mut gpg = Gpg::new(home.as_deref(), auto_key_locate);
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::FAILURE,
        }
        let Ok(n) = frame_len(len) else {
            return ExitCode::FAILURE;
        };
        let mut frame = vec![0u8; n];
        if input.read_exact(&mut frame).is_err() {
            return ExitCode::FAILURE;
        }
        let Ok(mut envelope) = serde_json::from_slice::<OwnedEnvelope>(&frame) else {
            return ExitCode::FAILURE;
        };
        drop(frame);
        for part in envelope.request.parts_mut() {
            match read_piece(&mut input) {
                Ok(piece) => *part = piece,
                Err(_) => return ExitCode::FAILURE,
            }
        }
        let (result, broken) = match &mut gpg {
            Ok(gpg) => (gpg.run(envelope.generation, envelope.request), false),
            // Answered, then this worker ends: the next request gets a fresh one, which tries
            // again to set GnuPG up (gpg may have been missing for a moment, in an upgrade).
            Err(e) => (Err(setup_failed(*e)), true),
        };
        if result.is_err() {
            end_abandoned_gpg();
        }
        let mut result = result.map_err(WireError::from_key_error);
        let parts = match &mut result {
            Ok(response) => take_parts(response.parts_mut()),
            Err(_) => Vec::new(),
        };
        let answer = serde_json::to_vec(&result).expect("an answer encodes");
        let written = write_pieces(&mut output, &answer, &parts);
        if written.is_err() || broken {
            return ExitCode::FAILURE;
        }
    }
}

/// Ends the gpg an operation left running. GPGME stops reading from gpg when it abandons an
/// operation (the plaintext limit reached, an error), but does not end it: a compression
/// bomb's gpg went on decompressing for minutes after `deliver` had exited (review), and
/// again at every retry. This worker leads its own process group (spawned so), where GPGME's
/// gpg processes are too, and ignores SIGTERM; gpg-agent has a session of its own. The group
/// gets SIGTERM, and the answer waits (up to a second) until no gpg is left in it.
fn end_abandoned_gpg() {
    // SAFETY: getpgrp, getpid and kill have no memory effects.
    let group = unsafe {
        let group = libc::getpgrp();
        if group != libc::getpid() {
            // Not started as a worker process (a group of someone else's): nothing is sent.
            return;
        }
        libc::kill(0, libc::SIGTERM);
        group
    };
    let own = std::process::id();
    let others_in_group = || {
        std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&pid| pid != own)
                    .any(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                            // pid (comm) state ppid pgrp ...: comm may hold blanks.
                            let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                            let mut fields = fields.split_whitespace();
                            let state = fields.next();
                            let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
                            pgrp == Some(group) && state != Some("Z")
                        })
                    })
            })
            .unwrap_or(false)
    };
    let until = Instant::now() + Duration::from_secs(1);
    while others_in_group() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The message bytes of a request or an answer, moved out of it. On the worker's pipe each
/// piece is a 4-byte length (little-endian) and its bytes: first the JSON of the request or
/// answer, whose byte fields are then empty, then each of those fields' bytes in the order
/// `parts_mut` gives them, as they are (in base64 inside the JSON, a 22 MB message was held
/// twice more, as base64 and as JSON, on both sides of the pipe).
fn take_parts(fields: Vec<&mut Vec<u8>>) -> Vec<Vec<u8>> {
    fields.into_iter().map(std::mem::take).collect()
}

/// Writes the JSON `frame` and its `parts` (see [`take_parts`]).
fn write_pieces(out: &mut impl Write, frame: &[u8], parts: &[Vec<u8>]) -> std::io::Result<()> {
    for piece in std::iter::once(frame).chain(parts.iter().map(Vec::as_slice)) {
        out.write_all(&frame_header(piece.len())?)?;
        out.write_all(piece)?;
    }
    out.flush()
}

/// Reads one piece (see [`take_parts`]).
fn read_piece(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut piece = vec![0u8; frame_len(len)?];
    input.read_exact(&mut piece)?;
    Ok(piece)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer's byte fields go beside its JSON and come back in their places: copies
    /// that are none, empty or full keep which is which.
    #[test]
    fn byte_fields_cross_the_pipe_beside_the_json() {
        let copies = vec![None, Some(Vec::new()), Some(b"second \x00\xff".to_vec())];
        let mut answer: Result<Response, WireError> = Ok(Response::Copies(copies.clone()));
        let parts = match &mut answer {
            Ok(response) => take_parts(response.parts_mut()),
            Err(_) => unreachable!(),
        };
        let json = serde_json::to_vec(&answer).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"Ok":{"Copies":[null,"",""]}}"#,
            "the bytes are not in the JSON"
        );
        let mut wire = Vec::new();
        write_pieces(&mut wire, &json, &parts).unwrap();

        let mut input = &wire[..];
        let frame = read_piece(&mut input).unwrap();
        let mut back: Result<Response, WireError> = serde_json::from_slice(&frame).unwrap();
        if let Ok(response) = &mut back {
            for part in response.parts_mut() {
                *part = read_piece(&mut input).unwrap();
            }
        }
        assert!(input.is_empty(), "every piece read");
        match back {
            Ok(Response::Copies(back)) => assert_eq!(back, copies),
            other => panic!("{other:?}"),
        }
    }
}
