//! The NoCloud seed image checked by independent readers from Debian: `isoinfo` (genisoimage),
//! `xorriso` and `blkid` (util-linux). scripts/setup.sh installs them.

use ferry::cloud_init::{SeedData, build_seed, iso9660};
use std::path::Path;
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable (scripts/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_image(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("seed.iso");
    std::fs::write(&path, bytes).expect("write image");
    path.to_string_lossy().into_owned()
}

#[test]
fn seed_has_the_cidata_label_and_exactly_the_nocloud_files() {
    let user = b"#cloud-config\nruncmd:\n  - echo hello > /run/ferry-marker\n".to_vec();
    let network = b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec();
    let seed = build_seed(&SeedData {
        instance_id: "0b8e-uid".into(),
        user_data: Some(user.clone()),
        network_data: Some(network.clone()),
        hostname: Some("web-1".into()),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nza test@ferry".into()],
        ..SeedData::default()
    })
    .expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = write_image(dir.path(), &seed.image);

    // isoinfo: descriptors, label, Joliet, file list and contents.
    let desc = run("isoinfo", &["-d", "-i", &iso]);
    assert!(desc.contains("Volume id: cidata"), "{desc}");
    assert!(desc.contains("Joliet with UCS level 3 found"), "{desc}");
    assert!(desc.contains("Logical block size is: 2048"), "{desc}");
    let list = run("isoinfo", &["-J", "-f", "-i", &iso]);
    let mut names: Vec<&str> = list.lines().collect();
    names.sort();
    assert_eq!(names, ["/meta-data", "/network-config", "/user-data"]);
    let read = |name: &str| run("isoinfo", &["-J", "-x", name, "-i", &iso]).into_bytes();
    assert_eq!(read("/user-data"), user);
    assert_eq!(read("/network-config"), network);
    let meta: serde_yaml::Value = serde_yaml::from_slice(&read("/meta-data")).expect("yaml");
    assert_eq!(meta["instance-id"], "0b8e-uid");
    assert_eq!(meta["local-hostname"], "web-1");
    assert_eq!(meta["public-keys"][0], "ssh-ed25519 AAAAC3Nza test@ferry");
    // The primary (non-Joliet) tree carries upper-case level-2 names for old readers.
    let plain = run("isoinfo", &["-f", "-i", &iso]);
    assert!(plain.contains("/USER_DATA.;1"), "{plain}");

    // xorriso: loads the image without complaint and sees the same files with their sizes.
    let x = Command::new("xorriso")
        .args([
            "-abort_on",
            "WARNING",
            "-indev",
            &iso,
            "-find",
            "/",
            "-exec",
            "lsdl",
        ])
        .output()
        .expect("xorriso (scripts/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&x.stderr);
    assert!(x.status.success(), "xorriso: {stderr}");
    let out = String::from_utf8_lossy(&x.stdout);
    assert!(stderr.contains("Volume id    : 'cidata'"), "{stderr}");
    for (name, len) in [
        ("/user-data", user.len()),
        ("/network-config", network.len()),
    ] {
        let line = out
            .lines()
            .find(|l| l.ends_with(&format!("'{name}'")))
            .unwrap_or_else(|| panic!("{name} missing from xorriso listing: {out}"));
        assert!(line.contains(&format!(" {len} ")), "{line}");
    }

    // blkid (what cloud-init and udev use to find the seed): an iso9660 filesystem labelled cidata.
    let probe = run("blkid", &["-p", "-o", "export", &iso]);
    assert!(probe.contains("TYPE=iso9660"), "{probe}");
    assert!(probe.contains("LABEL=cidata"), "{probe}");
}

#[test]
fn directories_spanning_sectors_read_back_in_full() {
    let names: Vec<String> = (0..120).map(|i| format!("f-{i:03}")).collect();
    let bodies: Vec<Vec<u8>> = (0..120)
        .map(|i| vec![b'a' + (i % 26) as u8; i * 37])
        .collect();
    let files: Vec<iso9660::IsoFile> = names
        .iter()
        .zip(&bodies)
        .map(|(n, d)| iso9660::IsoFile { name: n, data: d })
        .collect();
    let image = iso9660::build("cidata", &files).expect("image");
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = write_image(dir.path(), &image);
    let list = run("isoinfo", &["-J", "-f", "-i", &iso]);
    assert_eq!(list.lines().count(), 120, "{list}");
    for i in [0usize, 1, 63, 119] {
        let got = run(
            "isoinfo",
            &["-J", "-x", &format!("/{}", names[i]), "-i", &iso],
        )
        .into_bytes();
        assert_eq!(got, bodies[i], "{}", names[i]);
    }
}
