//! A generic YAML tree with source positions, read from the same text as the typed model.
//!
//! The typed [`Inventory`](super::Inventory) has no positions (its field types are a contract
//! shared by every module), so the validator looks positions up here by path
//! (`groups.etcd[0].address`). Aliases point at their use site.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// Byte range of a node in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub offset: usize,
    pub len: usize,
}

impl Pos {
    pub fn from_location(loc: &Location, text: &str) -> Option<Pos> {
        if loc.line() == 0 {
            return None;
        }
        let span = loc.span();
        let (offset, len) = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => (o as usize, l as usize),
            _ => {
                // Character offsets only: convert to bytes.
                let start = char_to_byte(text, span.offset() as usize)?;
                let end = char_to_byte(text, (span.offset() + span.len()) as usize)?;
                (start, end.saturating_sub(start))
            }
        };
        if offset > text.len() {
            return None;
        }
        Some(Pos {
            offset,
            len: len.min(text.len() - offset),
        })
    }
}

fn char_to_byte(text: &str, chars: usize) -> Option<usize> {
    if chars == text.chars().count() {
        return Some(text.len());
    }
    text.char_indices().nth(chars).map(|(i, _)| i)
}

/// One step of a path into the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// Entries in source order: (key text, key position, value).
    Map(Vec<(String, Option<Pos>, Node)>),
    Seq(Vec<Node>),
    /// A scalar as text (numbers and booleans included).
    Scalar(String),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Option<Pos>,
    pub kind: Kind,
}

impl Node {
    /// Parse `text` into a tree; `None` when the text is not valid YAML (the typed parse
    /// reports that error).
    pub fn parse(text: &str) -> Option<Node> {
        let raw: Spanned<RawNode> = serde_saphyr::from_str(text).ok()?;
        Some(into_node(raw, text))
    }

    /// The node at `path`, if present.
    pub fn get(&self, path: &[Seg<'_>]) -> Option<&Node> {
        let mut cur = self;
        for seg in path {
            cur = match (seg, &cur.kind) {
                (Seg::Key(k), Kind::Map(entries)) => {
                    &entries.iter().find(|(name, _, _)| name == k)?.2
                }
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Position of the key that introduces `path` (its last segment must be a key).
    pub fn key_pos(&self, path: &[Seg<'_>]) -> Option<Pos> {
        let (last, parent) = path.split_last()?;
        let Seg::Key(k) = last else { return None };
        match &self.get(parent)?.kind {
            Kind::Map(entries) => entries.iter().find(|(name, _, _)| name == k)?.1,
            _ => None,
        }
    }

    /// Best position for a problem about `path`: a scalar or sequence value itself; for a
    /// mapping or an empty value, the key that introduces it; when `path` is absent, the same
    /// for its nearest present ancestor.
    pub fn best_pos(&self, path: &[Seg<'_>]) -> Option<Pos> {
        for n in (0..=path.len()).rev() {
            let p = &path[..n];
            let Some(node) = self.get(p) else { continue };
            let own = node.pos.filter(|pos| pos.len > 0);
            let first_key = match &node.kind {
                Kind::Map(entries) => entries.first().and_then(|(_, kp, _)| *kp),
                _ => None,
            };
            let found = match node.kind {
                Kind::Map(_) => self.key_pos(p).or(first_key).or(node.pos),
                Kind::Null => self.key_pos(p),
                _ => own.or_else(|| self.key_pos(p)).or(node.pos),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Path (as text segments: keys, and `[i]` for sequence items) of the map key or scalar
    /// value that starts at byte `offset`, if any.
    pub fn path_at(&self, offset: usize) -> Option<Vec<String>> {
        match &self.kind {
            Kind::Map(entries) => {
                for (k, kp, v) in entries {
                    let value_here = matches!(v.kind, Kind::Scalar(_) | Kind::Null)
                        && v.pos.map(|p| p.offset) == Some(offset);
                    if kp.map(|p| p.offset) == Some(offset) || value_here {
                        return Some(vec![k.clone()]);
                    }
                    if let Some(mut rest) = v.path_at(offset) {
                        rest.insert(0, k.clone());
                        return Some(rest);
                    }
                    if v.pos.map(|p| p.offset) == Some(offset) {
                        return Some(vec![k.clone()]);
                    }
                }
                None
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = matches!(item.kind, Kind::Scalar(_))
                        && item.pos.map(|p| p.offset) == Some(offset);
                    if here {
                        return Some(vec![format!("[{i}]")]);
                    }
                    if let Some(mut rest) = item.path_at(offset) {
                        rest.insert(0, format!("[{i}]"));
                        return Some(rest);
                    }
                    if item.pos.map(|p| p.offset) == Some(offset) {
                        return Some(vec![format!("[{i}]")]);
                    }
                }
                None
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

/// The untyped shape deserialized by serde-saphyr (with `Spanned` children), turned into
/// [`Node`] afterwards.
enum RawNode {
    Map(Vec<(Spanned<RawKey>, Spanned<RawNode>)>),
    Seq(Vec<Spanned<RawNode>>),
    Scalar(String),
    Null,
}

/// Keys are read as text whatever their YAML type (`5432: x` gives "5432").
struct RawKey(String);

fn into_node(raw: Spanned<RawNode>, text: &str) -> Node {
    {
        let pos = Pos::from_location(&raw.referenced, text);
        let kind = match raw.value {
            RawNode::Map(entries) => Kind::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.value.0,
                            Pos::from_location(&k.referenced, text),
                            into_node(v, text),
                        )
                    })
                    .collect(),
            ),
            RawNode::Seq(items) => {
                Kind::Seq(items.into_iter().map(|i| into_node(i, text)).collect())
            }
            RawNode::Scalar(s) => Kind::Scalar(s),
            RawNode::Null => Kind::Null,
        };
        Node { pos, kind }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawNode, E> {
        Ok(RawNode::Scalar(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<RawKey>, Spanned<RawNode>>()? {
            entries.push(entry);
        }
        Ok(RawNode::Map(entries))
    }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawNode, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawKey, D::Error> {
        let node = d.deserialize_any(RawVisitor)?;
        Ok(RawKey(match node {
            RawNode::Scalar(s) => s,
            RawNode::Null => "~".into(),
            RawNode::Map(_) | RawNode::Seq(_) => "<complex key>".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let text = "a:\n  b: 5432\n  c: [x, \"é y\"]\nd: ~\n";
        let n = Node::parse(text).expect("parses");
        let b = n.get(&[Seg::Key("a"), Seg::Key("b")]).expect("a.b");
        let p = b.pos.expect("pos");
        assert_eq!(&text[p.offset..p.offset + p.len], "5432");
        assert_eq!(b.as_scalar(), Some("5432"));
        let kp = n.key_pos(&[Seg::Key("a"), Seg::Key("c")]).expect("key c");
        assert_eq!(&text[kp.offset..kp.offset + kp.len], "c");
        let y = n
            .get(&[Seg::Key("a"), Seg::Key("c"), Seg::Index(1)])
            .and_then(|n| n.pos)
            .expect("c[1]");
        assert!(text[y.offset..y.offset + y.len].contains("é y"));
        assert_eq!(n.get(&[Seg::Key("d")]).map(|n| &n.kind), Some(&Kind::Null));
        assert_eq!(
            n.path_at(kp.offset),
            Some(vec!["a".to_string(), "c".to_string()])
        );
        // Missing leaf: falls back to the nearest ancestor.
        let best = n
            .best_pos(&[Seg::Key("a"), Seg::Key("zzz")])
            .expect("ancestor pos");
        assert_eq!(&text[best.offset..best.offset + best.len], "a");
    }
}
