//! A small namespace-aware XML tree for signed RIMs, and its Canonical XML 1.1 rendering
//! (W3C `xml-c14n11`, without comments), which the XML-DSig check in [`super::rim`] hashes.
//!
//! Trusts nothing. Deliberately narrow: no DTDs (no entity expansion), no processing
//! instructions, no `xml:*` attributes (whose C14N 1.1 inheritance rules this code does not
//! implement); comments are dropped, as the no-comments canonical form requires. Inputs it
//! does not support are rejected, never approximated, so a canonicalisation difference can
//! only make a genuine signature fail, never make a forged one pass.

use std::collections::{BTreeMap, VecDeque};

use quick_xml::Reader;
use quick_xml::events::Event;

/// Largest XML document accepted (NVIDIA's RIMs are ~20 KiB).
pub const MAX_XML_LEN: usize = 4 << 20;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted.
pub const MAX_ELEMENTS: usize = 100_000;

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Why an XML document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// Not well-formed (parser message).
    #[error("XML is not well-formed: {0}")]
    Syntax(String),
    /// Too large, deep or many elements.
    #[error("XML exceeds a limit: {0}")]
    Limit(&'static str),
    /// A construct this verifier refuses (DTD, PI, `xml:*` attribute, ...).
    #[error("XML uses an unsupported construct: {0}")]
    Unsupported(String),
    /// A prefix without a namespace declaration.
    #[error("XML uses undeclared namespace prefix {0:?}")]
    UnboundPrefix(String),
    /// A character or entity reference that is not one of XML's five or a valid number.
    #[error("XML has an invalid reference &{0};")]
    BadReference(String),
}

/// An attribute (not a namespace declaration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Prefix as written, if any.
    pub prefix: Option<String>,
    /// Local name.
    pub local: String,
    /// Namespace URI (`None` for unprefixed attributes).
    pub ns: Option<String>,
    /// Normalised value (references expanded, literal whitespace turned into spaces).
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Character data (references expanded, CDATA included).
    Text(String),
}

/// An element with its namespace context as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Prefix as written, if any.
    pub prefix: Option<String>,
    /// Local name.
    pub local: String,
    /// Resolved namespace URI.
    pub ns: Option<String>,
    /// Namespace declarations on this element: (prefix, URI); `None` is the default namespace.
    pub ns_decls: Vec<(Option<String>, String)>,
    /// Attributes in document order.
    pub attrs: Vec<Attr>,
    /// Children in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// Whether this element is `{ns}local`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Child elements named `{ns}local`.
    pub fn children_named<'a>(&'a self, ns: &'a str, local: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.is(ns, local))
    }

    /// The value of the unprefixed attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.is_none() && a.local == name).map(|a| a.value.as_str())
    }

    /// The value of attribute `{ns}local`.
    pub fn attr_ns(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.as_deref() == Some(ns) && a.local == local).map(|a| a.value.as_str())
    }

    /// Concatenated text of direct text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Every element in this subtree, `self` first, in breadth-first order.
    pub fn descendants(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([self]);
        while let Some(e) = queue.pop_front() {
            out.push(e);
            queue.extend(e.elements());
        }
        out
    }
}

/// Namespaces in scope: prefix (`None` = default) to URI; an empty URI undeclares the default.
pub type NsScope = BTreeMap<Option<String>, String>;

