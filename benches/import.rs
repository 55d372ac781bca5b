//! Benchmark: importing an image over HTTP into a libvirt storage pool with ferry's importer
//! (streamed download, SHA-256 on the way, `virStorageVolUpload`) against the plain way, `curl`
//! to a file and `virsh vol-upload`, for the same file in the same run.
//!
//! With `FERRY_BENCH_IMPORT_FORMAT=vmdk` the served file is that data as a monolithicSparse VMDK
//! (made with `qemu-img convert`), imported by ferry with `format: vmdk` (download, then libvirt's
//! conversion to qcow2 on the host), against `curl` to a file plus `qemu-img convert -O qcow2`.
//!
//! Needs root (a lab host). Run: `cargo bench --bench import` (`FERRY_BENCH_IMPORT_MIB` sets the
//! image size, default 1024). Results go to BENCHMARKS.md by hand.

#[path = "../tests/support/http_server.rs"]
mod http_server;
#[path = "../tests/support/lab.rs"]
mod lab;

use ferry::controller::image_import::{self, ImportKey, ImportState};
use ferry::hypervisor::{ConnectOptions, Hypervisor, LibvirtHost};
use http_server::PythonServer;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

const POOL: &str = "bench";

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::main]
async fn main() {
    if !lab::Lab::should_run("import benchmark") {
        return;
    }
    let mib: u64 = std::env::var("FERRY_BENCH_IMPORT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let lab = lab::Lab::up(1).expect("lab host");
    let served = tempfile::tempdir().expect("tempdir");
    let file = served.path().join("image.raw");
    // Data that does not compress, written once; its SHA-256 computed as it is written.
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&block);
            f.write_all(&block).expect("write");
        }
    }
    let mut sha = ferry::cloud_init::hex(hasher.finish().as_ref());
    let vmdk = std::env::var("FERRY_BENCH_IMPORT_FORMAT").as_deref() == Ok("vmdk");
    let served_name = if vmdk { "image.vmdk" } else { "image.raw" };
    if vmdk {
        let out = served.path().join(served_name);
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                &file.to_string_lossy(),
                &out.to_string_lossy(),
            ],
        );
        std::fs::remove_file(&file).expect("remove the raw file");
        sha = ferry::cloud_init::sha256_hex(&std::fs::read(&out).expect("vmdk"));
    }
    let format = if vmdk {
        ferry::api::virtual_machine::SourceFormat::Vmdk
    } else {
        ferry::api::virtual_machine::SourceFormat::Raw
    };
    let server = PythonServer::serving(served.path());
    let url = server.url(served_name);
    let uri = lab.hosts[0].unix_uri.clone();
    let pool_dir = lab.pool_dir.join("bench");
    std::fs::create_dir_all(&pool_dir).expect("pool dir");
    let hv = LibvirtHost::connect(&uri, ConnectOptions::default())
        .await
        .expect("connect");
    hv.ensure_pool(POOL, Some(&pool_dir.to_string_lossy()))
        .await
        .expect("pool");

    // ferry's importer, allowed to fetch from loopback as a pool would allow it.
    let key = ImportKey::new(&uri, &pool_dir.to_string_lossy(), false, &sha, format);
    let spec: ferry::api::HostPoolSpec = serde_json::from_value(serde_json::json!({
        "nodeSelector": {}, "libvirt": {"uriTemplate": uri}, "storage": {"pool": POOL},
        "imports": {"allowedNetworks": ["127.0.0.0/8"]}
    }))
    .expect("pool spec");
    let policy =
        ferry::plan::import_policy::Policy::of("bench", &spec, &[], Vec::new()).expect("policy");
    let request = image_import::Request {
        uri: uri.clone(),
        pool: POOL.into(),
        url: url.clone(),
        format,
        policy,
        opts: ConnectOptions::default(),
    };
    let t = Instant::now();
    let hosts = ferry::hypervisor::HostConnections::default();
    let imports = image_import::Imports::default();
    let source = image_import::source("bench", "bench", &url);
    imports.start(&hosts, key.clone(), &source, request);
    loop {
        match imports.state(&key, &source, Instant::now()) {
            Some(ImportState::Done) => break,
            Some(ImportState::Failed { message, .. }) => panic!("import failed: {message}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let ferry_s = t.elapsed().as_secs_f64();
    let vol = imports
        .lookup(hv.as_ref(), POOL, &key)
        .await
        .expect("lookup")
        .expect("imported");
    if !vmdk {
        assert_eq!(
            std::fs::metadata(&vol.path).expect("image").len(),
            mib << 20
        );
    } else {
        assert_eq!(
            vol.capacity,
            mib << 20,
            "the converted image's virtual size"
        );
    }

    // curl + virsh vol-upload, or curl + qemu-img convert for a VMDK.
    let tmp = served.path().join("downloaded");
    let t = Instant::now();
    run("curl", &["-sSf", "-o", &tmp.to_string_lossy(), &url]);
    if vmdk {
        let out = pool_dir.join("plain.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "vmdk",
                "-O",
                "qcow2",
                &tmp.to_string_lossy(),
                &out.to_string_lossy(),
            ],
        );
        let plain_s = t.elapsed().as_secs_f64();
        let rate = |s: f64| mib as f64 / s;
        println!(
            "image: {mib} MiB of incompressible data as a monolithicSparse VMDK, served from 127.0.0.1, lab host pool on local disk"
        );
        println!(
            "ferry import (download + sha256 + upload + libvirt's qemu-img convert to qcow2): {ferry_s:.1} s, {:.0} MiB/s",
            rate(ferry_s)
        );
        println!(
            "curl + qemu-img convert -O qcow2:                                            {plain_s:.1} s, {:.0} MiB/s",
            rate(plain_s)
        );
        println!("ferry / plain throughput: {:.2}", plain_s / ferry_s);
        let _ = std::fs::remove_file(&out);
        let _ = hv.delete_volume(POOL, &vol.name).await;
        let _ = hv.delete_volume(POOL, &key.marker_name()).await;
        hv.close().await;
        drop(server);
        return;
    }
    run(
        "virsh",
        &[
            "-q",
            "-c",
            &uri,
            "vol-create-as",
            POOL,
            "plain.raw",
            &format!("{mib}M"),
            "--format",
            "raw",
        ],
    );
    run(
        "virsh",
        &[
            "-q",
            "-c",
            &uri,
            "vol-upload",
            "--pool",
            POOL,
            "plain.raw",
            &tmp.to_string_lossy(),
        ],
    );
    let plain_s = t.elapsed().as_secs_f64();

    let rate = |s: f64| mib as f64 / s;
    println!("image: {mib} MiB, served from 127.0.0.1, lab host pool on local disk");
    println!(
        "ferry import (download + sha256 + virStorageVolUpload): {ferry_s:.1} s, {:.0} MiB/s",
        rate(ferry_s)
    );
    println!(
        "curl + virsh vol-upload:                              {plain_s:.1} s, {:.0} MiB/s",
        rate(plain_s)
    );
    println!("ferry / plain throughput: {:.2}", plain_s / ferry_s);

    let _ = hv.delete_volume(POOL, &vol.name).await;
    let _ = hv.delete_volume(POOL, &key.marker_name()).await;
    let _ = hv.delete_volume(POOL, "plain.raw").await;
    hv.close().await;
    drop(server);
}
