//! A small element tree read from an XML document with a real XML reader (quick-xml), for
//! documents ferry only reads and does not write: a domain's XML as libvirt returns it, an OVF
//! descriptor. Names are local names (namespace prefixes dropped); entities and character
//! references are resolved.

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

/// An element with its attributes (local names), text and children.
#[derive(Debug, Default)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Attributes, by local name, in document order.
    pub attrs: Vec<(String, String)>,
    /// The text directly inside the element (all its text and CDATA parts, in order).
    pub text: String,
    /// Child elements, in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The child elements called `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child called `name`, unless it is empty.
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.child(name)
            .map(|c| c.text.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

fn open(e: &BytesStart) -> Result<Element, String> {
    let mut node = Element {
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        ..Element::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let value = a.unescape_value().map_err(|e| e.to_string())?;
        node.attrs.push((
            String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(node)
}

/// The document's root element as a tree, or why it is not well-formed XML.
pub fn parse(xml: &str) -> Result<Element, String> {
    let bad = |e: &dyn std::fmt::Display| e.to_string();
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) => stack.push(open(&e)?),
            Event::Empty(e) => {
                let node = open(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Event::Text(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&t.xml10_content().map_err(|e| bad(&e))?);
                }
            }
            Event::CData(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&t.decode().map_err(|e| bad(&e))?);
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| bad(&e))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| bad(&e))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_string()
                    }
                };
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&c);
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or("an element ends that never started")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Event::Eof => return Err("it ends before its root element does".into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_local_names_text_and_entities() {
        let doc = parse(
            r#"<ovf:Envelope xmlns:ovf="urn:x"><a ovf:id="1">x &amp; &#65;<![CDATA[<c>]]></a><b/><a id="2"/></ovf:Envelope>"#,
        )
        .expect("parse");
        assert_eq!(doc.name, "Envelope");
        let a: Vec<_> = doc.children("a").collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].attr("id"), Some("1"));
        assert_eq!(a[0].text, "x & A<c>");
        assert_eq!(doc.text_of("a").as_deref(), Some("x & A<c>"));
        assert!(doc.child("b").is_some_and(|b| b.children.is_empty()));
        assert_eq!(doc.text_of("b"), None);
    }

    #[test]
    fn refuses_what_is_not_well_formed() {
        for bad in ["<a><b></a>", "<a>", "<a>&nope;</a>", "<a x=1/>", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
