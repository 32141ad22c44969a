//! A position-carrying document tree for YAML and JSON input.
//!
//! serde would stop at the first error and forget where a value came from;
//! validation here must report every problem with its line and column. So the
//! parser (saphyr-parser's event stream) builds a small tree of [`Node`]s,
//! each with the position of its first character, and the decoders in
//! [`crate::api`] walk it. JSON is parsed by the same YAML 1.2 parser. The
//! trade-off: a second pass over a small tree instead of one serde pass; policy
//! files are small, and the errors are the product.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Where a node starts: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
}

/// A value of the document tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or an empty value.
    Null,
    /// A scalar, as written (after YAML unquoting); `quoted` tells whether it
    /// was a quoted string (then it is never a number or boolean).
    Scalar {
        /// The text.
        text: String,
        /// Written in quotes (single or double) or as a block scalar.
        quoted: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order. Keys are kept as written.
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key's text (non-scalar keys are rendered as `?`).
    pub text: String,
    /// Where the key starts.
    pub pos: Pos,
}

/// A value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// A syntax error: the input is not YAML (or JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos_line}:{pos_col}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub pos_line: usize,
    /// 1-based column.
    pub pos_col: usize,
    /// The parser's description.
    pub message: String,
}

impl SyntaxError {
    /// The position of the error.
    pub fn pos(&self) -> Pos {
        Pos { line: self.pos_line, col: self.pos_col }
    }
}

/// Upper bound on nesting, so that hostile input cannot exhaust the stack of
/// the recursive decoders.
const MAX_DEPTH: usize = 128;

/// Parses every document of a YAML or JSON stream. Empty documents (only
/// comments, or `---` with nothing after it) are skipped.
pub fn parse_documents(src: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder { stack: Vec::new(), anchors: HashMap::new(), docs: Vec::new(), expanded: 0 };
    let parser = Parser::new_from_str(src);
    for ev in parser {
        let (ev, span) = ev.map_err(|e| SyntaxError {
            pos_line: e.marker().line(),
            pos_col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        let pos = Pos { line: span.start.line(), col: span.start.col() + 1 };
        builder.event(ev, pos)?;
    }
    Ok(builder.docs)
}

enum Frame {
    Seq { items: Vec<Node>, pos: Pos, anchor: usize },
    Map { entries: Vec<(Key, Node)>, pending: Option<Key>, pos: Pos, anchor: usize },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    docs: Vec<Node>,
    /// Nodes copied by aliases so far (bounded: "billion laughs").
    expanded: usize,
}

/// Upper bound on the nodes that aliases may copy in one stream.
const MAX_ALIAS_EXPANSION: usize = 100_000;

impl Builder {
    fn event(&mut self, ev: Event<'_>, pos: Pos) -> Result<(), SyntaxError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain) || tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if !quoted && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar { text: text.into_owned(), quoted }
                };
                let node = Node { value, pos };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, pos)
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos_line: pos.line,
                    pos_col: pos.col,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                self.expanded += node.size();
                if self.expanded > MAX_ALIAS_EXPANSION {
                    return Err(SyntaxError {
                        pos_line: pos.line,
                        pos_col: pos.col,
                        message: format!("aliases expand to more than {MAX_ALIAS_EXPANSION} nodes"),
                    });
                }
                // An alias re-uses the anchored node but reports this position.
                self.push(Node { value: node.value, pos }, pos)
            }
            Event::SequenceStart(anchor, _) => self.open(Frame::Seq { items: Vec::new(), pos, anchor }, pos),
            Event::MappingStart(anchor, _) => {
                self.open(Frame::Map { entries: Vec::new(), pending: None, pos, anchor }, pos)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = self.stack.pop().ok_or_else(|| SyntaxError {
                    pos_line: pos.line,
                    pos_col: pos.col,
                    message: "unbalanced end of collection".into(),
                })?;
                let (node, anchor) = match frame {
                    Frame::Seq { items, pos, anchor } => (Node { value: Value::Seq(items), pos }, anchor),
                    Frame::Map { entries, pos, anchor, .. } => (Node { value: Value::Map(entries), pos }, anchor),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, pos)
            }
            Event::DocumentEnd => {
                self.anchors.clear();
                Ok(())
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) | Event::Nothing => Ok(()),
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                pos_line: pos.line,
                pos_col: pos.col,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        self.stack.push(frame);
        Ok(())
    }

    fn push(&mut self, node: Node, pos: Pos) -> Result<(), SyntaxError> {
        match self.stack.last_mut() {
            None => {
                if node.value != Value::Null {
                    self.docs.push(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pending, .. }) => match pending.take() {
                None => {
                    let text = match &node.value {
                        Value::Scalar { text, .. } => text.clone(),
                        Value::Null => String::new(),
                        _ => "?".to_string(),
                    };
                    if entries.iter().any(|(k, _)| k.text == text) {
                        return Err(SyntaxError {
                            pos_line: pos.line,
                            pos_col: pos.col,
                            message: format!("duplicate key `{text}` in this mapping"),
                        });
                    }
                    *pending = Some(Key { text, pos: node.pos });
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

impl Node {
    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The number of nodes in this subtree.
    pub fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(_, v)| v.size()).sum(),
            _ => 0,
        }
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Looks a key up in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - 'y'\n").expect("valid yaml");
        assert_eq!(docs.len(), 1);
        let b = docs[0].get("b").expect("b present");
        let Value::Seq(items) = &b.value else { panic!("seq") };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
        assert_eq!(items[1].value, Value::Scalar { text: "y".into(), quoted: true });
    }

    #[test]
    fn multi_document_skips_empty() {
        let docs = parse_documents("---\n# only a comment\n---\na: 1\n---\n").expect("valid yaml");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn json_parses() {
        let docs = parse_documents(r#"{"a": [1, "b", null]}"#).expect("valid json");
        let Value::Seq(items) = &docs[0].get("a").expect("a").value else { panic!("seq") };
        assert_eq!(items[2].value, Value::Null);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse_documents("a: 1\na: 2\n").expect_err("duplicate");
        assert!(err.message.contains("duplicate key `a`"), "{err}");
        assert_eq!(err.pos_line, 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_documents("a: [1, 2\nb: 3\n").expect_err("unterminated");
        assert!(err.pos_line >= 1);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let src = "[".repeat(1000);
        assert!(parse_documents(&src).is_err());
    }

    #[test]
    fn aliases_resolve() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n").expect("valid");
        assert_eq!(docs[0].get("b").and_then(|b| b.get("k")).and_then(Node::as_str), Some("v"));
    }
}
