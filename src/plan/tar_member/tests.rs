//! Archives built here the way GNU tar, bsdtar and pax-writing tools lay them out, fed to the
//! walk in pieces of every size.

use super::*;

/// A header block for `name` (put in ustar's prefix and name fields when longer than 100
/// bytes and `prefix` is asked for), of `size` bytes and type `flag`.
fn header(name: &str, size: u64, flag: u8, gnu: bool) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    let (prefix, name) = match name.len() > 100 && !gnu {
        true => {
            let cut = name[..name.len() - 1].rfind('/').expect("a / to split at");
            (&name[..cut], &name[cut + 1..])
        }
        false => ("", name),
    };
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[156] = flag;
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    }
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    d.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    d
}

/// An entry: header and padded data.
fn entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut e = header(name, data.len() as u64, b'0', false);
    e.extend(padded(data));
    e
}

/// An entry whose long name comes first as a GNU `././@LongLink`.
fn gnu_long(name: &str, data: &[u8]) -> Vec<u8> {
    let mut long = name.as_bytes().to_vec();
    long.push(0);
    let mut e = header("././@LongLink", long.len() as u64, b'L', true);
    e.extend(padded(&long));
    e.extend(header(
        &name[..100.min(name.len())],
        data.len() as u64,
        b'0',
        true,
    ));
    e.extend(padded(data));
    e
}

/// An entry with a pax extended header giving `records`.
fn pax(records: &[(&str, &str)], short: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.extend(format!("{len}{rest}").into_bytes());
    }
    let mut e = header("PaxHeaders.1/x", body.len() as u64, b'x', false);
    e.extend(padded(&body));
    e.extend(header(short, data.len() as u64, b'0', false));
    e.extend(padded(data));
    e
}

fn end() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut a: Vec<u8> = entries.concat();
    a.extend(end());
    a
}

/// The member's bytes and size, fed in pieces of `piece` bytes.
fn walk(archive: &[u8], want: &str, piece: usize) -> Result<(Vec<u8>, u64), String> {
    let mut w = MemberWalk::new(want);
    let mut out = Vec::new();
    for chunk in archive.chunks(piece) {
        w.feed(chunk, &mut out)?;
    }
    let size = w.finish()?;
    assert!(w.member_complete() || size == 0);
    Ok((out, size))
}

