//! Storage pools and volumes: looking them up, creating overlays and copies, uploading content,
//! deleting. Everything here runs on the connection's thread.

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::errors::{CallResult, Fail, found, is_connection_error};
use crate::hypervisor::xml::{
    XmlFacts, empty_elem, end, is_xml_char, start, text_elem, write_document,
};
use crate::hypervisor::{UploadSource, error_code};
use crate::plan::domain::VolumeInfo;

fn volume_info(vol: &StorageVol) -> CallResult<VolumeInfo> {
    let xml = vol.xml_desc(0)?;
    let facts = XmlFacts::parse(&xml)
        .ok_or_else(|| Fail::Other("the host returned unreadable volume XML".into()))?;
    let capacity = facts
        .text("volume/capacity")
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| Fail::Other("volume XML has no capacity in bytes".into()))?;
    Ok(VolumeInfo {
        name: vol.name()?,
        path: vol.path()?,
        capacity,
        format: facts
            .attr("volume/target/format", "type")
            .unwrap_or("raw")
            .to_string(),
    })
}

fn pool_path(pool: &StoragePool) -> CallResult<String> {
    let xml = pool.xml_desc(0)?;
    XmlFacts::parse(&xml)
        .and_then(|f| f.text("pool/target/path").map(str::to_string))
        .ok_or_else(|| Fail::Other("the pool's XML has no target path".into()))
}

fn lookup_pool(conn: &Connect, name: &str) -> CallResult<Option<StoragePool>> {
    found(
        conn.lookup_storage_pool_by_name(name),
        error_code::NO_STORAGE_POOL,
    )
}

fn require_pool(conn: &Connect, name: &str) -> CallResult<StoragePool> {
    lookup_pool(conn, name)?.ok_or_else(|| {
        Fail::Code(
            error_code::NO_STORAGE_POOL,
            format!("storage pool '{name}' not found"),
        )
    })
}

/// Refreshes a pool so volumes created or removed behind libvirt's back are seen. A pool busy
/// with another job refuses; that is not worth failing the lookup for.
pub(super) fn refresh(pool: &StoragePool) -> CallResult<()> {
    match pool.refresh(0) {
        Ok(_) => Ok(()),
        Err(e) if is_connection_error(e.code().to_raw() as i32, e.domain().to_raw() as i32) => {
            Err(Fail::Virt(e))
        }
        Err(_) => Ok(()),
    }
}

fn check_xml_value(what: &str, value: &str) -> CallResult<()> {
    if value.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(Fail::Other(format!(
            "{what} contains a character XML cannot carry"
        )))
    }
}

