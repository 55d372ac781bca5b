//! Real headers made by `qemu-img create` (`fixtures/make.sh`), and variants of them patched the
//! way an attacker would: differencing images, descriptors naming host files, metadata out of
//! reach.

use super::*;
use SourceFormat::*;

/// A fixture file: its length, then `offset hex` for each non-zero sector.
fn fixture(name: &str) -> Vec<u8> {
    let text = match name {
        "sparse.vmdk" => include_str!("fixtures/sparse.vmdk.hex"),
        "stream.vmdk" => include_str!("fixtures/stream.vmdk.hex"),
        "child.vmdk" => include_str!("fixtures/child.vmdk.hex"),
        "flat.vmdk" => include_str!("fixtures/flat.vmdk.hex"),
        "dynamic.vhdx" => include_str!("fixtures/dynamic.vhdx.hex"),
        "data.vhdx" => include_str!("fixtures/data.vhdx.hex"),
        "normal.vdi" => include_str!("fixtures/normal.vdi.hex"),
        "static.vdi" => include_str!("fixtures/static.vdi.hex"),
        "dynamic.vpc" => include_str!("fixtures/dynamic.vpc.hex"),
        "fixed.vpc" => include_str!("fixtures/fixed.vpc.hex"),
        other => panic!("no fixture {other}"),
    };
    let mut lines = text.lines();
    let len: usize = lines.next().and_then(|l| l.parse().ok()).expect("length");
    let mut file = vec![0u8; len];
    for line in lines {
        let (at, hex) = line.split_once(' ').expect("offset and bytes");
        let at: usize = at.parse().expect("offset");
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("ascii");
            file[at + i] = u8::from_str_radix(s, 16).expect("hex");
        }
    }
    file
}

/// What the importer buffers of `file` declared `format`: the head, and whether it is all.
fn checked(format: SourceFormat, file: &[u8]) -> Result<Option<u64>, String> {
    let n = head_bytes(format).min(file.len());
    check(format, &file[..n], n == file.len())
}

/// `file` with `bytes` written at `at`.
fn patched(mut file: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    file[at..at + bytes.len()].copy_from_slice(bytes);
    file
}

/// A sparse VMDK whose embedded descriptor (sector 1) is `descriptor`, and capacity `sectors`.
fn vmdk_with(descriptor: &str, sectors: u64) -> Vec<u8> {
    let mut f = fixture("sparse.vmdk");
    f[512..512 + 20 * 512].fill(0);
    let f = patched(f, 512, descriptor.as_bytes());
    patched(f, 12, &sectors.to_le_bytes())
}

/// Offsets in the VHDX fixture: the metadata region (from its region table) and its table.
fn vhdx_metadata_region(f: &[u8]) -> usize {
    let at = 192 * 1024 + 16;
    let entries: Vec<&[u8]> = (0..2).map(|i| &f[at + i * 32..at + i * 32 + 32]).collect();
    let e = entries
        .iter()
        .find(|e| e[..16] == VHDX_METADATA_REGION)
        .expect("metadata region entry");
    u64::from_le_bytes(e[16..24].try_into().expect("8 bytes")) as usize
}

/// The VHDX fixture with a parent-locator item added to its metadata table.
fn vhdx_with_parent_locator() -> Vec<u8> {
    let f = fixture("dynamic.vhdx");
    let region = vhdx_metadata_region(&f);
    let count = u16::from_le_bytes([f[region + 10], f[region + 11]]) as usize;
    let mut entry = [0u8; 32];
    entry[..16].copy_from_slice(&VHDX_PARENT_LOCATOR);
    entry[16..20].copy_from_slice(&(0x20000u32).to_le_bytes());
    entry[20..24].copy_from_slice(&(64u32).to_le_bytes());
    let f = patched(f, region + 32 + count * 32, &entry);
    patched(f, region + 10, &((count + 1) as u16).to_le_bytes())
}

