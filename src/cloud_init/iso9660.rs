//! A small ISO 9660 (ECMA-119) writer with Joliet names, for flat images of a few small files
//! such as a cloud-init NoCloud seed.
//!
//! Layout (2048-byte sectors): 16 empty system-area sectors, the primary volume descriptor, a
//! Joliet supplementary descriptor (UCS-2 level 3), the terminator, four path tables (primary L
//! and M, Joliet L and M), the primary root directory, the Joliet root directory, then each
//! file's data. Both trees point at the same data. Names in the primary tree are upper-cased
//! ISO 9660 level 2 names (`USER_DATA.;1`); readers that know Joliet (Linux, Windows, cloud-init,
//! isoinfo -J) see the exact names.
//!
//! The output depends only on the input (a fixed recording date): equal input gives equal bytes,
//! so a digest of the image identifies its content.

use std::collections::BTreeSet;

/// Bytes per logical sector.
pub const SECTOR: usize = 2048;
/// Sectors before the first volume descriptor (the system area).
const SYSTEM_AREA: u32 = 16;
/// Longest Joliet file name, in UCS-2 characters.
const MAX_NAME: usize = 64;
/// Largest file a single extent can hold.
const MAX_FILE: usize = u32::MAX as usize;
/// Recording date of every directory record: 2000-01-01 00:00:00 UTC (years since 1900, month,
/// day, hour, minute, second, offset from GMT in 15-minute units).
const RECORDED: [u8; 7] = [100, 1, 1, 0, 0, 0, 0];
/// The same date in the descriptors' 17-byte text form.
const DESCRIPTOR_DATE: &[u8; 16] = b"2000010100000000";

/// Why an image cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    /// A file name that a flat Joliet image cannot carry.
    #[error("file name {0:?} is not allowed: 1 to 64 characters from A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidName(String),
    /// Two files whose names are equal (or equal once upper-cased for the primary tree).
    #[error("file name {0:?} is used twice")]
    DuplicateName(String),
    /// The volume identifier does not fit or has characters outside `A-Z a-z 0-9 _ -`.
    #[error("volume identifier {0:?} is not allowed: 1 to 16 characters from A-Z, a-z, 0-9, '_'")]
    InvalidVolumeId(String),
    /// A file too large for one extent.
    #[error("file {0:?} is larger than 4 GiB")]
    TooLarge(String),
}

/// One file of the image, in the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile<'a> {
    /// Name as readers with Joliet support see it.
    pub name: &'a str,
    /// Content.
    pub data: &'a [u8],
}

/// Build an image labelled `volume_id` holding `files` in its root directory.
pub fn build(volume_id: &str, files: &[IsoFile<'_>]) -> Result<Vec<u8>, IsoError> {
    if volume_id.is_empty()
        || volume_id.len() > 16
        || !volume_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(IsoError::InvalidVolumeId(volume_id.to_string()));
    }
    let mut joliet_names = BTreeSet::new();
    let mut primary_names = BTreeSet::new();
    for f in files {
        let ok = !f.name.is_empty()
            && f.name.len() <= MAX_NAME
            && f.name != "."
            && f.name != ".."
            && f.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(IsoError::InvalidName(f.name.to_string()));
        }
        if f.data.len() > MAX_FILE {
            return Err(IsoError::TooLarge(f.name.to_string()));
        }
        if !joliet_names.insert(f.name) || !primary_names.insert(primary_name(f.name)) {
            return Err(IsoError::DuplicateName(f.name.to_string()));
        }
    }

    // Sectors: descriptors at 16..=18, path tables at 19..=22, then the two root directories.
    let path_tables = SYSTEM_AREA + 3;
    let primary_root = path_tables + 4;
    let mut primary_entries: Vec<(Vec<u8>, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (primary_name(f.name).into_bytes(), i))
        .collect();
    primary_entries.sort();
    let mut joliet_entries: Vec<(Vec<u8>, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (ucs2(f.name), i))
        .collect();
    joliet_entries.sort();
    let primary_sectors = dir_sectors(&primary_entries);
    let joliet_root = primary_root + primary_sectors;
    let joliet_sectors = dir_sectors(&joliet_entries);
    let mut next = joliet_root + joliet_sectors;
    let mut extents = Vec::with_capacity(files.len());
    for f in files {
        extents.push(next);
        next += sectors(f.data.len());
    }
    let total = next;

    let mut img = vec![0u8; total as usize * SECTOR];
    let primary_dir = Dir {
        sector: primary_root,
        sectors: primary_sectors,
    };
    let joliet_dir = Dir {
        sector: joliet_root,
        sectors: joliet_sectors,
    };
    write_descriptor(
        sector_mut(&mut img, SYSTEM_AREA),
        Descriptor::Primary,
        volume_id,
        total,
        path_tables,
        primary_dir,
    );
    write_descriptor(
        sector_mut(&mut img, SYSTEM_AREA + 1),
        Descriptor::Joliet,
        volume_id,
        total,
        path_tables + 2,
        joliet_dir,
    );
    let term = sector_mut(&mut img, SYSTEM_AREA + 2);
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    for (i, dir) in [primary_dir, primary_dir, joliet_dir, joliet_dir]
        .into_iter()
        .enumerate()
    {
        write_path_table(
            sector_mut(&mut img, path_tables + i as u32),
            dir,
            i % 2 == 1,
        );
    }
    write_directory(&mut img, primary_dir, &primary_entries, files, &extents);
    write_directory(&mut img, joliet_dir, &joliet_entries, files, &extents);
    for (f, extent) in files.iter().zip(&extents) {
        let at = *extent as usize * SECTOR;
        img[at..at + f.data.len()].copy_from_slice(f.data);
    }
    Ok(img)
}

