//! The TOML configuration: any text gives a config or an error naming where, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent-irisd-fuzz/irisd.toml");
    if let Err(e) = irisd::config::Config::from_toml(path, text) {
        assert!(e.to_string().contains("irisd.toml"), "{e}");
    }
});