fn disk(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn picks_the_member_out_whatever_the_pieces() {
    let d = disk(3000);
    let a = archive(&[
        entry("vm.ovf", b"<Envelope/>"),
        entry("vm-disk1.vmdk", &d),
        entry("vm.mf", b"SHA256(vm.ovf)= 00\n"),
    ]);
    for piece in [1, 7, 511, 512, 513, 4096, a.len()] {
        let (got, size) = walk(&a, "vm-disk1.vmdk", piece).expect("found");
        assert_eq!(size, 3000);
        assert_eq!(got, d, "pieces of {piece}");
    }
    // `./` in the archive or in the request is the same name.
    let a = archive(&[entry("./vm-disk1.vmdk", &d)]);
    assert_eq!(walk(&a, "vm-disk1.vmdk", 100).expect("found").0, d);
    let a = archive(&[entry("vm-disk1.vmdk", &d)]);
    assert_eq!(walk(&a, "./vm-disk1.vmdk", 100).expect("found").0, d);
}

#[test]
fn the_size_and_completion_are_known_as_soon_as_they_can_be() {
    let d = disk(1024);
    let a = archive(&[entry("disk.vmdk", &d), entry("other", &disk(5000))]);
    let mut w = MemberWalk::new("disk.vmdk");
    let mut out = Vec::new();
    w.feed(&a[..BLOCK], &mut out).expect("header");
    assert_eq!(w.member_size(), Some(1024));
    assert!(!w.member_complete());
    w.feed(&a[BLOCK..2 * BLOCK + 1024], &mut out)
        .expect("the data");
    assert!(w.member_complete(), "complete before the archive ends");
    w.feed(&a[2 * BLOCK + 1024..], &mut out).expect("the rest");
    assert_eq!(out, d);
    assert_eq!(w.finish(), Ok(1024));
}

#[test]
fn long_names_gnu_ustar_prefix_and_pax() {
    let long = format!("{}/disk-{}.vmdk", "d".repeat(90), "x".repeat(60));
    let d = disk(700);
    for a in [
        archive(&[entry("a.ovf", b"x"), gnu_long(&long, &d)]),
        archive(&[entry("a.ovf", b"x"), entry(&long, &d)]),
        archive(&[
            entry("a.ovf", b"x"),
            pax(&[("path", &long)], "shortened.vmdk", &d),
        ]),
    ] {
        assert_eq!(walk(&a, &long, 333).expect("found").0, d);
    }
    // A pax size overrides the header's (as for members of 8 GiB and more).
    let mut a = pax(&[("size", "700")], "disk.vmdk", &d);
    // The real header says 0: only the pax size tells how long the data is.
    let hdr = header("disk.vmdk", 0, b'0', false);
    let at = a.len() - padded(&d).len() - BLOCK;
    a[at..at + BLOCK].copy_from_slice(&hdr);
    a.extend(end());
    assert_eq!(walk(&a, "disk.vmdk", 64).expect("found").0, d);
}

#[test]
fn base256_sizes_are_read() {
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[7] = 0x02; // 2 << 32
    assert_eq!(size(&f), Some(2 << 32));
    assert_eq!(size(b"00000001750\0"), Some(1000));
    f[0] = 0xc0;
    assert_eq!(size(&f), None, "negative");
}

#[test]
fn a_missing_member_lists_what_the_archive_holds() {
    let a = archive(&[entry("vm.ovf", b"x"), entry("disk1.vmdk", &disk(10))]);
    let e = walk(&a, "disk2.vmdk", 512).expect_err("missing");
    assert!(e.contains("has no member \"disk2.vmdk\""), "{e}");
    assert!(e.contains("\"vm.ovf\", \"disk1.vmdk\""), "{e}");
    let e = walk(&end(), "disk.vmdk", 512).expect_err("empty");
    assert!(e.contains("holds nothing"), "{e}");
}

#[test]
fn two_members_of_the_wanted_name_are_refused() {
    let a = archive(&[
        entry("disk.vmdk", &disk(10)),
        entry("./disk.vmdk", &disk(20)),
    ]);
    let e = walk(&a, "disk.vmdk", 512).expect_err("twice");
    assert!(e.contains("two entries named \"disk.vmdk\""), "{e}");
    // Other names may repeat: they are not read.
    let a = archive(&[
        entry("a.txt", b"1"),
        entry("a.txt", b"2"),
        entry("disk.vmdk", &disk(10)),
    ]);
    assert!(walk(&a, "disk.vmdk", 512).is_ok());
}

#[test]
fn absolute_and_dotdot_names_refuse_the_archive() {
    for bad in ["/etc/shadow", "../disk.vmdk", "a/../../b", "x/.."] {
        let a = archive(&[entry(bad, b"x"), entry("disk.vmdk", &disk(10))]);
        let e = walk(&a, "disk.vmdk", 512).expect_err(bad);
        assert!(e.contains("such an archive is refused"), "{bad}: {e}");
    }
    let a = archive(&[
        pax(&[("path", "../../escape")], "fine", b"x"),
        entry("disk.vmdk", &disk(10)),
    ]);
    assert!(walk(&a, "disk.vmdk", 512).is_err(), "a pax path counts");
    // A name merely containing dots is fine.
    let a = archive(&[entry("a..b/..c", b"x"), entry("disk.vmdk", &disk(10))]);
    assert!(walk(&a, "disk.vmdk", 512).is_ok());
}

#[test]
fn the_member_must_be_a_regular_file() {
    for (flag, what) in [
        (b'2', "symbolic link"),
        (b'1', "hard link"),
        (b'5', "directory"),
        (b'S', "sparse"),
    ] {
        let mut a = header("disk.vmdk", 0, flag, false);
        a.extend(end());
        let e = walk(&a, "disk.vmdk", 512).expect_err(what);
        assert!(e.contains(what), "{e}");
    }
    let a = archive(&[pax(
        &[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")],
        "disk.vmdk",
        &disk(10),
    )]);
    assert!(
        walk(&a, "disk.vmdk", 512)
            .expect_err("pax sparse")
            .contains("sparse")
    );
}

#[test]
fn damaged_and_cut_short_archives_are_refused() {
    let d = disk(2000);
    let a = archive(&[entry("disk.vmdk", &d)]);
    let mut bad = a.clone();
    bad[10] ^= 1;
    assert!(
        walk(&bad, "disk.vmdk", 512)
            .expect_err("checksum")
            .contains("checksum mismatch")
    );
    let e = walk(&a[..BLOCK + 1000], "disk.vmdk", 512).expect_err("cut");
    assert!(e.contains("cut short"), "{e}");
    let e = walk(&a[..300], "disk.vmdk", 512).expect_err("cut header");
    assert!(e.contains("cut short"), "{e}");
    let e = walk(&disk(4096), "disk.vmdk", 512).expect_err("not tar");
    assert!(e.contains("damaged header"), "{e}");
    // An archive without its end-of-archive blocks is accepted when it ends between entries
    // (the checksum of the whole download is what vouches for it).
    let a = entry("disk.vmdk", &d);
    assert_eq!(walk(&a, "disk.vmdk", 512).expect("no end blocks").0, d);
}

#[test]
fn names_are_judged_as_paths() {
    assert_eq!(unsafe_path("disk.vmdk"), None);
    assert_eq!(unsafe_path("dir/disk.vmdk"), None);
    assert!(unsafe_path("/disk.vmdk").is_some());
    assert!(unsafe_path("dir/../../disk.vmdk").is_some());
}

#[test]
fn every_file_is_handed_out_by_name() {
    let d = disk(1500);
    let a = archive(&[
        entry("vm.ovf", b"<Envelope/>"),
        gnu_long(&format!("{}.vmdk", "l".repeat(120)), &d),
        entry("vm.mf", b"SHA256(vm.ovf)= 00\n"),
    ]);
    for piece in [1, 100, 512, a.len()] {
        let mut w = MemberWalk::every_file();
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        for chunk in a.chunks(piece) {
            w.feed_each(chunk, &mut |name, bytes| match got.last_mut() {
                Some((n, b)) if n == name => b.extend_from_slice(bytes),
                _ => got.push((name.to_string(), bytes.to_vec())),
            })
            .expect("walks");
        }
        assert_eq!(w.finish(), Ok(0));
        assert_eq!(got.len(), 3, "pieces of {piece}");
        assert_eq!(got[1].1, d);
        assert_eq!(w.files()[2], ("vm.mf".to_string(), 19));
    }
    let a = archive(&[entry("vm.ovf", b"1"), entry("./vm.ovf", b"2")]);
    let mut w = MemberWalk::every_file();
    assert!(
        w.feed_each(&a, &mut |_, _| {})
            .expect_err("twice")
            .contains("two entries named \"vm.ovf\"")
    );
}

/// Archives written by GNU tar in its GNU and pax formats, with a member name longer than
/// ustar's 100 bytes and `./` prefixes, as `tar -cf - .` writes them.
#[test]
fn archives_written_by_gnu_tar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = format!("{}-disk1.vmdk", "appliance".repeat(12));
    let d = disk(70_000);
    std::fs::write(dir.path().join("vm.ovf"), b"<Envelope/>").expect("write");
    std::fs::write(dir.path().join(&long), &d).expect("write");
    for format in ["gnu", "pax"] {
        let out = std::process::Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["-cf", "-", "."])
            .current_dir(dir.path())
            .output()
            .expect("tar");
        assert!(out.status.success(), "{format}");
        let (got, size) = walk(&out.stdout, &long, 4096).expect(format);
        assert_eq!((got == d, size), (true, 70_000), "{format}");
    }
}