/// A directory's place on the image.
#[derive(Clone, Copy)]
struct Dir {
    sector: u32,
    sectors: u32,
}

#[derive(Clone, Copy, PartialEq)]
enum Descriptor {
    Primary,
    Joliet,
}

/// The primary-tree name: upper case, `-` as `_`, an empty extension when there is none, `;1`.
fn primary_name(name: &str) -> String {
    let mut n: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    // Level 2: at most 30 characters for name and extension together.
    if let Some(dot) = n.rfind('.') {
        let (base, ext) = n.split_at(dot);
        let base: String = base.replace('.', "_");
        n = format!("{base}{ext}");
    } else {
        n.push('.');
    }
    n.truncate(30);
    n.push_str(";1");
    n
}

/// UCS-2 big-endian, as Joliet stores names and identifiers.
fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn sectors(len: usize) -> u32 {
    len.div_ceil(SECTOR) as u32
}

fn sector_mut(img: &mut [u8], n: u32) -> &mut [u8] {
    let at = n as usize * SECTOR;
    &mut img[at..at + SECTOR]
}

fn record_len(id_len: usize) -> usize {
    let n = 33 + id_len;
    n + n % 2
}

/// Sectors a directory with these entries needs (records never cross a sector boundary).
fn dir_sectors(entries: &[(Vec<u8>, usize)]) -> u32 {
    let mut sectors = 1u32;
    let mut used = 2 * record_len(1); // "." and ".."
    for (id, _) in entries {
        let len = record_len(id.len());
        if used + len > SECTOR {
            sectors += 1;
            used = 0;
        }
        used += len;
    }
    sectors
}

fn both16(out: &mut [u8], v: u16) {
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(out: &mut [u8], v: u32) {
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_be_bytes());
}

/// A directory record for `id` at the start of `out`; returns its length.
fn write_record(out: &mut [u8], id: &[u8], extent: u32, len: u32, dir: bool) -> usize {
    let n = record_len(id.len());
    out[0] = n as u8;
    both32(&mut out[2..10], extent);
    both32(&mut out[10..18], len);
    out[18..25].copy_from_slice(&RECORDED);
    out[25] = if dir { 0x02 } else { 0 };
    both16(&mut out[28..32], 1);
    out[32] = id.len() as u8;
    out[33..33 + id.len()].copy_from_slice(id);
    n
}

fn write_directory(
    img: &mut [u8],
    dir: Dir,
    entries: &[(Vec<u8>, usize)],
    files: &[IsoFile<'_>],
    extents: &[u32],
) {
    let size = dir.sectors * SECTOR as u32;
    let start = dir.sector as usize * SECTOR;
    let area = &mut img[start..start + size as usize];
    let mut at = write_record(area, &[0], dir.sector, size, true);
    at += write_record(&mut area[at..], &[1], dir.sector, size, true);
    for (id, i) in entries {
        let len = record_len(id.len());
        if at % SECTOR + len > SECTOR {
            at = at.next_multiple_of(SECTOR);
        }
        at += write_record(
            &mut area[at..],
            id,
            extents[*i],
            files[*i].data.len() as u32,
            false,
        );
    }
}

/// A path table holding the root directory only, little-endian (`L`) or big-endian (`M`).
fn write_path_table(out: &mut [u8], root: Dir, big_endian: bool) {
    out[0] = 1; // length of the directory identifier
    let loc = if big_endian {
        root.sector.to_be_bytes()
    } else {
        root.sector.to_le_bytes()
    };
    out[2..6].copy_from_slice(&loc);
    let parent = if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    };
    out[6..8].copy_from_slice(&parent);
    out[8] = 0; // the root's identifier, then one byte of padding
}

/// Bytes of a path table with only the root directory.
const PATH_TABLE_SIZE: u32 = 10;

