//! Any text frame a client can send: parsing never panics, and what it accepts holds the
//! rules the rest of the server relies on (no NUL in content, rooms and recipients valid).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::chat::command::Command;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Command::parse(text) {
        Ok(Command::Post(post)) => {
            assert!(!post.content.contains('\0'));
            assert!(!post.room.as_str().is_empty());
        }
        Ok(Command::Private { to, content, .. }) => {
            assert!(!to.is_empty() && !to.chars().any(char::is_control));
            assert!(!content.contains('\0'));
        }
        Ok(_) | Err(_) => {}
    }
});