/// The VHDX fixture with the file parameters' "has parent" flag set.
fn vhdx_has_parent_flag() -> Vec<u8> {
    let f = fixture("dynamic.vhdx");
    let region = vhdx_metadata_region(&f);
    let count = u16::from_le_bytes([f[region + 10], f[region + 11]]) as usize;
    let entry = (0..count)
        .map(|i| region + 32 + i * 32)
        .find(|e| f[*e..*e + 16] == VHDX_FILE_PARAMETERS)
        .expect("file parameters");
    let offset = u32::from_le_bytes(f[entry + 16..entry + 20].try_into().expect("4")) as usize;
    let flags = u32::from_le_bytes(
        f[region + offset + 4..region + offset + 8]
            .try_into()
            .expect("4"),
    );
    patched(
        f,
        region + offset + 4,
        &(flags | VHDX_HAS_PARENT).to_le_bytes(),
    )
}

/// The VHDX fixture whose current header has a log GUID (needs a log replay).
fn vhdx_dirty() -> Vec<u8> {
    let f = fixture("dynamic.vhdx");
    let seq = |at: usize| u64::from_le_bytes(f[at + 8..at + 16].try_into().expect("8"));
    let current = if seq(128 * 1024) > seq(64 * 1024) {
        128 * 1024
    } else {
        64 * 1024
    };
    patched(f, current + 48, &[7u8; 16])
}

