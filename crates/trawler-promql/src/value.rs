//! Query results, and their JSON exactly as Prometheus' HTTP API writes it.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::Labels;

/// One sample of a vector: a series' labels and its value at the time of
/// evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    /// The labels (without `__name__` once a function dropped it).
    pub labels: Labels,
    /// Unix ms.
    pub ts_ms: i64,
    /// The value.
    pub value: f64,
}

/// A series of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The labels.
    pub labels: Labels,
    /// `(unix ms, value)`, sorted by time.
    pub points: Vec<(i64, f64)>,
}

/// A query's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at a time.
    Scalar(i64, f64),
    /// A string at a time.
    String(i64, String),
    /// An instant vector.
    Vector(Vec<VectorSample>),
    /// A range vector (also every range query's result).
    Matrix(Vec<Sample>),
}

impl Value {
    /// `resultType` of the API's envelope.
    pub fn result_type(&self) -> &'static str {
        match self {
            Value::Scalar(..) => "scalar",
            Value::String(..) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A float as Prometheus writes sample values: Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)` (shortest round trip, never an
/// exponent), `NaN`, `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

/// A timestamp as Prometheus writes it: seconds, then the milliseconds
/// (three digits) when there are any.
fn format_ts(t: i64) -> String {
    let (sign, t) = if t < 0 { ("-", -t) } else { ("", t) };
    let (s, ms) = (t / 1000, t % 1000);
    if ms == 0 {
        format!("{sign}{s}")
    } else {
        format!("{sign}{s}.{ms:03}")
    }
}

struct Point<'a>(i64, &'a str);

impl Serialize for Point<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(2))?;
        let ts: serde_json::Number = format_ts(self.0)
            .parse()
            .map_err(serde::ser::Error::custom)?;
        seq.serialize_element(&ts)?;
        seq.serialize_element(self.1)?;
        seq.end()
    }
}

struct Values<'a>(&'a [(i64, f64)]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &(t, v) in self.0 {
            seq.serialize_element(&Point(t, &format_value(v)))?;
        }
        seq.end()
    }
}

impl Serialize for VectorSample {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("VectorSample", 2)?;
        st.serialize_field("metric", &self.labels)?;
        st.serialize_field("value", &Point(self.ts_ms, &format_value(self.value)))?;
        st.end()
    }
}

impl Serialize for Sample {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Sample", 2)?;
        st.serialize_field("metric", &self.labels)?;
        st.serialize_field("values", &Values(&self.points))?;
        st.end()
    }
}

/// Serialises as the API's `data` object: `{"resultType": …, "result": …}`.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Data", 2)?;
        st.serialize_field("resultType", self.result_type())?;
        match self {
            Value::Scalar(t, v) => st.serialize_field("result", &Point(*t, &format_value(*v)))?,
            Value::String(t, v) => st.serialize_field("result", &Point(*t, v))?,
            Value::Vector(v) => st.serialize_field("result", v)?,
            Value::Matrix(m) => st.serialize_field("result", m)?,
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_times_are_written_as_prometheus_does() {
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_ts(1_435_781_451_781), "1435781451.781");
        assert_eq!(format_ts(1_500), "1.500");
        assert_eq!(format_ts(5_007), "5.007");
        assert_eq!(format_ts(-1_500), "-1.500");
        let v = Value::Vector(vec![VectorSample {
            labels: Labels::new([("__name__", "up"), ("job", "x")]),
            ts_ms: 1_000,
            value: 1.0,
        }]);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"x"},"value":[1,"1"]}]}"#
        );
        assert_eq!(
            serde_json::to_string(&Value::Scalar(2_250, f64::INFINITY)).unwrap(),
            r#"{"resultType":"scalar","result":[2.25,"+Inf"]}"#
        );
    }
}
