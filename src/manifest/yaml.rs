//! YAML text to a small tree of [`Node`]s with positions and tags.
//!
//! serde-saphyr does the parsing; we deserialize every document into an untyped
//! tree (not straight into a struct) so one document can report *all* of its
//! problems with their line and column, not only the first one serde would stop
//! at. Duplicate keys are passed through to us for the same reason: the message
//! can then name both lines.
//!
//! Traps:
//! - The budget is sized for a 1 MiB file of legitimate manifests (10,000 small
//!   documents need ~250,000 nodes and 10,000 documents); the defaults (1,024
//!   documents) would refuse them. Alias replay is capped far lower, since
//!   manifests never need more than a handful of aliases.
//! - serde-saphyr skips null documents (`---` with nothing after it), so a
//!   document's index is not its position in the file; we keep positions instead.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, NonFiniteFloatPolicy, Options, Spanned, Tagged};

/// One YAML node: where it starts (1-based), its explicit tag, and its value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) column: usize,
    /// The resolved tag as written (`!Env`), core tags as `tag:yaml.org,2002:str`.
    pub(crate) tag: Option<String>,
    pub(crate) kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// A sequence's items (what a list key such as `guards` holds).
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// The YAML type name, for "expected a string, found a mapping".
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a sequence",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax or safety-limit error, with its position when known.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SyntaxError {
    pub(crate) line: Option<usize>,
    pub(crate) column: Option<usize>,
    pub(crate) message: String,
}

/// Limits that stop hostile input (alias bombs, deep nesting, document storms)
/// quickly while letting a full 1 MiB file of real manifests through.
fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_documents = 200_000;
    budget.max_nodes = 1_000_000;
    budget.max_events = 2_000_000;
    budget.max_depth = 32;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_total_scalar_bytes = 4 * 1024 * 1024;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 10_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    options.with_snippet = false;
    // YAML 1.2, as the JSON Schema and editors read manifests: `yes`/`on` and
    // `1_000` are strings, not a boolean and a number.
    options.strict_booleans = true;
    options.underscored_numbers_as_strings = true;
    options
}

/// Parses every document of `text`. Null documents are skipped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    serde_saphyr::from_multiple_with_options::<SpannedNode>(text, options())
        .map(|docs| docs.into_iter().map(|d| d.0).collect())
        .map_err(|err| {
            let err = err.without_snippet();
            let location = err.location();
            let line = location.map(|l| l.line() as usize).filter(|l| *l > 0);
            let column = location.map(|l| l.column() as usize).filter(|c| *c > 0);
            let mut message = err.to_string();
            if let (Some(l), Some(c)) = (line, column) {
                let suffix = format!(" at line {l}, column {c}");
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_owned();
                }
            }
            // The parser's own words for its safety limits name internals.
            if message.contains("budget breached: Depth") || message.contains("recursion limit") {
                message = "nesting deeper than 32 levels".to_owned();
            }
            SyntaxError {
                line,
                column: column.filter(|_| line.is_some()),
                message,
            }
        })
}

struct SpannedNode(Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Tagged<Kind>>::deserialize(d)?;
        let loc = spanned.referenced;
        let Tagged(kind, tag) = spanned.value;
        Ok(SpannedNode(Node {
            line: loc.line() as usize,
            column: loc.column() as usize,
            tag,
            kind,
        }))
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(i128::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<SpannedNode>()? {
            items.push(item.0);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<SpannedNode, SpannedNode>()? {
            entries.push((k.0, v.0));
        }
        Ok(Kind::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse_documents(text).expect("valid YAML");
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn reads_yaml_1_2_scalars_as_the_schema_does() {
        let doc = one("a: yes\nb: on\nc: 1_000\nd: true\ne: 0.5\n");
        let Kind::Map(entries) = doc.kind else {
            panic!("a mapping")
        };
        let kinds: Vec<&Kind> = entries.iter().map(|(_, v)| &v.kind).collect();
        assert!(matches!(kinds[0], Kind::Str(s) if s == "yes"));
        assert!(matches!(kinds[1], Kind::Str(s) if s == "on"));
        assert!(matches!(kinds[2], Kind::Str(s) if s == "1_000"));
        assert!(matches!(kinds[3], Kind::Bool(true)));
        assert!(matches!(kinds[4], Kind::Float(f) if *f == 0.5));
    }

    #[test]
    fn keeps_positions_tags_and_duplicate_keys() {
        let doc = one("a: 1\nb: !Env X\na: 2\n");
        let Kind::Map(entries) = doc.kind else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 3);
        assert_eq!((entries[1].1.line, entries[1].1.column), (2, 9));
        assert_eq!(entries[1].1.tag.as_deref(), Some("!Env"));
        assert_eq!(entries[2].0.kind, Kind::Str("a".into()));
    }

    #[test]
    fn null_documents_are_skipped_and_positions_kept() {
        let docs = parse_documents("---\n---\nname: x\n---\n# only a comment\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!((docs[0].line, docs[0].column), (3, 1));
        assert!(parse_documents("").unwrap().is_empty());
        assert!(parse_documents("# nothing\n").unwrap().is_empty());
    }

    #[test]
    fn non_finite_numbers_reach_the_checker() {
        let doc = one("a: .inf\nb: .nan\n");
        let Kind::Map(entries) = doc.kind else {
            panic!("not a map")
        };
        assert!(matches!(entries[0].1.kind, Kind::Float(f) if f.is_infinite()));
        assert!(matches!(entries[1].1.kind, Kind::Float(f) if f.is_nan()));
    }

    #[test]
    fn syntax_errors_carry_a_position_without_repeating_it() {
        let err = parse_documents("a: b: c\n").unwrap_err();
        assert_eq!((err.line, err.column), (Some(1), Some(5)));
        assert!(!err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("a{}", i - 1)
            };
            text.push_str(&format!("a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse_documents(&text).is_err());
    }

    #[test]
    fn absurd_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_documents(&text).is_err());
        let text = format!("a: {}1{}\n", "{b: ".repeat(100), "}".repeat(100));
        assert!(parse_documents(&text).is_err());
    }
}