#[test]
fn only_self_contained_images_pass() {
    let sparse = fixture("sparse.vmdk");
    let stream = fixture("stream.vmdk");
    let vhdx = fixture("dynamic.vhdx");
    let vdi = fixture("normal.vdi");
    let vpc = fixture("dynamic.vpc");
    let desc = |body: &str| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n{body}"
        )
    };
    type Case = (
        &'static str,
        SourceFormat,
        Vec<u8>,
        Result<u64, &'static str>,
    );
    let cases: Vec<Case> = vec![
        // What qemu-img makes, and what it may be.
        (
            "a monolithicSparse VMDK",
            Vmdk,
            sparse.clone(),
            Ok(64 << 20),
        ),
        ("a streamOptimized VMDK", Vmdk, stream.clone(), Ok(64 << 20)),
        ("a dynamic VHDX", Vhdx, vhdx.clone(), Ok(64 << 20)),
        ("a normal VDI", Vdi, vdi.clone(), Ok(64 << 20)),
        ("a fixed VDI", Vdi, fixture("static.vdi"), Ok(1 << 20)),
        ("a dynamic VHD", Vpc, vpc.clone(), Ok(67_125_248)),
        // VMDK: what names other files.
        (
            "a VMDK made with a backing file (qemu-img create -b)",
            Vmdk,
            fixture("child.vmdk"),
            Err("parentFileNameHint"),
        ),
        (
            "a VMDK text descriptor (monolithicFlat)",
            Vmdk,
            fixture("flat.vmdk"),
            Err("text descriptor"),
        ),
        (
            "a sparse VMDK of capacity 0 naming a host file as a flat extent",
            Vmdk,
            vmdk_with(
                "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/shadow\" 0\n",
                0,
            ),
            Err("capacity 0"),
        ),
        (
            "a sparse VMDK whose descriptor names a host file as its extent",
            Vmdk,
            vmdk_with(
                &desc("RW 131072 SPARSE \"/var/lib/libvirt/images/other.qcow2\"\n"),
                131072,
            ),
            Err("names the extent"),
        ),
        (
            "a relative path up the tree",
            Vmdk,
            vmdk_with(&desc("RW 131072 SPARSE \"../other/disk.vmdk\"\n"), 131072),
            Err("names the extent"),
        ),
        (
            "a FLAT extent, even a bare name",
            Vmdk,
            vmdk_with(&desc("RW 131072 FLAT \"disk-flat.vmdk\" 0\n"), 131072),
            Err("names the extent"),
        ),
        (
            "two extents",
            Vmdk,
            vmdk_with(
                &desc("RW 131072 SPARSE \"a.vmdk\"\nRW 131072 SPARSE \"b.vmdk\"\n"),
                131072,
            ),
            Err("2 extents"),
        ),
        (
            "a parent CID without a file name hint",
            Vmdk,
            vmdk_with(
                "# Disk DescriptorFile\nversion=1\nparentCID=6daf9a77\ncreateType=\"monolithicSparse\"\nRW 131072 SPARSE \"a.vmdk\"\n",
                131072,
            ),
            Err("parentCID=6daf9a77"),
        ),
        (
            "a split sparse type",
            Vmdk,
            vmdk_with(
                "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\nRW 131072 SPARSE \"a-s001.vmdk\"\n",
                131072,
            ),
            Err("twogbmaxextentsparse"),
        ),
        (
            "a parent hint written in another case",
            Vmdk,
            vmdk_with(
                &desc("PARENTFILENAMEHINT=\"/etc/shadow\"\nRW 131072 SPARSE \"a.vmdk\"\n"),
                131072,
            ),
            Err("parentFileNameHint"),
        ),
        (
            "a hint in a second descriptor the header points to",
            Vmdk,
            {
                let f = patched(sparse.clone(), 28, &40u64.to_le_bytes());
                let f = patched(f, 36, &2u64.to_le_bytes());
                patched(f, 40 * 512, b"parentFileNameHint=\"/etc/shadow\"\n")
            },
            Err("parentFileNameHint"),
        ),
        (
            "a descriptor the header puts beyond what is read",
            Vmdk,
            {
                let mut f = patched(sparse.clone(), 28, &(20_000u64).to_le_bytes());
                f.resize(HEAD_LIMIT + (1 << 20), 0);
                f
            },
            Err("beyond the first"),
        ),
        (
            "a COWD (VMDK3) image",
            Vmdk,
            patched(sparse.clone(), 0, b"COWD"),
            Err("COWD"),
        ),
        (
            "qcow2 declared VMDK",
            Vmdk,
            patched(sparse.clone(), 0, b"QFI\xfb"),
            Err("KDMV"),
        ),
        // VHDX.
        (
            "a differencing VHDX (parent locator)",
            Vhdx,
            vhdx_with_parent_locator(),
            Err("parent locator"),
        ),
        (
            "a VHDX whose file parameters say it has a parent",
            Vhdx,
            vhdx_has_parent_flag(),
            Err("has a parent"),
        ),
        (
            "a VHDX with a log to replay",
            Vhdx,
            vhdx_dirty(),
            Err("log to replay"),
        ),
        (
            "a VHDX whose metadata lies beyond what is read",
            Vhdx,
            {
                let region = vhdx_metadata_region(&vhdx);
                let at = 192 * 1024 + 16;
                let moved = ((HEAD_LIMIT + (4 << 20)) as u64).to_le_bytes();
                let mut f = vhdx.clone();
                for i in 0..2 {
                    if f[at + i * 32..at + i * 32 + 16] == VHDX_METADATA_REGION {
                        f[at + i * 32 + 16..at + i * 32 + 24].copy_from_slice(&moved);
                    }
                }
                f.resize(HEAD_LIMIT + (8 << 20), 0);
                let table = f[region..region + (1 << 20)].to_vec();
                f[HEAD_LIMIT + (4 << 20)..HEAD_LIMIT + (5 << 20)].copy_from_slice(&table);
                f
            },
            Err("beyond the first"),
        ),
        (
            "a VHDX cut short before its metadata",
            Vhdx,
            vhdx[..(1 << 20)].to_vec(),
            Err("ends before"),
        ),
        (
            "a VHDX without region tables",
            Vhdx,
            patched(
                patched(vhdx.clone(), 192 * 1024, b"xxxx"),
                256 * 1024,
                b"xxxx",
            ),
            Err("without a region table"),
        ),
        (
            "a VMDK declared VHDX",
            Vhdx,
            sparse.clone(),
            Err("vhdxfile"),
        ),
        // VDI.
        (
            "a differencing VDI",
            Vdi,
            patched(vdi.clone(), 0x4c, &4u32.to_le_bytes()),
            Err("differencing"),
        ),
        (
            "an undo VDI",
            Vdi,
            patched(vdi.clone(), 0x4c, &3u32.to_le_bytes()),
            Err("undo"),
        ),
        (
            "a VDI of another version",
            Vdi,
            patched(vdi.clone(), 0x44, &0x0001_0000u32.to_le_bytes()),
            Err("version 1.0"),
        ),
        (
            "raw bytes declared VDI",
            Vdi,
            vec![0u8; 4096],
            Err("not a VDI"),
        ),
        // VHD.
        (
            "a differencing VHD",
            Vpc,
            patched(vpc.clone(), 60, &4u32.to_be_bytes()),
            Err("differencing"),
        ),
        (
            "a fixed VHD",
            Vpc,
            fixture("fixed.vpc"),
            Err("import it as raw"),
        ),
        (
            "a dynamic VHD with a parent locator",
            Vpc,
            {
                let dynamic = u64::from_be_bytes(vpc[16..24].try_into().expect("8")) as usize;
                patched(vpc.clone(), dynamic + 576 + 24, b"W2ku")
            },
            Err("parent locator"),
        ),
        (
            "a VHD whose dynamic header is missing",
            Vpc,
            patched(vpc.clone(), 512, b"xxxxxxxx"),
            Err("dynamic header"),
        ),
    ];
    for (name, format, file, want) in cases {
        match (checked(format, &file), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, Some(w), "{name}"),
            (Err(got), Err(w)) => assert!(got.contains(w), "{name}: {got}"),
            (got, w) => panic!("{name}: got {got:?}, want {w:?}"),
        }
    }
}

