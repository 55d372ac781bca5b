//! Whether a file downloaded for an `http:` disk may be imported in the format its spec declares,
//! judged from the first bytes of the download, before anything is stored on a host.
//!
//! The file comes from a tenant, and so does every byte of it. qcow2 and raw are checked by
//! [`image_header`]. The foreign formats are converted on the host by `qemu-img convert` (run by
//! libvirt), which follows whatever the file names: a VMDK text descriptor lists extent files by
//! any path, a sparse VMDK may carry a `parentFileNameHint` (a backing file) in its embedded
//! descriptor and, with a capacity of 0, is read as a descriptor naming extents; a VHDX
//! differencing disk names its parent in a parent locator; a VHD of disk type 4 and a VDI
//! differencing or undo image name a parent. The conversion would copy such a file (another VM's
//! disk, `/etc/shadow`) into the tenant's disk, so only self-contained single-file images pass:
//!
//! - **VMDK**: `KDMV` magic (a hosted sparse or stream-optimized extent) with a capacity; its
//!   embedded descriptor (where QEMU and libvirt read it, sector 1, and where the header says)
//!   names exactly one `SPARSE` extent by a bare file name (the file itself), no
//!   `parentFileNameHint`, and `parentCID` `ffffffff` if any. Text descriptors are refused.
//! - **VHDX**: the current header has no log to replay, and no metadata table (found through
//!   the region tables) has a parent-locator entry or the file-parameters "has parent" flag. A
//!   metadata region beyond the bytes ferry reads is refused rather than guessed.
//! - **VHD (`vpc`)**: a dynamic disk (type 3) with its footer copy at the start and no parent
//!   locators; differencing (4) is refused, and so is a fixed VHD (it is raw data with a footer:
//!   import it as `raw`).
//! - **VDI**: image type normal (1) or fixed (2); differencing and undo images are refused.
//!
//! At most [`HEAD_LIMIT`] bytes are buffered for these checks.

use super::image_header;
use crate::api::virtual_machine::{ImageFormat, SourceFormat};

/// Most bytes of a download buffered for the checks.
pub const HEAD_LIMIT: usize = 8 << 20;

/// How many bytes of a download of `format` the checks want (fewer when the file is shorter).
pub fn head_bytes(format: SourceFormat) -> usize {
    match format {
        SourceFormat::Raw | SourceFormat::Qcow2 => image_header::HEAD_BYTES,
        // The embedded descriptor: sector 1 to 21, or where the header says within the limit.
        SourceFormat::Vmdk => HEAD_LIMIT,
        // Headers, region tables and, where qemu-img and Hyper-V put it, the metadata region.
        SourceFormat::Vhdx => HEAD_LIMIT,
        SourceFormat::Vdi => 512,
        // The footer copy and the dynamic header after it.
        SourceFormat::Vpc => 64 * 1024,
    }
}

/// Check `head`, the first [`head_bytes`] bytes of a download declared `format` (or the whole
/// file when `whole`), for import: `Ok` with the virtual size when the header tells it, or what
/// is wrong, for a sentence that starts with the file's name.
pub fn check(format: SourceFormat, head: &[u8], whole: bool) -> Result<Option<u64>, String> {
    match format {
        SourceFormat::Raw => image_header::check(ImageFormat::Raw, head).map(|_| None),
        SourceFormat::Qcow2 => {
            image_header::check(ImageFormat::Qcow2, head).map(|q| q.map(|q| q.virtual_size))
        }
        SourceFormat::Vmdk => vmdk(&Head { bytes: head, whole }).map(Some),
        SourceFormat::Vhdx => vhdx(&Head { bytes: head, whole }).map(|l| Some(l.virtual_size)),
        SourceFormat::Vdi => vdi(&Head { bytes: head, whole }).map(Some),
        SourceFormat::Vpc => vpc(&Head { bytes: head, whole }).map(Some),
    }
}

/// The bytes read, and whether they are the whole file.
struct Head<'a> {
    bytes: &'a [u8],
    whole: bool,
}