fn pool_xml(name: &str, path: &str) -> CallResult<String> {
    check_xml_value("pool name", name)?;
    check_xml_value("pool path", path)?;
    write_document(|w| {
        start(w, "pool", &[("type", "dir")])?;
        text_elem(w, "name", &[], name)?;
        start(w, "target", &[])?;
        text_elem(w, "path", &[], path)?;
        end(w, "target")?;
        end(w, "pool")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

/// What a new volume is.
#[derive(Clone, Copy)]
enum NewVolume<'a> {
    /// A qcow2 overlay on this volume (never written to), opened in this format.
    Overlay(&'a VolumeInfo, &'a str),
    /// An empty qcow2 volume (the target of a copy).
    Qcow2,
    /// An empty raw volume with nothing allocated (filled by an upload).
    Raw,
}

/// The XML of a new volume of `capacity` bytes.
fn volume_xml(name: &str, capacity: u64, kind: NewVolume) -> CallResult<String> {
    check_xml_value("volume name", name)?;
    if let NewVolume::Overlay(backing, format) = kind {
        check_xml_value("backing path", &backing.path)?;
        check_xml_value("backing format", format)?;
    }
    let capacity = capacity.to_string();
    let format = match kind {
        NewVolume::Raw => "raw",
        NewVolume::Overlay(..) | NewVolume::Qcow2 => "qcow2",
    };
    write_document(|w| {
        start(w, "volume", &[])?;
        text_elem(w, "name", &[], name)?;
        text_elem(w, "capacity", &[("unit", "bytes")], &capacity)?;
        if let NewVolume::Raw = kind {
            text_elem(w, "allocation", &[("unit", "bytes")], "0")?;
        }
        start(w, "target", &[])?;
        empty_elem(w, "format", &[("type", format)])?;
        end(w, "target")?;
        if let NewVolume::Overlay(backing, format) = kind {
            start(w, "backingStore", &[])?;
            text_elem(w, "path", &[], &backing.path)?;
            empty_elem(w, "format", &[("type", format)])?;
            end(w, "backingStore")?;
        }
        end(w, "volume")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

/// Send every chunk of `source` into `vol` over a new stream; abort the stream on any failure.
fn upload(conn: &Connect, vol: &StorageVol, source: UploadSource) -> CallResult<()> {
    let stream = Stream::new(conn, 0)?;
    if let Err(e) = vol.upload(&stream, 0, 0, 0) {
        let _ = stream.abort();
        return Err(Fail::Virt(e));
    }
    for chunk in source {
        let sent = chunk.map_err(Fail::Other).and_then(|c| {
            let mut rest = c.as_slice();
            while !rest.is_empty() {
                let n = stream.send(rest)?;
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Fail::Other("the upload stream accepted no data".into()))?;
                rest = &rest[n.min(rest.len())..];
            }
            Ok(())
        });
        if let Err(e) = sent {
            let _ = stream.abort();
            return Err(e);
        }
    }
    stream.finish()?;
    Ok(())
}

/// Make sure a pool exists and is active (defining a `dir` pool at `path` when it is missing);
/// its directory.
pub(super) fn ensure_pool(conn: &Connect, name: &str, path: Option<&str>) -> CallResult<String> {
    let pool = match lookup_pool(conn, name)? {
        Some(p) => p,
        None => {
            let Some(path) = &path else {
                return Err(Fail::Code(
                    error_code::NO_STORAGE_POOL,
                    format!("storage pool '{name}' not found and no path to create it"),
                ));
            };
            let xml = pool_xml(name, path)?;
            match conn.define_storage_pool_xml(&xml, 0) {
                Ok(p) => {
                    // Creates the directory if it is missing; harmless if it exists.
                    p.build(0)?;
                    p.set_autostart(true)?;
                    p
                }
                // Defined concurrently by another client.
                Err(e) => match lookup_pool(conn, name)? {
                    Some(p) => p,
                    None => return Err(Fail::Virt(e)),
                },
            }
        }
    };
    // Started concurrently by another client if create fails but the pool is active.
    if !pool.is_active()?
        && let Err(e) = pool.create(0)
        && !pool.is_active().unwrap_or(false)
    {
        return Err(Fail::Virt(e));
    }
    pool_path(&pool)
}

/// A volume of a pool, if it exists. Asked of the pool as libvirt knows it first; only a volume
/// it does not know (or can no longer read) is looked for again after a refresh, which sees the
/// volumes created or removed behind libvirt's back (by another host on shared storage). A
/// refresh reads every file of the pool, one refresh at a time: a failover's dozens of lookups
/// on one host need the first only.
pub(super) fn lookup_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
) -> CallResult<Option<VolumeInfo>> {
    let pool = require_pool(conn, pool)?;
    match known_volume(&pool, name) {
        Ok(Some(v)) => return Ok(Some(v)),
        Err(Fail::Virt(e))
            if is_connection_error(e.code().to_raw() as i32, e.domain().to_raw() as i32) =>
        {
            return Err(Fail::Virt(e));
        }
        // Unknown, or known but unreadable (its file went away): refresh and look again.
        Ok(None) | Err(_) => {}
    }
    refresh(&pool)?;
    known_volume(&pool, name)
}

/// A volume of `pool` as libvirt knows it now (its details read afresh from its file).
fn known_volume(pool: &StoragePool, name: &str) -> CallResult<Option<VolumeInfo>> {
    match found(
        pool.lookup_storage_vol_by_name(name),
        error_code::NO_STORAGE_VOL,
    )? {
        None => Ok(None),
        // Deleted between the lookup and reading its details: it is gone.
        Some(vol) => match volume_info(&vol) {
            Err(Fail::Virt(e)) if e.code().to_raw() as i32 == error_code::NO_STORAGE_VOL => {
                Ok(None)
            }
            r => r.map(Some),
        },
    }
}

/// A new qcow2 volume backed by `backing`.
pub(super) fn create_overlay(
    conn: &Connect,
    pool: &str,
    name: &str,
    backing: &VolumeInfo,
    backing_format: &str,
    capacity: u64,
) -> CallResult<VolumeInfo> {
    let pool = require_pool(conn, pool)?;
    let xml = volume_xml(
        name,
        capacity.max(backing.capacity),
        NewVolume::Overlay(backing, backing_format),
    )?;
    let vol = StorageVol::create_xml(&pool, &xml, 0)?;
    volume_info(&vol)
}

/// `len` bytes of a volume from `offset` (fewer when it ends first).
pub(super) fn read_at(
    conn: &Connect,
    pool: &str,
    name: &str,
    offset: u64,
    len: usize,
) -> CallResult<Vec<u8>> {
    let pool = require_pool(conn, pool)?;
    let vol = pool.lookup_storage_vol_by_name(name)?;
    let stream = Stream::new(conn, 0)?;
    if let Err(e) = vol.download(&stream, offset, len as u64, 0) {
        let _ = stream.abort();
        return Err(Fail::Virt(e));
    }
    let mut head = Vec::with_capacity(len);
    let mut buf = vec![0u8; len.max(1)];
    loop {
        match stream.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let n = usize::try_from(n).unwrap_or(0).min(buf.len());
                head.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                let _ = stream.abort();
                return Err(Fail::Virt(e));
            }
        }
    }
    stream.finish()?;
    head.truncate(len);
    Ok(head)
}

/// A standalone qcow2 copy of `source`, or nothing when the copy fails.
pub(super) fn clone_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    source: &VolumeInfo,
) -> CallResult<VolumeInfo> {
    let pool = require_pool(conn, pool)?;
    let from = pool.lookup_storage_vol_by_name(&source.name)?;
    // Checked first so that the clean-up below only ever removes what this call made.
    if found(
        pool.lookup_storage_vol_by_name(name),
        error_code::NO_STORAGE_VOL,
    )?
    .is_some()
    {
        return Err(Fail::Code(
            error_code::STORAGE_VOL_EXIST,
            format!("storage volume {name:?} exists already"),
        ));
    }
    let xml = volume_xml(name, source.capacity, NewVolume::Qcow2)?;
    match StorageVol::create_xml_from(&pool, &xml, &from, 0) {
        Ok(vol) => volume_info(&vol),
        Err(e) => {
            // libvirt removes a failed copy itself; make sure.
            if let Ok(Some(v)) = found(
                pool.lookup_storage_vol_by_name(name),
                error_code::NO_STORAGE_VOL,
            ) && let Err(err) = v.delete(0)
            {
                tracing::warn!(volume = %name, error = %err, "could not remove a failed copy");
            }
            Err(e.into())
        }
    }
}

