//! The IMAP server's reading of a stored message (ENVELOPE, BODYSTRUCTURE, the part map) and
//! its sections: no panic on any input, and the part map reads back as it was written.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealpost::imap::section::{partial, section, SectionText};
use sealpost::imap::summary::{summarize, PartMap};

fuzz_target!(|data: &[u8]| {
    let summary = summarize(data);
    let bytes = summary.parts.to_bytes();
    let parts = PartMap::from_bytes(&bytes).expect("a part map reads back");
    assert_eq!(parts.to_bytes(), bytes);
    let whats = [
        SectionText::Full,
        SectionText::Header,
        SectionText::Text,
        SectionText::Mime,
        SectionText::HeaderFields {
            names: vec![b"from".to_vec(), b"Subject".to_vec()],
            not: false,
        },
        SectionText::HeaderFields {
            names: vec![b"to".to_vec()],
            not: true,
        },
    ];
    let paths: [&[u32]; 9] = [
        &[],
        &[1],
        &[2],
        &[3],
        &[1, 1],
        &[1, 2],
        &[2, 1],
        &[1, 1, 1],
        &[2, 2, 2],
    ];
    for path in paths {
        for what in &whats {
            if let Some(bytes) = section(data, &parts, path, what) {
                let _ = partial(&bytes, 3, Some(5));
            }
        }
    }
    let _ = PartMap::from_bytes(data);
});