impl Head<'_> {
    /// `len` bytes at `at`, or why they cannot be looked at: past the end of the file, or past
    /// what ferry reads (then the file is refused rather than guessed about).
    fn get(&self, at: u64, len: usize, what: &str) -> Result<&[u8], String> {
        let end = at.saturating_add(len as u64);
        if end <= self.bytes.len() as u64 {
            let at = at as usize;
            return Ok(&self.bytes[at..at + len]);
        }
        if self.whole {
            Err(format!(
                "ends before its {what} (at byte {at}): it is cut short or not this format"
            ))
        } else {
            Err(format!(
                "keeps its {what} at byte {at}, beyond the first {} bytes ferry reads to check an image: it is refused rather than imported unchecked",
                self.bytes.len()
            ))
        }
    }

    fn le32(&self, at: u64, what: &str) -> Result<u32, String> {
        let b = self.get(at, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn le64(&self, at: u64, what: &str) -> Result<u64, String> {
        let b = self.get(at, 8, what)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        Ok(u64::from_le_bytes(x))
    }

    fn be32(&self, at: u64, what: &str) -> Result<u32, String> {
        let b = self.get(at, 4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn be64(&self, at: u64, what: &str) -> Result<u64, String> {
        let b = self.get(at, 8, what)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        Ok(u64::from_be_bytes(x))
    }

    /// Up to `len` bytes at `at`, fewer when the file (not the read) ends first.
    fn text(&self, at: u64, len: usize, what: &str) -> Result<&[u8], String> {
        let available = (self.bytes.len() as u64).saturating_sub(at);
        if self.whole && available < len as u64 {
            return self.get(at, available as usize, what);
        }
        self.get(at, len, what)
    }
}

const SECTOR: u64 = 512;

// ---- VMDK -----------------------------------------------------------------------------------

/// Sector QEMU and libvirt read a sparse VMDK's embedded descriptor from, whatever the header
/// says, and how many sectors of it.
const VMDK_DESC_SECTOR: u64 = 1;
const VMDK_DESC_SECTORS: u64 = 20;

fn vmdk(h: &Head) -> Result<u64, String> {
    let magic = h.get(0, 4, "VMDK header")?;
    if magic != b"KDMV" {
        let start = &h.bytes[..h.bytes.len().min(64)];
        let text = String::from_utf8_lossy(start).to_ascii_lowercase();
        return Err(if magic == b"COWD" {
            "is a VMDK3 (COWD) image, which ferry does not import: convert it to a monolithicSparse or streamOptimized VMDK".into()
        } else if text.contains("disk descriptorfile") || text.starts_with('#') {
            "is a VMDK text descriptor, which keeps the disk's data in other files it names (any path on the host): only single-file VMDKs (monolithicSparse or streamOptimized) are imported".into()
        } else {
            "is not a sparse VMDK (it does not start with the KDMV magic): declare the format it has".into()
        });
    }
    let version = h.le32(4, "VMDK header")?;
    if !(1..=3).contains(&version) {
        return Err(format!(
            "is VMDK version {version}, which ferry does not import"
        ));
    }
    let capacity = h.le64(12, "VMDK header")?;
    if capacity == 0 {
        return Err(
            "is a sparse VMDK of capacity 0, which QEMU reads as a descriptor naming other files: refused"
                .into(),
        );
    }
    let desc_offset = h.le64(28, "VMDK header")?;
    let desc_size = h.le64(36, "VMDK header")?;
    let mut places = vec![(VMDK_DESC_SECTOR, VMDK_DESC_SECTORS)];
    if desc_offset != 0 && (desc_offset, desc_size) != places[0] {
        if desc_size == 0 || desc_size > HEAD_LIMIT as u64 / SECTOR {
            return Err(format!(
                "has an embedded descriptor of {desc_size} sectors, which ferry does not read"
            ));
        }
        places.push((desc_offset, desc_size));
    }
    for (sector, sectors) in places {
        let bytes = h.text(
            sector * SECTOR,
            (sectors * SECTOR) as usize,
            "embedded VMDK descriptor",
        )?;
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        vmdk_descriptor(&String::from_utf8_lossy(&bytes[..end]))?;
    }
    capacity
        .checked_mul(SECTOR)
        .ok_or_else(|| "has a capacity too large for a disk".to_string())
}

/// Whether an embedded VMDK descriptor describes a self-contained image. Bytes that are no
/// descriptor at all (a header written without one) name nothing and pass.
fn vmdk_descriptor(text: &str) -> Result<(), String> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("parentfilenamehint") {
        return Err(
            "is a VMDK whose descriptor names a parent file (parentFileNameHint): differencing images are refused, as the conversion would copy that file"
                .into(),
        );
    }
    let mut extents = Vec::new();
    let mut create_type = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')),
            None => (String::new(), line),
        };
        match key.as_str() {
            "parentcid" if !value.eq_ignore_ascii_case("ffffffff") => {
                return Err(format!(
                    "is a VMDK whose descriptor names a parent (parentCID={value}): differencing images are refused"
                ));
            }
            "createtype" => create_type = Some(value.to_ascii_lowercase()),
            "" => {
                let access = value.split_whitespace().next().unwrap_or_default();
                if matches!(access, "RW" | "RDONLY" | "NOACCESS") {
                    extents.push(value);
                }
            }
            _ => {}
        }
    }
    if text.trim().is_empty() {
        return Ok(());
    }
    if let Some(t) = &create_type
        && !matches!(t.as_str(), "monolithicsparse" | "streamoptimized")
    {
        return Err(format!(
            "is a VMDK of type {t:?}, whose data lives in other files: only monolithicSparse and streamOptimized VMDKs are imported"
        ));
    }
    match extents.as_slice() {
        [] if create_type.is_none() => Ok(()),
        [one] => vmdk_extent(one),
        [] => Err("is a VMDK whose descriptor names no extent".into()),
        many => Err(format!(
            "is a VMDK whose descriptor names {} extents: only single-file VMDKs are imported",
            many.len()
        )),
    }
}

