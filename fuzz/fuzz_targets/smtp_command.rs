//! Every SMTP command line a client can send: the command parser and the
//! path parser must answer with a command or a reply, never panic.
#![no_main]
use gatehouse::smtp::address::{parse_mailbox, parse_path};
use gatehouse::smtp::inbound::command::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        let _ = parse(line, utf8);
        let _ = parse_path(line, utf8);
        let _ = parse_mailbox(line, utf8);
    }
});
