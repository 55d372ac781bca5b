//! One member of a tar archive (an OVA), picked out of the archive's bytes as they stream past.
//!
//! An OVA is a tar archive (POSIX ustar, with GNU or pax extensions for long names) holding an
//! OVF descriptor, disk files and optionally a manifest. The importer downloads the whole
//! archive (its SHA-256 covers every byte) and hands the bytes to a [`MemberWalk`], which returns
//! only the bytes of the wanted member. Nothing is extracted to a file system: the walk only
//! decides which bytes are the member's.
//!
//! The walk reads 512-byte headers (the name, split in ustar's `prefix` and `name` fields; the
//! size in octal or GNU base-256; the header checksum), GNU long-name entries (`L`), pax
//! extended headers (`x`: `path` and `size`; `g` global headers are skipped) and the end of the
//! archive (a zero block). The archive is refused when:
//!
//! - the wanted member is not in it (the message lists what is);
//! - it holds two entries of the wanted name (which one is the disk would be a guess);
//! - any entry's name is absolute or has a `..` segment (no OVA tool writes one: such an archive
//!   is crafted);
//! - the wanted member is not a regular file (a link, a directory, a GNU or pax sparse file);
//! - a header is damaged (bad checksum, a size that is no number) or the archive is cut short.

/// Bytes per tar block.
const BLOCK: usize = 512;
/// Longest GNU long name or pax extended header the walk reads.
const MAX_META: u64 = 64 * 1024;
/// Member names kept for the message when the wanted one is missing.
const NAMES_KEPT: usize = 20;

/// What the walk is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header block.
    Header,
    /// In an entry's data: `left` bytes of it, then `pad` bytes to the block boundary.
    Data { left: u64, pad: u64, kind: Kind },
    /// Past the end-of-archive block: the rest is padding.
    End,
}

/// Whose data the walk is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The wanted member's: handed out.
    Member,
    /// Another entry's: skipped.
    Skip,
    /// A GNU long name for the next entry: collected.
    LongName,
    /// A pax extended header for the next entry: collected.
    Pax,
}

/// A walk through a tar archive's bytes for the member named `want`, or for every regular file.
#[derive(Debug, Clone)]
pub struct MemberWalk {
    /// The member wanted; `None`: every regular file (each name at most once).
    want: Option<String>,
    /// The name of the entry whose data is being read.
    current: String,
    /// Regular files seen, with their sizes (every walk).
    files: Vec<(String, u64)>,
    state: State,
    /// A header block being collected, or a long name or pax header.
    buf: Vec<u8>,
    /// The next entry's name from a GNU long name or a pax `path`.
    next_path: Option<String>,
    /// The next entry's size from a pax `size`.
    next_size: Option<u64>,
    /// The next entry is a pax sparse file.
    next_sparse: bool,
    /// The member's size, once its header was read.
    member: Option<u64>,
    /// The member's data was read to its end.
    member_done: bool,
    /// Names of the entries seen (the first [`NAMES_KEPT`]), and how many there were.
    names: Vec<String>,
    entries: usize,
    /// Bytes of the archive walked through.
    offset: u64,
}

/// `name` as the walk compares it: without leading `./`.
fn normal(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

/// Why an entry's name is refused: absolute, or with a `..` segment.
pub fn unsafe_path(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        Some("is an absolute path")
    } else if name.split('/').any(|s| s == "..") {
        Some("has a .. segment")
    } else {
        None
    }
}

impl MemberWalk {
    /// A walk for member `want` (leading `./` ignored, on both sides).
    pub fn new(want: &str) -> Self {
        Self::walk(Some(normal(want).to_string()))
    }

    /// A walk that hands out every regular file's bytes, refusing an archive that holds a name
    /// twice.
    pub fn every_file() -> Self {
        Self::walk(None)
    }

    /// The regular files seen so far (names without leading `./`), with their sizes.
    pub fn files(&self) -> &[(String, u64)] {
        &self.files
    }

    fn walk(want: Option<String>) -> Self {
        MemberWalk {
            want,
            current: String::new(),
            files: Vec::new(),
            state: State::Header,
            buf: Vec::with_capacity(BLOCK),
            next_path: None,
            next_size: None,
            next_sparse: false,
            member: None,
            member_done: false,
            names: Vec::new(),
            entries: 0,
            offset: 0,
        }
    }

    /// The member's size, once its header has been read.
    pub fn member_size(&self) -> Option<u64> {
        self.member
    }