/// An extent line must be the file itself: `RW <sectors> SPARSE "<bare file name>"`.
fn vmdk_extent(line: &str) -> Result<(), String> {
    let mut words = line.splitn(4, char::is_whitespace);
    let (_access, _sectors, kind, name) = (
        words.next(),
        words.next(),
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default().trim(),
    );
    let name = name
        .strip_prefix('"')
        .and_then(|n| n.split_once('"'))
        .map(|(n, rest)| (n, rest.trim()));
    match (kind, name) {
        ("SPARSE", Some((file, "")))
            if !file.is_empty() && !file.contains(['/', '\\']) && file != "." && file != ".." =>
        {
            Ok(())
        }
        _ => Err(format!(
            "is a VMDK whose descriptor names the extent {line:?}: only the file itself (one SPARSE extent by a bare file name) is accepted, as the conversion would read any file named there"
        )),
    }
}

// ---- VHDX -----------------------------------------------------------------------------------

/// GUIDs as they are stored (little-endian first three fields).
const VHDX_METADATA_REGION: [u8; 16] = guid(
    0x8B7CA206,
    0x4790,
    0x4B9A,
    *b"\xB8\xFE\x57\x5F\x05\x0F\x88\x6E",
);
const VHDX_PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D35F2D,
    0xB30B,
    0x454D,
    *b"\xAB\xF7\xD3\xD8\x48\x34\xAB\x0C",
);
const VHDX_FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA16737,
    0xFA36,
    0x4D43,
    *b"\xB3\xB6\x33\xF0\xAA\x44\xE7\x6B",
);
const VHDX_VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA54224,
    0xCD1B,
    0x4876,
    *b"\xB2\x11\x5D\xBE\xD8\x3B\xF4\xB8",
);
const VHDX_LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141BF1D,
    0xA96F,
    0x4709,
    *b"\xBA\x47\xF2\x33\xA8\xFA\xAB\x5F",
);
const VHDX_BAT_REGION: [u8; 16] = guid(
    0x2DC27766,
    0xF623,
    0x4200,
    *b"\x9D\x64\x11\x5E\x9B\xFD\x4A\x08",
);
/// File parameters flag: the disk is a differencing disk.
const VHDX_HAS_PARENT: u32 = 1 << 1;
/// Most entries a region or metadata table holds.
const VHDX_MAX_ENTRIES: u32 = 2047;

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Where a VHDX keeps its blocks: what ferry needs to read the disk's content out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxLayout {
    /// Size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes per payload block (1 MiB to 256 MiB, a power of two).
    pub block_size: u64,
    /// Bytes per logical sector (512 or 4096).
    pub logical_sector: u64,
    /// The block allocation table: its offset in the file and its length.
    pub bat_offset: u64,
    pub bat_length: u64,
}