/// Parse a whole document to its root element.
pub fn parse(input: &[u8]) -> Result<Element, XmlError> {
    if input.len() > MAX_XML_LEN {
        return Err(XmlError::Limit("document size"));
    }
    let text = std::str::from_utf8(input).map_err(|e| XmlError::Syntax(e.to_string()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // XML 1.0 §2.11 end-of-line handling.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut reader = Reader::from_str(&text);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;

    let mut stack: Vec<(Element, NsScope)> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let ev = reader.read_event().map_err(|e| XmlError::Syntax(e.to_string()))?;
        match ev {
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err(XmlError::Syntax("content after the root element".into()));
            }
            Event::Start(ref s) | Event::Empty(ref s) => {
                // Stops at MAX_ELEMENTS + 1 (the check below), far from saturating.
                count = count.saturating_add(1);
                if count > MAX_ELEMENTS {
                    return Err(XmlError::Limit("element count"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Limit("nesting depth"));
                }
                let parent_scope = stack.last().map(|(_, s)| s.clone()).unwrap_or_default();
                let (el, scope) = start_element(s.name().as_ref(), s.attributes(), parent_scope)?;
                if matches!(ev, Event::Empty(_)) {
                    close(el, &mut stack, &mut root);
                } else {
                    stack.push((el, scope));
                }
            }
            Event::End(_) => match stack.pop() {
                Some((el, _)) => close(el, &mut stack, &mut root),
                None => return Err(XmlError::Syntax("unmatched end tag".into())),
            },
            Event::Text(t) => {
                let raw = t.into_inner();
                push_text(&mut stack, unescape(&raw, false)?)?;
            }
            Event::GeneralRef(r) => {
                let name = r.into_inner();
                push_text(&mut stack, resolve_ref(&name)?.to_string())?;
            }
            Event::CData(c) => {
                push_text(&mut stack, c.into_inner().into_owned())?;
            }
            Event::Comment(_) => {}
            Event::Decl(_) => {
                if count > 0 {
                    return Err(XmlError::Syntax("XML declaration after content".into()));
                }
            }
            Event::PI(_) => return Err(XmlError::Unsupported("processing instruction".into())),
            Event::DocType(_) => {
                return Err(XmlError::Unsupported("document type declaration".into()));
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Syntax("unclosed element at end of input".into()));
    }
    root.ok_or_else(|| XmlError::Syntax("no root element".into()))
}

fn close(el: Element, stack: &mut [(Element, NsScope)], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some((parent, _)) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

fn push_text(stack: &mut [(Element, NsScope)], text: String) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some((parent, _)) => {
            if let Some(Node::Text(prev)) = parent.children.last_mut() {
                prev.push_str(&text);
            } else {
                parent.children.push(Node::Text(text));
            }
            Ok(())
        }
        None if text.chars().all(|c| matches!(c, ' ' | '\t' | '\n')) => Ok(()),
        None => Err(XmlError::Syntax("text outside the root element".into())),
    }
}

/// XML 1.0 NCName, conservatively: ASCII letters, digits, `-`, `.`, `_` and any non-ASCII
/// letter-like character; must not start with a digit, `-` or `.`. (The parser underneath
/// takes everything up to whitespace as a name, so this is what keeps `"` or `=` out.)
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let start_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (!c.is_ascii() && c.is_alphabetic());
    let rest_ok = |c: char| start_ok(c) || c.is_ascii_digit() || c == '-' || c == '.' || (!c.is_ascii() && c.is_alphanumeric());
    start_ok(first) && chars.all(rest_ok)
}

fn split_qname(q: &str) -> Result<(Option<String>, String), XmlError> {
    let bad = || XmlError::Syntax(format!("bad qualified name {q:?}"));
    match q.split_once(':') {
        Some((p, l)) if is_ncname(p) && is_ncname(l) => Ok((Some(p.to_string()), l.to_string())),
        Some(_) => Err(bad()),
        None if is_ncname(q) => Ok((None, q.to_string())),
        None => Err(bad()),
    }
}

