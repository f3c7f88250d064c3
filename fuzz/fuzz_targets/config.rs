//! The configuration file parser and its checks on arbitrary text, as
//! `starling` reads a config file: TOML into `Config`, then `--set`-style
//! `KEY=VALUE` overrides (the same path as the `STARLING_*` variables), then
//! `Config::validate`. No panic; a config that parses is written back
//! (`to_toml`, what `starling config --print` shows) and reads back equal.
//!
//! The input is the TOML text, then optionally a line `%%` and one override
//! per line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::config::{self, Config};
use starling_fuzz::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, settings) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let Ok(config) = toml::from_str::<Config>(file) else {
        return;
    };
    round_trip(&config);
    let _ = config.validate();
    let settings: Vec<String> = settings.lines().map(str::to_owned).collect();
    if let Ok(config) = config::apply_settings(config, &settings) {
        round_trip(&config);
        let _ = config.validate();
    }
});

fn round_trip(config: &Config) {
    let Ok(text) = config.to_toml() else {
        return;
    };
    let again: Config = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("written as {text:?}, which does not read back: {e}"));
    assert_eq!(&again, config, "read back from {text:?}");
}
