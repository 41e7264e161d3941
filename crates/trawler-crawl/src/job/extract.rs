//! Turning a response body into metric values, and recognising the target's
//! "this id does not exist" answer.
//!
//! Metrics are numbered in the order the job declares them (fields first,
//! then derived metrics), and an observation carries values in that order,
//! so the names travel once in the [`Job`](super::Job) and each sample is a
//! few `f64`s.

use serde::Deserialize;

/// How a field's JSON value is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumberKind {
    /// A JSON integer (exact in an `f64` up to 2^53); a float is an error.
    Integer,
    /// Any JSON number.
    #[default]
    Float,
}

/// An arithmetic operator of a derived metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

impl Op {
    /// The one evaluator of derived metrics (extraction and reads of
    /// derived series use it alike): NaN (no value) where the result is not
    /// a finite number, e.g. a division by zero.
    pub fn apply(self, a: f64, b: f64) -> f64 {
        let v = match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b,
        };
        if v.is_finite() {
            v
        } else {
            f64::NAN
        }
    }
}

/// An operand of a derived metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// The value of an earlier metric, by index.
    Metric(usize),
    /// A constant.
    Const(f64),
}

/// Where a metric's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A number in the response, found by a JSON pointer (RFC 6901).
    Field {
        /// The pointer, e.g. `/followerCount`.
        pointer: String,
        /// How the number is read.
        kind: NumberKind,
    },
    /// `left op right` over earlier metrics of the same observation.
    Derived {
        /// Left operand.
        left: Operand,
        /// Operator.
        op: Op,
        /// Right operand.
        right: Operand,
    },
}

/// One metric of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name, e.g. `followerCount`.
    pub name: String,
    /// How it is computed.
    pub source: Source,
}

/// Why a body did not yield an observation. Counted as *malformed*.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// A field's pointer matched nothing.
    #[error("field {pointer} is missing")]
    Missing {
        /// The pointer.
        pointer: String,
    },
    /// A field is not a number of the declared kind.
    #[error("field {pointer} is not {expected}")]
    NotANumber {
        /// The pointer.
        pointer: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// Parses a formula `operand op operand`, resolving names among `known`.
pub(crate) fn parse_formula(formula: &str, known: &[Metric]) -> Result<Source, String> {
    let position = formula
        .char_indices()
        // Skip the first character so that a leading sign belongs to a constant.
        .skip(1)
        .find(|&(_, c)| matches!(c, '+' | '-' | '*' | '/'));
    let Some((at, symbol)) = position else {
        return Err(format!(
            "formula {formula:?} must be `a op b` with op one of + - * / (e.g. `followerCount / followingCount`)"
        ));
    };
    let op = match symbol {
        '+' => Op::Add,
        '-' => Op::Sub,
        '*' => Op::Mul,
        _ => Op::Div,
    };
    let operand = |text: &str| -> Result<Operand, String> {
        let text = text.trim();
        if let Ok(value) = text.parse::<f64>() {
            if value.is_finite() {
                return Ok(Operand::Const(value));
            }
        }
        known
            .iter()
            .position(|m| m.name == text)
            .map(Operand::Metric)
            .ok_or_else(|| {
                let names: Vec<&str> = known.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "formula {formula:?}: {text:?} is neither a number nor an earlier metric ({})",
                    names.join(", ")
                )
            })
    };
    Ok(Source::Derived {
        left: operand(&formula[..at])?,
        op,
        right: operand(&formula[at + 1..])?,
    })
}

/// Reads every metric of `metrics` from a JSON body, in order, walking the
/// body once with the fields' compiled pointers (`paths`, built from the
/// fields in metric order). Derived metrics whose result is not finite
/// (division by zero) are `NaN`.
pub(crate) fn extract(
    metrics: &[Metric],
    paths: &super::walk::Paths,
    body: &[u8],
) -> Result<Box<[f64]>, ExtractError> {
    use super::walk::Found;
    let mut stack = [Found::Missing; 16];
    let mut heap = Vec::new();
    let found: &mut [Found] = if paths.fields() <= stack.len() {
        &mut stack[..paths.fields()]
    } else {
        heap.resize(paths.fields(), Found::Missing);
        &mut heap
    };
    paths
        .walk(body, found)
        .map_err(|e| ExtractError::NotJson(e.to_string()))?;
    let mut values = Vec::with_capacity(metrics.len());
    let mut field = 0;
    for metric in metrics {
        let value = match &metric.source {
            Source::Field { pointer, kind } => {
                let slot = field;
                field += 1;
                match found.get(slot).copied().unwrap_or(Found::Missing) {
                    Found::Number(v) => v,
                    Found::Missing => {
                        return Err(ExtractError::Missing {
                            pointer: pointer.clone(),
                        })
                    }
                    Found::Wrong => {
                        return Err(ExtractError::NotANumber {
                            pointer: pointer.clone(),
                            expected: match kind {
                                NumberKind::Integer => "an integer",
                                NumberKind::Float => "a number",
                            },
                        })
                    }
                }
            }
            Source::Derived { left, op, right } => {
                let get = |o: &Operand| match *o {
                    Operand::Metric(i) => values[i],
                    Operand::Const(c) => c,
                };
                op.apply(get(left), get(right))
            }
        };
        values.push(value);
    }
    Ok(values.into_boxed_slice())
}

