//! Any configuration file: an error list with positions, never a panic.
#![no_main]
use gatehouse::config::{Config, ConfigSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = ConfigSource {
        name: "fuzz.toml".into(),
        text: text.into(),
    };
    if let Err(errors) = Config::from_source(&source) {
        // Rendering (line, column, caret) must cope with any span.
        let _ = errors.to_string();
    }
});