fn start_element(
    name: &str,
    attributes: quick_xml::events::attributes::Attributes<'_>,
    mut scope: NsScope,
) -> Result<(Element, NsScope), XmlError> {
    let (prefix, local) = split_qname(name)?;
    let mut ns_decls = Vec::new();
    let mut raw_attrs = Vec::new();
    for a in attributes {
        let a = a.map_err(|e| XmlError::Syntax(e.to_string()))?;
        let key = a.key.as_ref().to_string();
        let value = unescape(&a.value, true)?;
        if key == "xmlns" {
            ns_decls.push((None, value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(XmlError::Syntax(format!("empty namespace for prefix {p:?}")));
            }
            if p == "xml" || p == "xmlns" {
                return Err(XmlError::Unsupported(format!("declaration of reserved prefix {p}")));
            }
            ns_decls.push((Some(p.to_string()), value));
        } else {
            raw_attrs.push((key, value));
        }
    }
    for (p, uri) in &ns_decls {
        scope.insert(p.clone(), uri.clone());
    }
    let resolve = |p: &Option<String>, is_attr: bool| -> Result<Option<String>, XmlError> {
        match p {
            None if is_attr => Ok(None),
            None => Ok(scope.get(&None).filter(|u| !u.is_empty()).cloned()),
            Some(x) if x == "xml" => Err(XmlError::Unsupported("xml:* attributes".into())),
            Some(x) => scope.get(p).cloned().map(Some).ok_or_else(|| XmlError::UnboundPrefix(x.clone())),
        }
    };
    let ns = resolve(&prefix, false)?;
    let mut attrs: Vec<Attr> = Vec::new();
    for (key, value) in raw_attrs {
        let (ap, al) = split_qname(&key)?;
        let ans = resolve(&ap, true)?;
        if attrs.iter().any(|x| x.ns == ans && x.local == al) {
            return Err(XmlError::Syntax(format!("attribute {key} repeated")));
        }
        attrs.push(Attr { prefix: ap, local: al, ns: ans, value });
    }
    let el = Element { prefix, local, ns, ns_decls, attrs, children: Vec::new() };
    Ok((el, scope))
}

fn resolve_ref(name: &str) -> Result<char, XmlError> {
    let bad = || XmlError::BadReference(name.to_string());
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let num = name.strip_prefix('#').ok_or_else(bad)?;
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => num.parse::<u32>(),
            }
            .map_err(|_| bad())?;
            let c = char::from_u32(code).ok_or_else(bad)?;
            // XML 1.0 Char production.
            let ok = matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}');
            if !ok {
                return Err(bad());
            }
            c
        }
    };
    Ok(c)
}