/// The compiled pointers of `metrics`' fields, in metric order.
pub(crate) fn paths(metrics: &[Metric]) -> super::walk::Paths {
    super::walk::Paths::new(metrics.iter().filter_map(|m| match &m.source {
        Source::Field { pointer, kind } => Some((pointer.as_str(), *kind)),
        Source::Derived { .. } => None,
    }))
}

/// The answer by which the target says an id does not exist: a status and,
/// unless the pointer is empty, a JSON string at a pointer (Mockstagram
/// answers `500 {"error":{"name":"InfluencerNotFoundError"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFoundRule {
    /// The status of such an answer.
    pub status: u16,
    /// Where the marker string is in the body.
    pub pointer: String,
    /// The marker string.
    pub equals: String,
}

impl NotFoundRule {
    /// Whether a response is the not-found answer. Only bodies of the rule's
    /// status are parsed, so normal answers cost nothing here.
    pub fn matches(&self, status: u16, body: &[u8]) -> bool {
        status == self.status
            && (self.pointer.is_empty()
                || serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|json| {
                        json.pointer(&self.pointer)
                            .and_then(|v| v.as_str().map(|s| s == self.equals))
                    })
                    .unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(metrics: &[Metric], body: &[u8]) -> Result<Box<[f64]>, ExtractError> {
        extract(metrics, &paths(metrics), body)
    }

    #[test]
    fn the_evaluator_gives_nan_where_there_is_no_finite_value() {
        assert_eq!(Op::Add.apply(1.0, 2.0), 3.0);
        assert_eq!(Op::Sub.apply(1.0, 2.0), -1.0);
        assert_eq!(Op::Div.apply(10.0, 4.0), 2.5);
        assert!(Op::Div.apply(1.0, 0.0).is_nan());
        assert!(Op::Div.apply(0.0, 0.0).is_nan());
        assert!(Op::Mul.apply(1e308, 10.0).is_nan());
        assert!(Op::Add.apply(f64::NAN, 1.0).is_nan());
    }

    fn field(name: &str, kind: NumberKind) -> Metric {
        Metric {
            name: name.into(),
            source: Source::Field {
                pointer: format!("/{name}"),
                kind,
            },
        }
    }

    fn mockstagram() -> Vec<Metric> {
        let mut metrics = vec![
            field("followerCount", NumberKind::Integer),
            field("followingCount", NumberKind::Integer),
        ];
        let ratio = parse_formula("followerCount / followingCount", &metrics).unwrap();
        metrics.push(Metric {
            name: "followerRatio".into(),
            source: ratio,
        });
        metrics
    }

    #[test]
    fn extracts_fields_and_derived_metrics() {
        let body = br#"{"pk":1000001,"username":"influencer-1000001","followerCount":104821,"followingCount":1131}"#;
        let values = ex(&mockstagram(), body).unwrap();
        assert_eq!(&values[..2], &[104_821.0, 1_131.0]);
        assert!((values[2] - 104_821.0 / 1_131.0).abs() < 1e-12);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let m = mockstagram();
        assert!(matches!(ex(&m, b"<html>"), Err(ExtractError::NotJson(_))));
        assert!(matches!(ex(&m, b""), Err(ExtractError::NotJson(_))));
        assert!(matches!(
            ex(&m, br#"{"followerCount":1}"#),
            Err(ExtractError::Missing { .. })
        ));
        assert!(matches!(
            ex(&m, br#"{"followerCount":1.5,"followingCount":2}"#),
            Err(ExtractError::NotANumber { .. })
        ));
        assert!(matches!(
            ex(&m, br#"{"followerCount":"1","followingCount":2}"#),
            Err(ExtractError::NotANumber { .. })
        ));
        let zero = ex(&m, br#"{"followerCount":1,"followingCount":0}"#).unwrap();
        assert!(zero[2].is_nan());
    }

    #[test]
    fn formulas() {
        let m = mockstagram();
        assert_eq!(
            parse_formula("followerCount*2", &m).unwrap(),
            Source::Derived {
                left: Operand::Metric(0),
                op: Op::Mul,
                right: Operand::Const(2.0)
            }
        );
        assert_eq!(
            parse_formula("-1 + followingCount", &m).unwrap(),
            Source::Derived {
                left: Operand::Const(-1.0),
                op: Op::Add,
                right: Operand::Metric(1)
            }
        );
        assert!(parse_formula("followerCount", &m).is_err());
        assert!(parse_formula("followerCount / nope", &m)
            .unwrap_err()
            .contains("\"nope\""));
    }

    #[test]
    fn not_found_rule() {
        let rule = NotFoundRule {
            status: 500,
            pointer: "/error/name".into(),
            equals: "InfluencerNotFoundError".into(),
        };
        assert!(rule.matches(500, br#"{"error":{"name":"InfluencerNotFoundError"}}"#));
        assert!(!rule.matches(503, br#"{"error":{"name":"InfluencerNotFoundError"}}"#));
        assert!(!rule.matches(500, br#"{"error":{"name":"InternalError"}}"#));
        assert!(!rule.matches(500, b"oops"));
    }
}
