//! Small XML helpers shared by the hypervisor edge: a writer that escapes every value (domain,
//! pool and volume XML are only ever written through it, never by string formatting), and a
//! reader for the text and attributes of small documents libvirt returns (pool and volume XML).

use std::borrow::Cow;
use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::QName;
use quick_xml::reader::Reader;

pub(crate) type W = Writer<Cursor<Vec<u8>>>;
pub(crate) type IoResult = std::io::Result<()>;

/// Runs `body` on a fresh indented writer and returns the document, or the writer's error.
pub(crate) fn write_document(body: impl FnOnce(&mut W) -> IoResult) -> Result<String, String> {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    body(&mut w).map_err(|e| e.to_string())?;
    String::from_utf8(w.into_inner().into_inner()).map_err(|e| e.to_string())
}

/// `Char` production of XML 1.0 (Rust strings cannot hold surrogates).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// quick-xml's escaping plus character references for the white space a parser would otherwise
/// normalise (attribute values turn TAB/LF/CR into spaces, text turns CR LF into LF).
fn escape_value(value: &str) -> Cow<'_, str> {
    let escaped = quick_xml::escape::escape(value);
    if !escaped.contains(['\t', '\n', '\r']) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for c in escaped.chars() {
        match c {
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn attr<'a>(key: &'a str, value: &'a str) -> Attribute<'a> {
    Attribute {
        key: QName(key.as_bytes()),
        value: match escape_value(value) {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        },
    }
}

fn text(value: &str) -> BytesText<'_> {
    BytesText::from_escaped(escape_value(value))
}

/// `<name a="v" ...>text</name>`.
pub(crate) fn text_elem(w: &mut W, name: &str, attrs: &[(&str, &str)], value: &str) -> IoResult {
    let mut e = w.create_element(name);
    for (k, v) in attrs {
        e = e.with_attribute(attr(k, v));
    }
    e.write_text_content(text(value))?;
    Ok(())
}

/// `<name a="v" .../>`.
pub(crate) fn empty_elem(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> IoResult {
    let mut e = w.create_element(name);
    for (k, v) in attrs {
        e = e.with_attribute(attr(k, v));
    }
    e.write_empty()?;
    Ok(())
}

/// `<name a="v" ...>`: an open element, closed by [`end`].
pub(crate) fn start(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> IoResult {
    let mut e = BytesStart::new(name);
    for (k, v) in attrs {
        e.push_attribute(attr(k, v));
    }
    w.write_event(Event::Start(e))
}

/// `</name>`.
pub(crate) fn end(w: &mut W, name: &str) -> IoResult {
    w.write_event(Event::End(BytesEnd::new(name)))
}

/// Text and attributes at fixed element paths of a small XML document (pool and volume XML).
#[derive(Default)]
pub(crate) struct XmlFacts {
    texts: Vec<(String, String)>,
    attrs: Vec<(String, String, String)>,
}

impl XmlFacts {
    pub(crate) fn parse(xml: &str) -> Option<XmlFacts> {
        let mut reader = Reader::from_str(xml);
        let mut facts = XmlFacts::default();
        let mut path: Vec<String> = Vec::new();
        let mut text = String::new();
        loop {
            match reader.read_event().ok()? {
                Event::Start(e) => {
                    path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                    facts.push_attrs(&path, &e)?;
                    text.clear();
                }
                Event::Empty(e) => {
                    path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                    facts.push_attrs(&path, &e)?;
                    path.pop();
                }
                Event::Text(t) => text.push_str(&t.xml10_content().ok()?),
                Event::GeneralRef(r) => match r.resolve_char_ref().ok()? {
                    Some(c) => text.push(c),
                    None => text.push_str(quick_xml::escape::resolve_predefined_entity(
                        &r.decode().ok()?,
                    )?),
                },
                Event::End(_) => {
                    facts
                        .texts
                        .push((path.join("/"), std::mem::take(&mut text)));
                    path.pop();
                }
                Event::Eof => return Some(facts),
                _ => {}
            }
        }
    }

    fn push_attrs(&mut self, path: &[String], e: &BytesStart) -> Option<()> {
        for a in e.attributes() {
            let a = a.ok()?;
            self.attrs.push((
                path.join("/"),
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                a.unescape_value().ok()?.into_owned(),
            ));
        }
        Some(())
    }

    pub(crate) fn text(&self, path: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.trim())
    }

    pub(crate) fn attr(&self, path: &str, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(p, k, _)| p == path && k == key)
            .map(|(_, _, v)| v.as_str())
    }
}