/// Where a block of the guest's disk is in a VHDX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdxBlock {
    /// Reads as zeros (never written, discarded, or zeroed).
    Zero,
    /// At this byte offset of the file.
    At(u64),
}

impl VhdxLayout {
    /// Payload blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.virtual_size.div_ceil(self.block_size)
    }

    /// Payload blocks per sector-bitmap block: the BAT interleaves one bitmap entry after each
    /// run of this many payload entries.
    fn chunk_ratio(&self) -> u64 {
        ((1u64 << 23) * self.logical_sector) / self.block_size
    }

    /// Bytes of the BAT that describe the payload blocks.
    pub fn bat_bytes(&self) -> u64 {
        let n = self.blocks();
        (n + n.saturating_sub(1) / self.chunk_ratio()) * 8
    }

    /// Each payload block's place, from the BAT's first [`VhdxLayout::bat_bytes`] bytes, for a
    /// file of `file_size` bytes. A partially present block (a differencing disk's) or an
    /// entry pointing outside the file is refused.
    pub fn locate(&self, bat: &[u8], file_size: u64) -> Result<Vec<VhdxBlock>, String> {
        if (bat.len() as u64) < self.bat_bytes() {
            return Err("is a VHDX whose block allocation table is cut short".into());
        }
        let ratio = self.chunk_ratio();
        (0..self.blocks())
            .map(|i| {
                let at = ((i + i / ratio) * 8) as usize;
                let mut e = [0u8; 8];
                e.copy_from_slice(&bat[at..at + 8]);
                let entry = u64::from_le_bytes(e);
                match entry & 7 {
                    0..=3 => Ok(VhdxBlock::Zero),
                    6 => {
                        let offset = (entry >> 20) << 20;
                        if offset < (1 << 20) || offset.saturating_add(self.block_size) > file_size {
                            Err(format!(
                                "is a VHDX whose block {i} lies outside the file (at byte {offset})"
                            ))
                        } else {
                            Ok(VhdxBlock::At(offset))
                        }
                    }
                    7 => Err(
                        "is a differencing VHDX (a block is partially present, the rest in its parent): only self-contained images are imported"
                            .into(),
                    ),
                    s => Err(format!("is a VHDX with a block in unknown state {s}")),
                }
            })
            .collect()
    }
}

/// The layout of the VHDX whose first bytes are `head` (the whole file when `whole`), if it is
/// a self-contained image; what is wrong with it otherwise.
pub fn vhdx_layout(head: &[u8], whole: bool) -> Result<VhdxLayout, String> {
    vhdx(&Head { bytes: head, whole })
}

/// What a metadata table says.
#[derive(Default)]
struct VhdxMetadata {
    virtual_size: Option<u64>,
    block_size: Option<u64>,
    logical_sector: Option<u64>,
}

