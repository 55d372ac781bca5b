//! Reading ferry's metadata back from the domain XML libvirt returns.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use super::METADATA_NS;
use crate::plan::domain::{FerryMetadata, Owner, SERIAL_CONSOLE, Shape};

/// Reads ferry's metadata element (`/domain/metadata/{METADATA_NS}vm`) from domain XML as libvirt
/// returns it. Matches by namespace, not prefix. `None` for domains ferry did not make, for
/// metadata without the owner or hash, and for anything that is not well-formed XML.
pub fn parse_metadata(xml: &str) -> Option<FerryMetadata> {
    let mut reader = NsReader::from_str(xml);
    let ns = Namespace(METADATA_NS.as_bytes());
    // Local names of the open elements outside ferry's element.
    let mut path: Vec<Vec<u8>> = Vec::new();
    loop {
        let (res, event) = reader.read_resolved_event().ok()?;
        let is_ours = |e: &BytesStart, path: &[Vec<u8>]| {
            res == ResolveResult::Bound(ns)
                && e.local_name().as_ref() == b"vm"
                && path.len() == 2
                && path[0] == b"domain"
                && path[1] == b"metadata"
        };
        match event {
            Event::Start(e) if is_ours(&e, &path) => {
                let mut meta = metadata_attributes(&reader, &e)?;
                read_shape(&mut reader, ns, &mut meta.shape)?;
                return Some(meta);
            }
            Event::Empty(e) if is_ours(&e, &path) => {
                let mut meta = metadata_attributes(&reader, &e)?;
                meta.shape.consoles = legacy_consoles();
                return Some(meta);
            }
            Event::Start(e) => {
                // Only unprefixed/unnamespaced `domain` and `metadata` lead to ours.
                let local = if res == ResolveResult::Unbound {
                    e.local_name().as_ref().to_vec()
                } else {
                    Vec::new()
                };
                path.push(local);
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn metadata_attributes(reader: &NsReader<&[u8]>, e: &BytesStart) -> Option<FerryMetadata> {
    let (mut namespace, mut name, mut uid, mut hash) = (None, None, None, None);
    for a in e.attributes() {
        let a = a.ok()?;
        let value = a
            .decode_and_unescape_value(reader.decoder())
            .ok()?
            .into_owned();
        match a.key.as_ref() {
            b"namespace" => namespace = Some(value),
            b"name" => name = Some(value),
            b"uid" => uid = Some(value),
            b"definitionHash" => hash = Some(value),
            _ => {}
        }
    }
    Some(FerryMetadata {
        owner: Owner {
            namespace: namespace?,
            name: name?,
            uid: uid?,
        },
        definition_hash: hash?,
        shape: Shape::default(),
    })
}

/// Reads the children of ferry's element up to its end tag. Unknown children are skipped, so a
/// newer ferry's metadata still reads.
fn read_shape(reader: &mut NsReader<&[u8]>, ns: Namespace, shape: &mut Shape) -> Option<()> {
    let mut consoles = None;
    let done = read_children(reader, ns, shape, &mut consoles);
    shape.consoles = consoles.unwrap_or_else(legacy_consoles);
    done
}

/// What a domain defined before consoles were optional has: a serial console, no display.
fn legacy_consoles() -> Vec<String> {
    vec![SERIAL_CONSOLE.to_string()]
}

fn read_children(
    reader: &mut NsReader<&[u8]>,
    ns: Namespace,
    shape: &mut Shape,
    consoles: &mut Option<Vec<String>>,
) -> Option<()> {
    loop {
        let (res, event) = reader.read_resolved_event().ok()?;
        let local = match &event {
            Event::Start(e) | Event::Empty(e) if res == ResolveResult::Bound(ns) => {
                e.local_name().as_ref().to_vec()
            }
            Event::Start(_) => {
                skip_element(reader)?;
                continue;
            }
            Event::End(_) => return Some(()),
            Event::Eof => return None,
            _ => continue,
        };
        let value = match event {
            Event::Start(_) => read_text(reader)?,
            _ => String::new(),
        };
        match local.as_slice() {
            b"vcpus" => shape.vcpus = value.trim().parse().ok()?,
            b"cpu" => shape.cpu = value,
            b"memory" => shape.memory_kib = value.trim().parse().ok()?,
            b"disk" => shape.disks.push(value),
            b"nic" => shape.nics.push(value),
            b"boot" => shape.boot = value,
            b"consoles" => {
                *consoles = Some(value.split_whitespace().map(str::to_string).collect());
            }
            _ => {}
        }
    }
}

/// Text content of the current element up to its end tag, with references resolved.
fn read_text(reader: &mut NsReader<&[u8]>) -> Option<String> {
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Text(t) => out.push_str(&t.xml10_content().ok()?),
            Event::CData(t) => out.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) => match r.resolve_char_ref().ok()? {
                Some(c) => out.push(c),
                None => {
                    let name = r.decode().ok()?;
                    out.push_str(quick_xml::escape::resolve_predefined_entity(&name)?);
                }
            },
            Event::End(_) => return Some(out),
            Event::Start(_) => skip_element(reader)?,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Skips to the end of the element whose start tag was just read.
fn skip_element(reader: &mut NsReader<&[u8]>) -> Option<()> {
    let mut depth = 1usize;
    while depth > 0 {
        match reader.read_event().ok()? {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            Event::Eof => return None,
            _ => {}
        }
    }
    Some(())
}