    /// Whether all of the member's data has been handed out.
    pub fn member_complete(&self) -> bool {
        self.member_done
    }

    /// Walk through the next bytes of the archive, appending the member's bytes among them to
    /// `out`; what is wrong with the archive otherwise (a phrase after "the archive").
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.feed_each(input, &mut |_, bytes| out.extend_from_slice(bytes))
    }

    /// [`MemberWalk::feed`], handing each piece of a wanted file's bytes to `out` with the
    /// file's name.
    pub fn feed_each(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&str, &[u8]),
    ) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::End => return Ok(()),
                State::Header => {
                    let n = (BLOCK - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.offset += n as u64;
                    if self.buf.len() == BLOCK {
                        let block = std::mem::take(&mut self.buf);
                        self.header(&block)?;
                    }
                }
                State::Data { left, pad, kind } => {
                    if left > 0 {
                        let n = left.min(input.len() as u64) as usize;
                        match kind {
                            Kind::Member => out(&self.current, &input[..n]),
                            Kind::Skip => {}
                            Kind::LongName | Kind::Pax => self.buf.extend_from_slice(&input[..n]),
                        }
                        input = &input[n..];
                        self.offset += n as u64;
                        self.state = State::Data {
                            left: left - n as u64,
                            pad,
                            kind,
                        };
                        if left - n as u64 == 0 && kind == Kind::Member {
                            self.member_done = true;
                        }
                        continue;
                    }
                    let n = pad.min(input.len() as u64) as usize;
                    input = &input[n..];
                    self.offset += n as u64;
                    if pad - (n as u64) > 0 {
                        self.state = State::Data {
                            left: 0,
                            pad: pad - n as u64,
                            kind,
                        };
                        continue;
                    }
                    self.entry_done(kind)?;
                }
            }
        }
        // An entry with no data (or data that ended exactly here) is done.
        if let State::Data {
            left: 0,
            pad: 0,
            kind,
        } = self.state
        {
            self.entry_done(kind)?;
        }
        Ok(())
    }

    /// The archive ended: the member's size, or why the archive is refused.
    pub fn finish(&self) -> Result<u64, String> {
        let inside = matches!(self.state, State::Data { .. }) || !self.buf.is_empty();
        if inside {
            return Err(format!(
                "is cut short: it ends inside an entry, after {} bytes",
                self.offset
            ));
        }
        match self.member {
            Some(size) if self.member_done || size == 0 => Ok(size),
            Some(_) => Err("is cut short: it ends inside the member".into()),
            None if self.want.is_none() => Ok(0),
            None => {
                let more = self.entries.saturating_sub(self.names.len());
                Err(format!(
                    "has no member {:?} (it holds {}{})",
                    self.want.as_deref().unwrap_or_default(),
                    if self.names.is_empty() {
                        "nothing".to_string()
                    } else {
                        self.names
                            .iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ))
            }
        }
    }

    /// An entry's data (and padding) has been read.
    fn entry_done(&mut self, kind: Kind) -> Result<(), String> {
        let data = std::mem::take(&mut self.buf);
        match kind {
            Kind::LongName => {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                self.next_path = Some(
                    String::from_utf8(data[..end].to_vec())
                        .map_err(|_| "has a GNU long name that is not UTF-8".to_string())?,
                );
            }
            Kind::Pax => self.pax(&data)?,
            Kind::Member => self.member_done = true,
            Kind::Skip => {}
        }
        self.state = State::Header;
        Ok(())
    }

    /// Read the records of a pax extended header (`<length> <key>=<value>\n`).
    fn pax(&mut self, mut data: &[u8]) -> Result<(), String> {
        let bad = || "has a damaged pax extended header".to_string();
        while !data.is_empty() {
            let space = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
            if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err(bad());
            }
            let record = &data[space + 1..len - 1];
            data = &data[len..];
            let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => {
                    self.next_path = Some(
                        String::from_utf8(value.to_vec())
                            .map_err(|_| "has a pax path that is not UTF-8".to_string())?,
                    )
                }
                b"size" => {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?;
                    self.next_size = Some(size);
                }
                k if k.starts_with(b"GNU.sparse.") => self.next_sparse = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Read a header block.
    fn header(&mut self, block: &[u8]) -> Result<(), String> {
        let at = self.offset - BLOCK as u64;
        if block.iter().all(|b| *b == 0) {
            self.state = State::End;
            return Ok(());
        }
        let stored = octal(&block[148..156])
            .ok_or_else(|| format!("has a damaged header at byte {at} (no checksum)"))?;
        let sum: u64 = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if sum != stored {
            return Err(format!(
                "has a damaged header at byte {at} (checksum mismatch): it is not a tar archive, or it is corrupt"
            ));
        }
        let typeflag = block[156];
        let size = match self.next_size.take() {
            Some(s) if !matches!(typeflag, b'x' | b'g' | b'L' | b'K') => s,
            other => {
                if let Some(s) = other {
                    // A pax size belongs to the next real entry, not to another meta entry.
                    self.next_size = Some(s);
                }
                size(&block[124..136])
                    .ok_or_else(|| format!("has a damaged header at byte {at} (its size)"))?
            }
        };
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let meta = |kind, what: &str| {
            if size > MAX_META {
                Err(format!(
                    "has a {what} of {size} bytes at byte {at}, more than ferry reads"
                ))
            } else {
                Ok(State::Data {
                    left: size,
                    pad,
                    kind,
                })
            }
        };
        match typeflag {
            b'L' => {
                self.state = meta(Kind::LongName, "GNU long name")?;
                return Ok(());
            }
            b'x' => {
                self.state = meta(Kind::Pax, "pax extended header")?;
                return Ok(());
            }
            // Global pax headers and GNU long link names say nothing about which entry is which.
            b'g' | b'K' => {
                self.state = State::Data {
                    left: size,
                    pad,
                    kind: Kind::Skip,
                };
                return Ok(());
            }
            _ => {}
        }
        let name = match self.next_path.take() {
            Some(p) => p,
            None => {
                let field = |r: std::ops::Range<usize>| {
                    let f = &block[r];
                    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
                    String::from_utf8_lossy(&f[..end]).into_owned()
                };
                let (name, prefix) = (field(0..100), field(345..500));
                if &block[257..262] == b"ustar"
                    && &block[257..263] != b"ustar "
                    && !prefix.is_empty()
                {
                    format!("{prefix}/{name}")
                } else {
                    name
                }
            }
        };
        let sparse = std::mem::take(&mut self.next_sparse) || typeflag == b'S';
        if let Some(why) = unsafe_path(&name) {
            return Err(format!(
                "holds an entry whose name {why} ({name:?}): such an archive is refused"
            ));
        }
        let norm = normal(&name).trim_end_matches('/').to_string();
        self.entries += 1;
        if self.names.len() < NAMES_KEPT && !norm.is_empty() {
            self.names.push(norm.clone());
        }
        let regular = matches!(typeflag, b'0' | 0 | b'7') && !sparse;
        let mut kind = Kind::Skip;
        if regular && self.want.is_none() {
            if self.files.iter().any(|(n, _)| *n == norm) {
                return Err(format!(
                    "holds two entries named {norm:?}: which one is meant would be a guess"
                ));
            }
            kind = Kind::Member;
            self.current = norm.clone();
        }
        if regular {
            self.files.push((norm.clone(), size));
        }
        if self.want.as_deref() == Some(norm.as_str()) {
            if self.member.is_some() {
                return Err(format!(
                    "holds two entries named {norm:?}: which one is the disk would be a guess"
                ));
            }
            if !regular {
                return Err(format!(
                    "holds {norm:?} as {}, not as a regular file",
                    match typeflag {
                        b'1' => "a hard link",
                        b'2' => "a symbolic link",
                        b'5' => "a directory",
                        b'S' => "a GNU sparse file",
                        _ if sparse => "a sparse file",
                        _ => "a special file",
                    }
                ));
            }
            self.member = Some(size);
            self.current = norm.clone();
            kind = Kind::Member;
            if size == 0 {
                self.member_done = true;
            }
        }
        // Links, directories and devices carry no data whatever their size field says.
        let data = if matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            0
        } else {
            size
        };
        self.state = State::Data {
            left: data,
            pad: if data == 0 { 0 } else { pad },
            kind,
        };
        Ok(())
    }
}

/// An octal header field (spaces and NULs around it allowed).
fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A size field: octal, or GNU base-256 (the first byte's high bit set) for sizes of 8 GiB and
/// more.
fn size(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(b) if b & 0x80 != 0 => {
            if b & 0x40 != 0 {
                return None; // negative
            }
            let mut v: u64 = u64::from(b & 0x3f);
            for b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
            }
            Some(v)
        }
        _ => octal(field),
    }
}

#[cfg(test)]
mod tests;