fn vhdx(h: &Head) -> Result<VhdxLayout, String> {
    if h.get(0, 8, "VHDX file identifier")? != b"vhdxfile" {
        return Err(
            "is not a VHDX image (it does not start with \"vhdxfile\"): declare the format it has"
                .into(),
        );
    }
    // The current header is the one with the higher sequence number.
    let mut current: Option<(u64, u64)> = None;
    for at in [64 * 1024u64, 128 * 1024] {
        if h.get(at, 4, "VHDX header")? == b"head" {
            let seq = h.le64(at + 8, "VHDX header")?;
            if current.is_none_or(|(s, _)| seq > s) {
                current = Some((seq, at));
            }
        }
    }
    let Some((_, header)) = current else {
        return Err("is a VHDX without a valid header".into());
    };
    if h.get(header + 48, 16, "VHDX header")?
        .iter()
        .any(|b| *b != 0)
    {
        return Err(
            "is a VHDX with a log to replay (it was not closed cleanly): open and close it in Hyper-V, or convert it, first"
                .into(),
        );
    }
    let mut found: Option<(VhdxMetadata, u64, u64)> = None;
    for at in [192 * 1024u64, 256 * 1024] {
        if h.get(at, 4, "VHDX region table")? != b"regi" {
            continue;
        }
        let count = h.le32(at + 8, "VHDX region table")?;
        if count > VHDX_MAX_ENTRIES {
            return Err(format!(
                "is a VHDX with {count} regions, more than the format allows"
            ));
        }
        let (mut metadata, mut bat) = (Vec::new(), Vec::new());
        for i in 0..u64::from(count) {
            let entry = at + 16 + i * 32;
            let id = h.get(entry, 16, "VHDX region table")?;
            let offset = h.le64(entry + 16, "VHDX region table")?;
            let length = u64::from(h.le32(entry + 24, "VHDX region table")?);
            if id == VHDX_METADATA_REGION {
                metadata.push(vhdx_metadata(h, offset)?);
            } else if id == VHDX_BAT_REGION {
                bat.push((offset, length));
            }
        }
        match (metadata.pop(), metadata.is_empty(), bat.as_slice()) {
            (Some(m), true, [(offset, length)]) => {
                if found.is_none() {
                    found = Some((m, *offset, *length));
                }
            }
            (m, _, b) => {
                return Err(format!(
                    "is a VHDX whose region table lists {} metadata regions and {} allocation tables instead of one each",
                    metadata.len() + usize::from(m.is_some()),
                    b.len()
                ));
            }
        }
    }
    let Some((m, bat_offset, bat_length)) = found else {
        return Err("is a VHDX without a region table".into());
    };
    let virtual_size = m
        .virtual_size
        .ok_or("is a VHDX whose metadata gives no virtual disk size")?;
    let block_size = m
        .block_size
        .ok_or("is a VHDX whose metadata gives no block size")?;
    let logical_sector = m
        .logical_sector
        .ok_or("is a VHDX whose metadata gives no logical sector size")?;
    if !block_size.is_power_of_two() || !((1 << 20)..=(256 << 20)).contains(&block_size) {
        return Err(format!(
            "is a VHDX with a block size of {block_size} bytes, which the format does not allow"
        ));
    }
    if !matches!(logical_sector, 512 | 4096) {
        return Err(format!(
            "is a VHDX with a logical sector size of {logical_sector} bytes, which the format does not allow"
        ));
    }
    if virtual_size == 0 || virtual_size > (64u64 << 40) {
        return Err(format!(
            "is a VHDX of {virtual_size} bytes, which the format does not allow"
        ));
    }
    let layout = VhdxLayout {
        virtual_size,
        block_size,
        logical_sector,
        bat_offset,
        bat_length,
    };
    if layout.bat_bytes() > bat_length {
        return Err("is a VHDX whose block allocation table is smaller than its disk needs".into());
    }
    Ok(layout)
}

