//! Hanging a server the way a real outage hangs it: `SIGSTOP` keeps its
//! sockets open and its kernel accepting connections, but nothing answers —
//! the case a timeout exists for, unlike a stopped server, which refuses at
//! once. `SIGCONT` lets it answer again (everything sent meanwhile included).

use std::process::Command;

/// The pids of `root` and every process below it, read from `/proc`.
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid …"; comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The command name of a process (`/proc/PID/comm`).
pub(crate) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Sends `signal` (`STOP`, `CONT`) to each pid. The first must get it; a
/// child may have exited meanwhile.
pub(crate) fn signal_all(signal: &str, pids: &[u32]) {
    let Some(first) = pids.first() else {
        panic!("no process to send SIG{signal} to");
    };
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(first.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {first} failed");
    if pids.len() > 1 {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids[1..].iter().map(u32::to_string))
            .stderr(std::process::Stdio::null())
            .status();
    }
}