/// Expand references in raw text; for attribute values also apply attribute-value
/// normalisation (literal tab/newline become spaces; referenced ones stay).
fn unescape(raw: &str, attribute: bool) -> Result<String, XmlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '<']) {
        out.push_str(rest.get(..i).unwrap_or_default());
        let tail = rest.get(i..).unwrap_or_default();
        match tail.as_bytes().first() {
            Some(b'&') => {
                let (name, after) = tail
                    .strip_prefix('&')
                    .and_then(|t| t.split_once(';'))
                    .ok_or_else(|| XmlError::BadReference(tail.chars().take(12).collect()))?;
                out.push(resolve_ref(name)?);
                rest = after;
            }
            Some(b'<') => {
                return Err(XmlError::Syntax("'<' in character data or attribute value".into()));
            }
            Some(c) => {
                out.push(if attribute { ' ' } else { char::from(*c) });
                rest = tail.get(1..).unwrap_or_default();
            }
            None => break,
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Canonical XML 1.1 (no comments) of `el` and its subtree, as the apex of a document subset.
///
/// `inherited` is the namespace scope of `el`'s parent in the original document (empty for
/// the root); `exclude` is an element (by identity) left out with its subtree, as the
/// enveloped-signature transform requires.
pub fn canonicalize(el: &Element, inherited: &NsScope, exclude: Option<&Element>) -> String {
    let mut out = String::new();
    render(el, inherited, &NsScope::new(), exclude, &mut out);
    out
}

/// The namespace scope of `target`'s parent, found by walking down from `root`.
pub fn scope_of_parent(root: &Element, target: &Element) -> Option<NsScope> {
    fn walk(e: &Element, target: &Element, scope: &NsScope) -> Option<NsScope> {
        if std::ptr::eq(e, target) {
            return Some(scope.clone());
        }
        let mut mine = scope.clone();
        for (p, u) in &e.ns_decls {
            mine.insert(p.clone(), u.clone());
        }
        e.elements().find_map(|c| walk(c, target, &mine))
    }
    walk(root, target, &NsScope::new())
}

fn render(el: &Element, parent_scope: &NsScope, rendered: &NsScope, exclude: Option<&Element>, out: &mut String) {
    if exclude.is_some_and(|x| std::ptr::eq(x, el)) {
        return;
    }
    let mut scope = parent_scope.clone();
    for (p, u) in &el.ns_decls {
        scope.insert(p.clone(), u.clone());
    }
    // Namespace nodes to emit: those whose value differs from the nearest output ancestor's.
    let mut emit: Vec<(Option<String>, String)> = Vec::new();
    for (p, u) in &scope {
        if p.is_none() && u.is_empty() {
            continue;
        }
        if rendered.get(p) != Some(u) {
            emit.push((p.clone(), u.clone()));
        }
    }
    let default_in_scope = scope.get(&None).is_some_and(|u| !u.is_empty());
    let default_rendered = rendered.get(&None).is_some_and(|u| !u.is_empty());
    if !default_in_scope && default_rendered {
        emit.push((None, String::new()));
    }
    emit.sort_by(|a, b| a.0.cmp(&b.0)); // None (default) sorts first
    let mut now_rendered = rendered.clone();
    for (p, u) in &emit {
        now_rendered.insert(p.clone(), u.clone());
    }

    let qname = |p: &Option<String>, l: &str| match p {
        Some(p) => format!("{p}:{l}"),
        None => l.to_string(),
    };
    out.push('<');
    out.push_str(&qname(&el.prefix, &el.local));
    for (p, u) in &emit {
        match p {
            Some(p) => out.push_str(&format!(" xmlns:{p}=\"")),
            None => out.push_str(" xmlns=\""),
        }
        escape_attr(u, out);
        out.push('"');
    }
    let mut attrs: Vec<&Attr> = el.attrs.iter().collect();
    attrs.sort_by(|a, b| {
        (a.ns.as_deref().unwrap_or(""), a.local.as_str()).cmp(&(b.ns.as_deref().unwrap_or(""), b.local.as_str()))
    });
    for a in attrs {
        out.push(' ');
        out.push_str(&qname(&a.prefix, &a.local));
        out.push_str("=\"");
        escape_attr(&a.value, out);
        out.push('"');
    }
    out.push('>');
    for child in &el.children {
        match child {
            Node::Text(t) => escape_text(t, out),
            Node::Element(c) => render(c, &scope, &now_rendered, exclude, out),
        }
    }
    out.push_str("</");
    out.push_str(&qname(&el.prefix, &el.local));
    out.push('>');
}

fn escape_text(t: &str, out: &mut String) {
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(t: &str, out: &mut String) {
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// The `xml` prefix's fixed namespace (exported for callers that want to reject it).
pub fn xml_namespace() -> &'static str {
    XML_NS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(doc: &str) -> String {
        let root = parse(doc.as_bytes()).unwrap();
        canonicalize(&root, &NsScope::new(), None)
    }

    // Examples adapted from W3C Canonical XML 1.0 §3 (the parts this parser supports).
    #[test]
    fn w3c_start_and_end_tags() {
        let doc = "<doc>\n   <e1   />\n   <e2   ></e2>\n   <e3   name = \"elem3\"   id=\"elem3\"   />\n   <e5 a:attr=\"out\" b:attr=\"sorted\" attr2=\"all\" attr=\"I'm\"\n      xmlns:b=\"http://www.ietf.org\"\n      xmlns:a=\"http://www.w3.org\"\n      xmlns=\"http://example.org\"/>\n   <e6 xmlns=\"\" xmlns:a=\"http://www.w3.org\">\n      <e7 xmlns=\"http://www.ietf.org\">\n         <e8 xmlns=\"\" xmlns:a=\"http://www.w3.org\">\n            <e9 xmlns=\"\" xmlns:a=\"http://www.ietf.org\"/>\n         </e8>\n      </e7>\n   </e6>\n</doc>";
        let want = "<doc>\n   <e1></e1>\n   <e2></e2>\n   <e3 id=\"elem3\" name=\"elem3\"></e3>\n   <e5 xmlns=\"http://example.org\" xmlns:a=\"http://www.w3.org\" xmlns:b=\"http://www.ietf.org\" attr=\"I'm\" attr2=\"all\" b:attr=\"sorted\" a:attr=\"out\"></e5>\n   <e6 xmlns:a=\"http://www.w3.org\">\n      <e7 xmlns=\"http://www.ietf.org\">\n         <e8 xmlns=\"\">\n            <e9 xmlns:a=\"http://www.ietf.org\"></e9>\n         </e8>\n      </e7>\n   </e6>\n</doc>";
        assert_eq!(c14n(doc), want);
    }

    #[test]
    fn w3c_character_modifications() {
        let doc = "<doc>\n   <text>First line&#x0d;&#10;Second line</text>\n   <value>&#x32;</value>\n   <compute><![CDATA[value>\"0\" && value<\"10\" ?\"valid\":\"error\"]]></compute>\n   <compute expr='value>\"0\" &amp;&amp; value&lt;\"10\" ?\"valid\":\"error\"'>valid</compute>\n   <norm attr=' &apos;   &#x20;&#13;&#xa;&#9;   &apos; '/>\n</doc>";
        let want = "<doc>\n   <text>First line&#xD;\nSecond line</text>\n   <value>2</value>\n   <compute>value&gt;\"0\" &amp;&amp; value&lt;\"10\" ?\"valid\":\"error\"</compute>\n   <compute expr=\"value>&quot;0&quot; &amp;&amp; value&lt;&quot;10&quot; ?&quot;valid&quot;:&quot;error&quot;\">valid</compute>\n   <norm attr=\" '    &#xD;&#xA;&#x9;   ' \"></norm>\n</doc>";
        assert_eq!(c14n(doc), want);
    }

    #[test]
    fn subset_apex_gets_inherited_namespaces_and_exclusion_works() {
        let doc = "<r xmlns=\"urn:d\" xmlns:p=\"urn:p\"><p:a x=\"1\"><b/></p:a><p:s><q/></p:s></r>";
        let root = parse(doc.as_bytes()).unwrap();
        let a = root.elements().next().unwrap();
        let scope = scope_of_parent(&root, a).unwrap();
        assert_eq!(canonicalize(a, &scope, None), "<p:a xmlns=\"urn:d\" xmlns:p=\"urn:p\" x=\"1\"><b></b></p:a>");
        let s = root.elements().nth(1).unwrap();
        assert_eq!(
            canonicalize(&root, &NsScope::new(), Some(s)),
            "<r xmlns=\"urn:d\" xmlns:p=\"urn:p\"><p:a x=\"1\"><b></b></p:a></r>"
        );
    }

    #[test]
    fn refuses_dtd_pi_xml_attrs_and_unbound_prefixes() {
        for bad in [
            "<!DOCTYPE r [<!ENTITY x \"y\">]><r>&x;</r>",
            "<r><?pi x?></r>",
            "<r xml:lang=\"en\"/>",
            "<p:r/>",
            "<r>&bogus;</r>",
            "<r>&#0;</r>",
            "<r></s>",
            "<r/><r/>",
            "<r a=\"1\" a=\"2\"/>",
            // Fuzz finding: the tokenizer took `Resourcexmlpe="M"` as an element name.
            "<r><Resourcexmlpe=\"Measurementdein \"x=\"50\"></Resourcexmlpe=\"Measurementdein></r>",
            "<r b\"c=\"1\"/>",
            "<1r/>",
            "<r -a=\"1\"/>",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        let doc = "<r xmlns=\"urn:d\" xmlns:p=\"urn:p\" b=\"&#9;&#10;\" a=\"x\"><p:a><![CDATA[<&>]]></p:a>\r\n<!-- c --><é ü=\"1\"/></r>";
        let c1 = c14n(doc);
        assert_eq!(c14n(&c1), c1);
    }

    #[test]
    fn depth_limit_is_enforced() {
        let doc = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(doc.as_bytes()), Err(XmlError::Limit("nesting depth")));
    }
}
