//! Incoming processing of a message (verdict fields removed, decryption and verification
//! tried, protected headers merged) with real GnuPG in the home FUZZ_GNUPGHOME names, and the
//! IMAP summary of what would be stored: no panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct World {
    runtime: tokio::runtime::Runtime,
    keys: sealpost::keys::KeyService,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let home = std::env::var_os("FUZZ_GNUPGHOME").expect("FUZZ_GNUPGHOME names a GnuPG home");
        let keys = runtime.block_on(async {
            sealpost::keys::KeyService::start(
                Some(home.into()),
                1,
                std::time::Duration::from_secs(20),
                Default::default(),
            )
        });
        World { runtime, keys }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = sealpost::inbound::is_whole_ciphertext(data);
    let stripped = sealpost::inbound::without_verdict(data);
    let w = world();
    if let Ok(processed) = w
        .runtime
        .block_on(sealpost::inbound::process(&w.keys, &stripped))
    {
        let _ = processed.verdict.field_value();
        let _ = sealpost::imap::summary::summarize(&processed.message);
    }
});
