//! Headless Chromium through Playwright: the scripts under `dev/browser`.

use crate::repo_root;
use std::path::Path;

/// Where Debian installs Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A `node` command that runs `dev/browser/<script>`, which drives Debian's
/// Chromium with Playwright; the caller adds the script's arguments and stdio.
/// Screenshots go to `shots`, or to `$KEYGATE_SCREENSHOTS` (relative to the
/// repository) when set. The browser is killed when the child is dropped.
/// Fails the test, never skips it, when Chromium or Playwright is missing.
pub fn chromium_script(script: &str, shots: &Path) -> tokio::process::Command {
    let root = repo_root();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./dev/test.sh (it installs Debian's chromium)"
    );
    assert!(
        root.join("dev/browser/node_modules/playwright-core")
            .exists(),
        "dev/browser has no node_modules: run ./dev/test.sh (it runs `npm ci --prefix dev/browser`)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root.join("dev/browser").join(script))
        .arg("--shots")
        .arg(
            std::env::var_os("KEYGATE_SCREENSHOTS")
                .map(|d| root.join(d))
                .unwrap_or_else(|| shots.to_path_buf()),
        )
        .kill_on_drop(true);
    cmd
}
