//! Certificate import files (PEM, DER, PKCS#12) as `cert import` reads
//! them: a precise error or certificates and keys, never a panic. The
//! first byte chooses between no password, an empty one and "fuzz".
#![no_main]
use gatehouse::certs::parse_import_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [choice, file @ ..] = data else {
        return;
    };
    let password = match choice % 3 {
        0 => None,
        1 => Some(""),
        _ => Some("fuzz"),
    };
    let _ = parse_import_file(file, password);
});
