//! Whether an image or volume may be opened in the format ferry was told it has, judged from the
//! first bytes of the file.
//!
//! The format always comes from the spec or the HostPool, never from the file: a file attached
//! as `raw` is only ever bytes to QEMU. A file attached as `qcow2` (or used as the backing file
//! of an overlay as `qcow2`) is opened by QEMU, which follows what its header names: a backing
//! file, or an external data file. Either would let a guest read (or write) any file of the
//! host, such as `/etc/shadow` or another VM's disk, so an image whose header names one is
//! refused; so is a file that is not qcow2 at all.

use crate::api::virtual_machine::ImageFormat;

/// How many bytes of a file [`check`] needs: the qcow2 header up to its feature bits.
pub const HEAD_BYTES: usize = 104;

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Incompatible feature bit of qcow2 v3: the guest's data lives in another file, named in a
/// header extension.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// What a qcow2 header says, as far as ferry cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2 {
    pub version: u32,
    /// Size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
}

/// Check `head` (the first [`HEAD_BYTES`] or more bytes of a file, fewer when the file is
/// shorter) for use as `format`. `Ok(None)` for raw, the qcow2 header's facts for qcow2; the
/// error says what is wrong, for a sentence that starts with the file's name.
pub fn check(format: ImageFormat, head: &[u8]) -> Result<Option<Qcow2>, String> {
    match format {
        ImageFormat::Raw => Ok(None),
        ImageFormat::Qcow2 => qcow2(head).map(Some),
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn qcow2(head: &[u8]) -> Result<Qcow2, String> {
    if head.len() < 4 || head[..4] != QCOW2_MAGIC {
        return Err(
            "is not a qcow2 image (it does not start with the qcow2 magic): declare the format it has"
                .into(),
        );
    }
    if head.len() < 72 {
        return Err("is too short for a qcow2 header".into());
    }
    let version = be32(head, 4);
    if !(2..=3).contains(&version) {
        return Err(format!(
            "is qcow2 version {version}, which ferry does not open"
        ));
    }
    let backing_offset = be64(head, 8);
    let backing_size = be32(head, 16);
    if backing_offset != 0 || backing_size != 0 {
        return Err(
            "names a backing file in its header: QEMU would let the guest read that file; only images without one are used"
                .into(),
        );
    }
    if version == 3 {
        if head.len() < 80 {
            return Err("is too short for a qcow2 v3 header".into());
        }
        if be64(head, 72) & EXTERNAL_DATA_FILE != 0 {
            return Err(
                "keeps its data in an external file named in its header: QEMU would let the guest read and write that file"
                    .into(),
            );
        }
    }
    Ok(Qcow2 {
        version,
        virtual_size: be64(head, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header of `version` with `size`, a backing file at `backing` (0: none) and the
    /// incompatible feature bits `features` (v3).
    fn header(version: u32, size: u64, backing: u64, features: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_BYTES];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        if backing != 0 {
            h[16..20].copy_from_slice(&11u32.to_be_bytes());
        }
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[72..80].copy_from_slice(&features.to_be_bytes());
        h
    }

    #[test]
    fn what_may_be_opened_as_what() {
        use ImageFormat::*;
        let plain3 = header(3, 1 << 30, 0, 0);
        let plain2 = header(2, 1 << 20, 0, 0);
        let backed = header(3, 1 << 30, 512, 0);
        let data_file = header(3, 1 << 30, 0, EXTERNAL_DATA_FILE);
        let dirty = header(3, 1 << 30, 0, 1);
        let v4 = header(4, 1, 0, 0);
        let mut size_only_backing = header(2, 1, 0, 0);
        size_only_backing[16..20].copy_from_slice(&5u32.to_be_bytes());
        type Case<'a> = (&'a str, ImageFormat, &'a [u8], Result<Option<u64>, &'a str>);
        let cases: Vec<Case> = vec![
            (
                "raw is bytes, whatever they look like",
                Raw,
                &backed,
                Ok(None),
            ),
            ("raw, empty file", Raw, &[], Ok(None)),
            (
                "qcow2 v3 without backing file",
                Qcow2,
                &plain3,
                Ok(Some(1 << 30)),
            ),
            (
                "qcow2 v2 without backing file",
                Qcow2,
                &plain2,
                Ok(Some(1 << 20)),
            ),
            (
                "a dirty v3 image is QEMU's business",
                Qcow2,
                &dirty,
                Ok(Some(1 << 30)),
            ),
            (
                "a backing file is refused",
                Qcow2,
                &backed,
                Err("backing file"),
            ),
            (
                "a backing size without offset too",
                Qcow2,
                &size_only_backing,
                Err("backing file"),
            ),
            (
                "an external data file is refused",
                Qcow2,
                &data_file,
                Err("external file"),
            ),
            (
                "raw content declared qcow2",
                Qcow2,
                b"hello, world, this is raw",
                Err("not a qcow2 image"),
            ),
            (
                "empty file declared qcow2",
                Qcow2,
                &[],
                Err("not a qcow2 image"),
            ),
            ("a cut header", Qcow2, &plain3[..40], Err("too short")),
            (
                "a v3 header cut before its features",
                Qcow2,
                &plain3[..75],
                Err("too short"),
            ),
            ("an unknown version", Qcow2, &v4, Err("version 4")),
        ];
        for (name, format, head, want) in cases {
            let got = check(format, head).map(|q| q.map(|q| q.virtual_size));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name}: {g}"),
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }
}
