//! GPGME behind a bounded worker pool. A gpgme `Context` is not `Send`, so each worker thread
//! owns one for its whole life; async callers send closures over a bounded queue and wait with
//! a deadline. A job whose deadline passed before a worker picked it up is dropped unrun.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpgme::{Context, Key, PinentryMode, Protocol};
use tokio::sync::{mpsc, oneshot};

use super::KeyError;

type Job = Box<dyn FnOnce(Result<&mut Gpg, &gpgme::Error>) + Send>;

/// What one worker thread owns: its GPGME context and the key objects it has loaded.
/// Loading a key is a gpg process of its own, as long as the operation that needs it, so
/// keys are kept until the keyring changes (the generation moves on).
pub struct Gpg {
    pub ctx: Context,
    keys: HashMap<(String, bool), Key>,
    generation: u64,
}

impl Gpg {
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
}

/// How each worker's context is set up.
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
}

/// A handle on the pool; cheap to clone. Workers stop when the last handle is dropped.
#[derive(Clone)]
pub struct GpgWorker {
    tx: mpsc::Sender<(Instant, Job)>,
    deadline: Duration,
    generation: Arc<AtomicU64>,
}

impl GpgWorker {
    pub fn start(settings: WorkerSettings) -> Self {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>(settings.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..settings.threads.max(1) {
            let rx = Arc::clone(&rx);
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("gpg-{n}"))
                .spawn(move || {
                    let mut gpg = new_context(&settings).map(|ctx| Gpg {
                        ctx,
                        keys: HashMap::new(),
                        generation: 0,
                    });
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = match rx.lock() {
                            Ok(mut guard) => guard.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some((due, job)) = next else { break };
                        if Instant::now() >= due {
                            continue;
                        }
                        job(gpg.as_mut().map_err(|e| &*e));
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

    /// Runs `f` on a worker's context within the deadline. `what` names the operation in
    /// errors.
    pub async fn run<T, F>(&self, what: &'static str, f: F) -> Result<T, KeyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Gpg) -> Result<T, KeyError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let generation = self.generation.load(Ordering::SeqCst);
        let due = Instant::now() + self.deadline;
        let job: Job = Box::new(move |gpg| {
            let result = match gpg {
                Ok(gpg) => {
                    if gpg.generation != generation {
                        gpg.keys.clear();
                        gpg.generation = generation;
                    }
                    f(gpg)
                }
                Err(e) => Err(KeyError::Gpg {
                    op: "setting up GnuPG",
                    source: *e,
                }),
            };
            let _ = reply_tx.send(result);
        });
        let work = async {
            self.tx
                .send((due, job))
                .await
                .map_err(|_| KeyError::WorkerGone)?;
            reply_rx.await.map_err(|_| KeyError::WorkerGone)?
        };
        match tokio::time::timeout(self.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(KeyError::Deadline {
                op: what,
                after: self.deadline,
            }),
        }
    }
}

fn new_context(settings: &WorkerSettings) -> Result<Context, gpgme::Error> {
    let mut ctx = Context::from_protocol(Protocol::OpenPgp)?;
    if let Some(home) = &settings.home {
        ctx.set_engine_home_dir(home.to_string_lossy().as_bytes())?;
    }
    // A daemon never waits for a person: loopback mode without a passphrase callback makes a
    // protected key fail at once instead of popping up a pinentry.
    ctx.set_pinentry_mode(PinentryMode::Loopback)?;
    ctx.set_armor(true);
    ctx.set_flag("auto-key-locate", settings.auto_key_locate.as_str())?;
    Ok(ctx)
}
