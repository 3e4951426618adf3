//! Fuzzes configuration loading: YAML into `Config`, `Config::validate`, and
//! compiling `resources` and `match-claims` into a `RuleSet`, as the gateway
//! does at start-up. A bad config must be an error, never a panic.
//!
//! Input: a YAML document. `api-keys.server-secret-file` is cleared before
//! validating so that the fuzzer cannot make the target read files (such as
//! `/dev/zero`, which would never end).

#![no_main]

use keygate_core::config::Config;
use keygate_core::rules::{RuleOptions, RuleSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = serde_yaml_ng::from_str::<Config>(text) else {
        return;
    };
    config.api_keys.server_secret_file = None;

    // Printing the config (as `check-config` does) never fails or panics.
    let _ = serde_yaml_ng::to_string(&config);

    let valid = config.validate().is_ok();
    if valid {
        // Validation fills defaults; doing it again changes nothing.
        let before = serde_yaml_ng::to_string(&config).ok();
        assert!(config.validate().is_ok(), "validate is not idempotent");
        assert_eq!(serde_yaml_ng::to_string(&config).ok(), before);
    }

    let options = RuleOptions {
        default_deny: config.enable_default_deny,
        case_insensitive: config.case_insensitive_paths,
    };
    if let Ok(rules) = RuleSet::new(&config.resources, &config.match_claims, options) {
        // Every rule's own uri (a normalized path, `*` stripped) routes.
        for resource in &config.resources {
            let path = resource.uri.replace('*', "x");
            let _ = rules.route("GET", &path);
        }
    }
});
