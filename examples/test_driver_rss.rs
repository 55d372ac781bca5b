//! What the simulated hosts of the scale benchmark cost on their own: opens every libvirt
//! `test:///` host file in DIR (as kept by `FERRY_SCALE_KEEP_HOST_FILES`) in this otherwise idle
//! process and prints its RSS. libvirt's test driver lives in the process that opens it, so the
//! scale benchmark's controller RSS includes this; a real deployment does not.
//!
//! `cargo run --release --example test_driver_rss -- DIR [--threads]` (`--threads`: each
//! connection opened on a thread of its own and kept there, as ferry does).

use std::process::ExitCode;
use virt::connect::Connect;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open(path: &std::path::Path) -> Result<(Connect, usize), String> {
    let uri = format!("test://{}", path.display());
    let conn = Connect::open(Some(&uri)).map_err(|e| format!("{uri}: {e}"))?;
    let domains = conn
        .list_all_domains(0)
        .map_err(|e| format!("{uri}: {e}"))?
        .len();
    Ok((conn, domains))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: test_driver_rss DIR [--threads]");
        return ExitCode::FAILURE;
    };
    let threads = args.next().as_deref() == Some("--threads");
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("{dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    files.sort();
    let before = rss_kib();
    let (counts, measured) = if threads {
        // Threads that stay alive, each holding its connection, until the measurement is taken.
        let (tx, rx) = std::sync::mpsc::channel();
        let done = std::sync::Arc::new(std::sync::Barrier::new(files.len() + 1));
        let handles: Vec<_> = files
            .iter()
            .cloned()
            .map(|f| {
                let (tx, done) = (tx.clone(), done.clone());
                std::thread::spawn(move || {
                    let opened = open(&f);
                    let _ = tx.send(opened.as_ref().map(|(_, n)| *n).map_err(Clone::clone));
                    done.wait();
                    drop(opened);
                })
            })
            .collect();
        let counts: Result<Vec<usize>, String> = rx.iter().take(files.len()).collect();
        let measured = rss_kib();
        done.wait();
        for h in handles {
            let _ = h.join();
        }
        (counts, measured)
    } else {
        let opened: Result<Vec<(Connect, usize)>, String> = files.iter().map(|f| open(f)).collect();
        let measured = rss_kib();
        (
            opened.map(|v| v.into_iter().map(|(_, n)| n).collect()),
            measured,
        )
    };
    match counts {
        Ok(c) => {
            println!(
                "{} host files, {} domains: RSS {} MiB ({} MiB before opening)",
                files.len(),
                c.iter().sum::<usize>(),
                measured / 1024,
                before / 1024
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
