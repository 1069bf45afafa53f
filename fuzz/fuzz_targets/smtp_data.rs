//! The DATA receiver, differentially: the outcome (end found or not, bytes
//! consumed, body, size, violation) must not depend on how the network cut
//! the stream into reads. The first input byte picks the cut points, the
//! second the size limit.
#![no_main]
use gatehouse::smtp::inbound::data::{DataReceiver, LineEndingCheck};
use libfuzzer_sys::fuzz_target;

fn run(input: &[u8], max: u64, step: usize) -> (bool, usize, u64, bool, String, Vec<u8>) {
    let mut rx = DataReceiver::new(max);
    let mut consumed = 0;
    for chunk in input.chunks(step.max(1)) {
        if rx.is_done() {
            break;
        }
        let n = rx.feed(chunk);
        assert!(n <= chunk.len(), "consumed more than given");
        consumed += n;
        if n < chunk.len() {
            assert!(rx.is_done(), "stopped consuming before end of data");
            break;
        }
    }
    let done = rx.is_done();
    let size = rx.size();
    let oversized = rx.oversized();
    let violation = format!("{:?}", rx.violation());
    let mut body = rx.into_body();
    assert!(body.len() as u64 <= max, "stored more than the limit");
    if oversized {
        // The session refuses an oversized message (552 5.3.4) and drops
        // what was stored; only the size and the outcome matter then.
        body.clear();
    } else {
        assert_eq!(body.len() as u64, size, "size and stored body disagree");
    }
    (done, consumed, size, oversized, violation, body)
}

fuzz_target!(|data: &[u8]| {
    let [cut, limit, input @ ..] = data else {
        return;
    };
    let max = u64::from(*limit) * 16;
    let whole = run(input, max, input.len());
    let pieces = run(input, max, usize::from(*cut % 17) + 1);
    assert_eq!(whole, pieces, "outcome depends on read boundaries");

    // BDAT's line-ending check, same property.
    let mut a = LineEndingCheck::new();
    a.scan(input);
    let mut b = LineEndingCheck::new();
    for c in input.chunks(usize::from(*cut % 5) + 1) {
        b.scan(c);
    }
    assert_eq!(format!("{:?}", a.finish()), format!("{:?}", b.finish()));
});