#[test]
fn raw_and_qcow2_are_checked_as_before() {
    assert_eq!(check(Raw, b"anything", true), Ok(None));
    let err = check(Qcow2, &fixture("sparse.vmdk")[..512], false).expect_err("not qcow2");
    assert!(err.contains("not a qcow2 image"), "{err}");
}

#[test]
fn what_is_read_is_bounded() {
    for f in [Raw, Qcow2, Vmdk, Vhdx, Vdi, Vpc] {
        assert!(head_bytes(f) <= HEAD_LIMIT, "{f}");
    }
}

/// The guest's disk read out of a VHDX through its layout, as the importer reads it.
fn vhdx_disk(file: &[u8]) -> Result<Vec<u8>, String> {
    let n = head_bytes(Vhdx).min(file.len());
    let layout = vhdx_layout(&file[..n], n == file.len())?;
    let bat_at = layout.bat_offset as usize;
    let bat = &file[bat_at..bat_at + layout.bat_bytes() as usize];
    let mut disk = Vec::new();
    for block in layout.locate(bat, file.len() as u64)? {
        let len = (layout.block_size as usize).min(layout.virtual_size as usize - disk.len());
        match block {
            VhdxBlock::Zero => disk.resize(disk.len() + len, 0),
            VhdxBlock::At(at) => disk.extend_from_slice(&file[at as usize..at as usize + len]),
        }
    }
    Ok(disk)
}

#[test]
fn a_vhdx_reads_as_the_disk_qemu_wrote() {
    let disk = vhdx_disk(&fixture("data.vhdx")).expect("readable");
    assert_eq!(disk.len(), 8 << 20);
    let mut want = vec![0u8; 8 << 20];
    want[1 << 20..(1 << 20) + 512].fill(0x5a);
    want[5 << 20..(5 << 20) + 4096].fill(0xa5);
    assert!(disk == want, "the blocks qemu-io wrote, zeros elsewhere");
    let empty = vhdx_disk(&fixture("dynamic.vhdx")).expect("readable");
    assert!(empty.len() == 64 << 20 && empty.iter().all(|b| *b == 0));
}

#[test]
fn vhdx_blocks_that_are_not_the_files_own_are_refused() {
    let file = fixture("data.vhdx");
    let n = head_bytes(Vhdx).min(file.len());
    let layout = vhdx_layout(&file[..n], n == file.len()).expect("layout");
    let bat_at = layout.bat_offset as usize;
    let bat = file[bat_at..bat_at + layout.bat_bytes() as usize].to_vec();
    let entry =
        |bat: &[u8], i: usize| u64::from_le_bytes(bat[i * 8..i * 8 + 8].try_into().expect("8"));
    let with = |i: usize, e: u64| {
        let mut b = bat.clone();
        b[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        b
    };
    let size = file.len() as u64;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "partially present: a differencing disk's",
            with(1, entry(&bat, 1) & !7 | 7),
            "differencing",
        ),
        (
            "past the end of the file",
            with(1, (40u64 << 20) | 6),
            "outside the file",
        ),
        ("inside the headers", with(1, 6), "outside the file"),
        (
            "an unknown state",
            with(1, entry(&bat, 1) & !7 | 4),
            "unknown state",
        ),
        ("a table cut short", bat[..8].to_vec(), "cut short"),
    ];
    for (name, bat, want) in cases {
        let err = layout.locate(&bat, size).expect_err(name);
        assert!(err.contains(want), "{name}: {err}");
    }
}