/// What the metadata table at `region` says, or why the image is refused.
fn vhdx_metadata(h: &Head, region: u64) -> Result<VhdxMetadata, String> {
    if h.get(region, 8, "VHDX metadata table")? != b"metadata" {
        return Err("is a VHDX whose metadata region has no metadata table".into());
    }
    let count = u32::from(u16::from_le_bytes({
        let b = h.get(region + 10, 2, "VHDX metadata table")?;
        [b[0], b[1]]
    }));
    if count > VHDX_MAX_ENTRIES {
        return Err(format!(
            "is a VHDX with {count} metadata items, more than the format allows"
        ));
    }
    let mut m = VhdxMetadata::default();
    for i in 0..u64::from(count) {
        let entry = region + 32 + i * 32;
        let id = h.get(entry, 16, "VHDX metadata table")?;
        let offset = u64::from(h.le32(entry + 16, "VHDX metadata table")?);
        if id == VHDX_PARENT_LOCATOR {
            return Err(
                "is a differencing VHDX (its metadata has a parent locator naming another file): only self-contained images are imported"
                    .into(),
            );
        }
        if id == VHDX_FILE_PARAMETERS {
            if h.le32(region + offset + 4, "VHDX file parameters")? & VHDX_HAS_PARENT != 0 {
                return Err(
                    "is a differencing VHDX (its file parameters say it has a parent): only self-contained images are imported"
                        .into(),
                );
            }
            m.block_size = Some(u64::from(h.le32(region + offset, "VHDX file parameters")?));
        } else if id == VHDX_VIRTUAL_DISK_SIZE {
            m.virtual_size = Some(h.le64(region + offset, "VHDX virtual disk size")?);
        } else if id == VHDX_LOGICAL_SECTOR_SIZE {
            m.logical_sector = Some(u64::from(
                h.le32(region + offset, "VHDX logical sector size")?,
            ));
        }
    }
    Ok(m)
}

// ---- VDI ------------------------------------------------------------------------------------

const VDI_SIGNATURE: u32 = 0xbeda_107f;

fn vdi(h: &Head) -> Result<u64, String> {
    if h.le32(0x40, "VDI header")? != VDI_SIGNATURE {
        return Err(
            "is not a VDI image (no VDI signature at byte 64): declare the format it has".into(),
        );
    }
    let version = h.le32(0x44, "VDI header")?;
    if version != 0x0001_0001 {
        return Err(format!(
            "is VDI version {}.{}, which ferry does not import (1.1 only)",
            version >> 16,
            version & 0xffff
        ));
    }
    match h.le32(0x4c, "VDI header")? {
        1 | 2 => h.le64(0x170, "VDI header"),
        3 => Err("is a VDI undo image, which names its parent: only normal and fixed VDIs are imported".into()),
        4 => Err("is a differencing VDI, which names its parent: only normal and fixed VDIs are imported".into()),
        t => Err(format!("is a VDI of unknown image type {t}")),
    }
}

// ---- VHD (vpc) ------------------------------------------------------------------------------

const VHD_DYNAMIC: u32 = 3;
const VHD_DIFFERENCING: u32 = 4;

fn vpc(h: &Head) -> Result<u64, String> {
    if h.get(0, 8, "VHD footer")? != b"conectix" {
        return Err(
            "is not a dynamic VHD (it does not start with the \"conectix\" footer copy); a fixed VHD is raw data with a 512-byte footer: import it as raw"
                .into(),
        );
    }
    let size = h.be64(48, "VHD footer")?;
    match h.be32(60, "VHD footer")? {
        VHD_DYNAMIC => {}
        VHD_DIFFERENCING => {
            return Err(
                "is a differencing VHD (disk type 4), which names its parent: only self-contained images are imported"
                    .into(),
            );
        }
        2 => {
            return Err(
                "is a fixed VHD: it is raw data with a 512-byte footer, import it as raw".into(),
            );
        }
        t => return Err(format!("is a VHD of unknown disk type {t}")),
    }
    let dynamic = h.be64(16, "VHD footer")?;
    if h.get(dynamic, 8, "VHD dynamic header")? != b"cxsparse" {
        return Err("is a dynamic VHD without a valid dynamic header".into());
    }
    // Eight parent locator entries of 24 bytes; a platform code names a parent's location.
    for i in 0..8u64 {
        if h.be32(dynamic + 576 + i * 24, "VHD parent locators")? != 0 {
            return Err(
                "is a VHD with a parent locator naming another file: only self-contained images are imported"
                    .into(),
            );
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests;