fn write_descriptor(
    out: &mut [u8],
    kind: Descriptor,
    volume_id: &str,
    total: u32,
    path_tables: u32,
    root: Dir,
) {
    let joliet = kind == Descriptor::Joliet;
    out[0] = if joliet { 2 } else { 1 };
    out[1..6].copy_from_slice(b"CD001");
    out[6] = 1;
    // Text fields are space-padded: ASCII spaces, or UCS-2 spaces (00 20) for Joliet.
    let pad = |field: &mut [u8], value: &str| {
        if joliet {
            for pair in field.chunks_mut(2) {
                let n = pair.len();
                pair.copy_from_slice(&[0, b' '][..n]);
            }
            let v = ucs2(value);
            field[..v.len()].copy_from_slice(&v);
        } else {
            field.fill(b' ');
            field[..value.len()].copy_from_slice(value.as_bytes());
        }
    };
    pad(&mut out[8..40], ""); // system identifier
    pad(&mut out[40..72], volume_id);
    both32(&mut out[80..88], total);
    if joliet {
        out[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    both16(&mut out[120..124], 1); // volume set size
    both16(&mut out[124..128], 1); // volume sequence number
    both16(&mut out[128..132], SECTOR as u16);
    both32(&mut out[132..140], PATH_TABLE_SIZE);
    out[140..144].copy_from_slice(&path_tables.to_le_bytes());
    out[148..152].copy_from_slice(&(path_tables + 1).to_be_bytes());
    write_record(
        &mut out[156..190],
        &[0],
        root.sector,
        root.sectors * SECTOR as u32,
        true,
    );
    pad(&mut out[190..318], ""); // volume set identifier
    pad(&mut out[318..446], ""); // publisher
    pad(&mut out[446..574], ""); // data preparer
    pad(&mut out[574..702], "FERRY"); // application
    pad(&mut out[702..739], ""); // copyright file
    pad(&mut out[739..776], ""); // abstract file
    pad(&mut out[776..813], ""); // bibliographic file
    for (at, set) in [(813, true), (830, true), (847, false), (864, false)] {
        // Creation and modification dates; expiration and effective dates "not specified".
        let field = &mut out[at..at + 17];
        if set {
            field[..16].copy_from_slice(DESCRIPTOR_DATE);
        } else {
            field[..16].fill(b'0');
        }
        field[16] = 0;
    }
    out[881] = 1; // file structure version
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_le(img: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]])
    }

    #[test]
    fn primary_names_follow_level_2() {
        assert_eq!(primary_name("user-data"), "USER_DATA.;1");
        assert_eq!(primary_name("network-config"), "NETWORK_CONFIG.;1");
        assert_eq!(primary_name("a.b.txt"), "A_B.TXT;1");
    }

    #[test]
    fn layout_of_a_small_image() {
        let img = build(
            "cidata",
            &[
                IsoFile {
                    name: "user-data",
                    data: b"#cloud-config\n",
                },
                IsoFile {
                    name: "meta-data",
                    data: &[b'x'; 3000],
                },
            ],
        )
        .expect("image");
        // 16 + 3 descriptors + 4 path tables + 2 directories + 1 + 2 data sectors.
        assert_eq!(img.len(), 28 * SECTOR);
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..48], b"cidata  ");
        assert_eq!(u32_le(pvd, 80), 28);
        let svd = &img[17 * SECTOR..18 * SECTOR];
        assert_eq!(svd[0], 2);
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], &ucs2("cidata")[..]);
        assert_eq!(&img[18 * SECTOR..18 * SECTOR + 7], b"\xffCD001\x01");
        // Data follows the directories in the order given.
        assert_eq!(&img[25 * SECTOR..25 * SECTOR + 14], b"#cloud-config\n");
        assert_eq!(img[26 * SECTOR], b'x');
        assert_eq!(img[26 * SECTOR + 2999], b'x');
    }

    #[test]
    fn identical_input_gives_identical_bytes() {
        let files = [IsoFile {
            name: "meta-data",
            data: b"instance-id: a\n",
        }];
        assert_eq!(build("cidata", &files), build("cidata", &files));
    }

    #[test]
    fn large_directories_span_sectors_without_splitting_records() {
        let names: Vec<String> = (0..80).map(|i| format!("file-number-{i:03}")).collect();
        let files: Vec<IsoFile> = names
            .iter()
            .map(|n| IsoFile {
                name: n,
                data: b"x",
            })
            .collect();
        let img = build("cidata", &files).expect("image");
        let dir = &img[23 * SECTOR..];
        let size = u32_le(dir, 10) as usize;
        assert_eq!(size, 3 * SECTOR);
        // Walk the primary directory's records as a reader would.
        let (mut at, mut seen) = (0usize, 0usize);
        while at < size {
            let len = dir[at] as usize;
            if len == 0 {
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            assert!(at % SECTOR + len <= SECTOR, "record crosses a sector");
            seen += 1;
            at += len;
        }
        assert_eq!(seen, 82);
    }

    #[test]
    fn bad_names_and_labels_are_rejected() {
        let file = |name| IsoFile { name, data: b"" };
        assert_eq!(
            build("cidata", &[file("a/b")]),
            Err(IsoError::InvalidName("a/b".into()))
        );
        assert_eq!(
            build("cidata", &[file("")]),
            Err(IsoError::InvalidName(String::new()))
        );
        assert_eq!(
            build("cidata", &[file("User-Data"), file("user_data")]),
            Err(IsoError::DuplicateName("user_data".into()))
        );
        assert_eq!(
            build("ci data", &[]),
            Err(IsoError::InvalidVolumeId("ci data".into()))
        );
    }
}