/// A new volume filled from `source`, or nothing when the upload fails.
pub(super) fn upload_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    capacity: u64,
    source: UploadSource,
) -> CallResult<VolumeInfo> {
    let pool = require_pool(conn, pool)?;
    let xml = volume_xml(name, capacity, NewVolume::Raw)?;
    let vol = StorageVol::create_xml(&pool, &xml, 0)?;
    let uploaded = upload(conn, &vol, source).and_then(|()| {
        refresh(&pool)?;
        let vol = pool.lookup_storage_vol_by_name(name)?;
        volume_info(&vol)
    });
    if uploaded.is_err()
        && let Err(e) = vol.delete(0)
    {
        tracing::warn!(volume = %name, error = %e, "could not remove a failed upload");
    }
    uploaded
}

/// Delete a volume; success when it is gone already.
pub(super) fn delete_volume(conn: &Connect, pool: &str, name: &str) -> CallResult<()> {
    let Some(pool) = lookup_pool(conn, pool)? else {
        return Ok(());
    };
    refresh(&pool)?;
    let Some(vol) = found(
        pool.lookup_storage_vol_by_name(name),
        error_code::NO_STORAGE_VOL,
    )?
    else {
        return Ok(());
    };
    match vol.delete(0) {
        Ok(_) => Ok(()),
        Err(e) if e.code().to_raw() as i32 == error_code::NO_STORAGE_VOL => Ok(()),
        Err(e) => Err(Fail::Virt(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_xml_is_escaped() {
        let xml = pool_xml("p<&>'\"", "/srv/a b&c").unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.text("pool/name"), Some("p<&>'\""));
        assert_eq!(facts.text("pool/target/path"), Some("/srv/a b&c"));
        assert_eq!(facts.attr("pool", "type"), Some("dir"));

        let backing = VolumeInfo {
            name: "g".into(),
            path: "/srv/golden <1>.qcow2".into(),
            capacity: 1000,
            format: "raw".into(),
        };
        let xml = volume_xml("vm&1.qcow2", 1000, NewVolume::Overlay(&backing, "qcow2"))
            .unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.text("volume/name"), Some("vm&1.qcow2"));
        assert_eq!(facts.text("volume/capacity"), Some("1000"));
        assert_eq!(facts.attr("volume/capacity", "unit"), Some("bytes"));
        assert_eq!(facts.attr("volume/target/format", "type"), Some("qcow2"));
        assert_eq!(
            facts.text("volume/backingStore/path"),
            Some("/srv/golden <1>.qcow2")
        );
        assert_eq!(
            facts.attr("volume/backingStore/format", "type"),
            Some("qcow2")
        );
        assert!(pool_xml("a\0b", "/x").is_err());

        let xml = volume_xml("up", 5, NewVolume::Raw).unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.text("volume/allocation"), Some("0"));
        assert_eq!(facts.attr("volume/target/format", "type"), Some("raw"));
        assert_eq!(facts.text("volume/backingStore/path"), None);
        let xml = volume_xml("copy", 5, NewVolume::Qcow2).unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.attr("volume/target/format", "type"), Some("qcow2"));
        assert_eq!(facts.text("volume/allocation"), None);
    }
}
