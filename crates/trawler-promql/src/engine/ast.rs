//! The engine's own tree: promql-parser's AST resolved for evaluation.
//!
//! Conversion does once what evaluation would otherwise do per step: times
//! in milliseconds, `@ start()`/`@ end()` resolved to the query's bounds,
//! matchers compiled, parentheses dropped (they only group; the parser
//! already applied precedence), functions and aggregations named by enum.
//! It also refuses what Prometheus 2.42 does not know (functions and
//! modifiers of later versions that the parser accepts).

use std::time::{Duration, SystemTime};

use promql_parser::parser::{
    self, AtModifier, Expr, LabelModifier, Offset, VectorMatchCardinality,
};

use super::{selector_matchers, QueryError};
use crate::Matcher;

/// What a node evaluates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Scalar,
    Vector,
    Matrix,
    String,
}

impl Ty {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ty::Scalar => "scalar",
            Ty::Vector => "instant vector",
            Ty::Matrix => "range vector",
            Ty::String => "string",
        }
    }
}

/// A vector selector.
#[derive(Debug)]
pub(crate) struct Sel {
    /// Index into the evaluation's selected-data table.
    pub id: usize,
    pub matchers: Vec<Matcher>,
    /// `offset`, ms (negative for a negative offset).
    pub offset: i64,
    /// `@`, ms.
    pub at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub(crate) fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le
        )
    }

    pub(crate) fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }

    /// Whether the result loses `__name__` (arithmetic does, comparisons
    /// without `bool` do not).
    pub(crate) fn drops_name(self) -> bool {
        matches!(
            self,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Pow
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
    ManyToMany,
}

/// `on`/`ignoring` and `group_left`/`group_right` of a vector–vector
/// operation.
#[derive(Debug, Clone)]
pub(crate) struct Matching {
    pub card: Card,
    /// `on(...)` (else `ignoring(...)`, also when neither was written).
    pub on: bool,
    pub labels: Vec<String>,
    /// Extra labels of `group_left(...)`/`group_right(...)`.
    pub include: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    CountValues,
    Quantile,
}

/// Every function of Prometheus 2.42.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Func {
    Abs,
    Absent,
    AbsentOverTime,
    Acos,
    Acosh,
    Asin,
    Asinh,
    Atan,
    Atanh,
    AvgOverTime,
    Ceil,
    Changes,
    Clamp,
    ClampMax,
    ClampMin,
    Cos,
    Cosh,
    CountOverTime,
    DaysInMonth,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    Deg,
    Delta,
    Deriv,
    Exp,
    Floor,
    HistogramCount,
    HistogramFraction,
    HistogramQuantile,
    HistogramSum,
    HoltWinters,
    Hour,
    Idelta,
    Increase,
    Irate,
    LabelReplace,
    LabelJoin,
    Ln,
    Log10,
    Log2,
    LastOverTime,
    MaxOverTime,
    MinOverTime,
    Minute,
    Month,
    Pi,
    PredictLinear,
    PresentOverTime,
    QuantileOverTime,
    Rad,
    Rate,
    Resets,
    Round,
    Scalar,
    Sgn,
    Sin,
    Sinh,
    Sort,
    SortDesc,
    Sqrt,
    StddevOverTime,
    StdvarOverTime,
    SumOverTime,
    Tan,
    Tanh,
    Time,
    Timestamp,
    Vector,
    Year,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        use Func::*;
        Some(match name {
            "abs" => Abs,
            "absent" => Absent,
            "absent_over_time" => AbsentOverTime,
            "acos" => Acos,
            "acosh" => Acosh,
            "asin" => Asin,
            "asinh" => Asinh,
            "atan" => Atan,
            "atanh" => Atanh,
            "avg_over_time" => AvgOverTime,
            "ceil" => Ceil,
            "changes" => Changes,
            "clamp" => Clamp,
            "clamp_max" => ClampMax,
            "clamp_min" => ClampMin,
            "cos" => Cos,
            "cosh" => Cosh,
            "count_over_time" => CountOverTime,
            "days_in_month" => DaysInMonth,
            "day_of_month" => DayOfMonth,
            "day_of_week" => DayOfWeek,
            "day_of_year" => DayOfYear,
            "deg" => Deg,
            "delta" => Delta,
            "deriv" => Deriv,
            "exp" => Exp,
            "floor" => Floor,
            "histogram_count" => HistogramCount,
            "histogram_fraction" => HistogramFraction,
            "histogram_quantile" => HistogramQuantile,
            "histogram_sum" => HistogramSum,
            "holt_winters" => HoltWinters,
            "hour" => Hour,
            "idelta" => Idelta,
            "increase" => Increase,
            "irate" => Irate,
            "label_replace" => LabelReplace,
            "label_join" => LabelJoin,
            "ln" => Ln,
            "log10" => Log10,
            "log2" => Log2,
            "last_over_time" => LastOverTime,
            "max_over_time" => MaxOverTime,
            "min_over_time" => MinOverTime,
            "minute" => Minute,
            "month" => Month,
            "pi" => Pi,
            "predict_linear" => PredictLinear,
            "present_over_time" => PresentOverTime,
            "quantile_over_time" => QuantileOverTime,
            "rad" => Rad,
            "rate" => Rate,
            "resets" => Resets,
            "round" => Round,
            "scalar" => Scalar,
            "sgn" => Sgn,
            "sin" => Sin,
            "sinh" => Sinh,
            "sort" => Sort,
            "sort_desc" => SortDesc,
            "sqrt" => Sqrt,
            "stddev_over_time" => StddevOverTime,
            "stdvar_over_time" => StdvarOverTime,
            "sum_over_time" => SumOverTime,
            "tan" => Tan,
            "tanh" => Tanh,
            "time" => Time,
            "timestamp" => Timestamp,
            "vector" => Vector,
            "year" => Year,
            _ => return None,
        })
    }

    /// What it returns.
    pub(crate) fn ty(self) -> Ty {
        match self {
            Func::Time | Func::Scalar | Func::Pi => Ty::Scalar,
            _ => Ty::Vector,
        }
    }
}

/// A node of the resolved tree.
#[derive(Debug)]
pub(crate) enum Node {
    Num(f64),
    Str(String),
    /// Unary minus.
    Neg(Box<Node>),
    Binary {
        op: BinOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
        matching: Matching,
        return_bool: bool,
    },
    Agg {
        op: AggOp,
        expr: Box<Node>,
        param: Option<Box<Node>>,
        /// Sorted.
        grouping: Vec<String>,
        without: bool,
    },
    Call {
        func: Func,
        args: Vec<Node>,
    },
    Selector(Sel),
    Matrix {
        sel: Sel,
        range: i64,
    },
    Subquery {
        expr: Box<Node>,
        range: i64,
        step: Option<i64>,
        offset: i64,
        at: Option<i64>,
    },
}

impl Node {
    pub(crate) fn ty(&self) -> Ty {
        match self {
            Node::Num(_) => Ty::Scalar,
            Node::Str(_) => Ty::String,
            Node::Neg(e) => e.ty(),
            Node::Binary { lhs, rhs, .. } => {
                if lhs.ty() == Ty::Scalar && rhs.ty() == Ty::Scalar {
                    Ty::Scalar
                } else {
                    Ty::Vector
                }
            }
            Node::Agg { .. } | Node::Selector(_) => Ty::Vector,
            Node::Call { func, .. } => func.ty(),
            Node::Matrix { .. } | Node::Subquery { .. } => Ty::Matrix,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(*d),
        Some(Offset::Neg(d)) => -ms(*d),
    }
}

fn time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

/// Converts a parsed query. `start`/`end` are the query's bounds, the
/// values of `@ start()` and `@ end()`.
pub(crate) struct Converter {
    start: i64,
    end: i64,
    /// How many selectors so far (their ids).
    pub selectors: usize,
}

impl Converter {
    pub(crate) fn new(start: i64, end: i64) -> Self {
        Self {
            start,
            end,
            selectors: 0,
        }
    }

    fn at(&self, a: &Option<AtModifier>) -> Option<i64> {
        match a {
            None => None,
            Some(AtModifier::Start) => Some(self.start),
            Some(AtModifier::End) => Some(self.end),
            Some(AtModifier::At(t)) => Some(time_ms(*t)),
        }
    }

    fn sel(&mut self, vs: &parser::VectorSelector) -> Result<Sel, QueryError> {
        let matchers = selector_matchers(vs)?;
        let id = self.selectors;
        self.selectors += 1;
        Ok(Sel {
            id,
            matchers,
            offset: offset_ms(&vs.offset),
            at: self.at(&vs.at),
        })
    }

    pub(crate) fn convert(&mut self, e: &Expr) -> Result<Node, QueryError> {
        Ok(match e {
            Expr::NumberLiteral(n) => Node::Num(n.val),
            Expr::StringLiteral(s) => Node::Str(s.val.clone()),
            Expr::Paren(p) => self.convert(&p.expr)?,
            Expr::Unary(u) => Node::Neg(Box::new(self.convert(&u.expr)?)),
            Expr::VectorSelector(vs) => Node::Selector(self.sel(vs)?),
            Expr::MatrixSelector(m) => Node::Matrix {
                sel: self.sel(&m.vs)?,
                range: ms(m.range),
            },
            Expr::Subquery(s) => Node::Subquery {
                expr: Box::new(self.convert(&s.expr)?),
                range: ms(s.range),
                step: s.step.map(ms).filter(|&s| s > 0),
                offset: offset_ms(&s.offset),
                at: self.at(&s.at),
            },
            Expr::Call(c) => {
                let func = Func::from_name(c.func.name).ok_or_else(|| {
                    QueryError::BadData(format!("unknown function with name \"{}\"", c.func.name))
                })?;
                let args = c
                    .args
                    .args
                    .iter()
                    .map(|a| self.convert(a))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::Call { func, args }
            }
            Expr::Aggregate(a) => {
                let name = a.op.to_string();
                let op = match name.as_str() {
                    "sum" => AggOp::Sum,
                    "avg" => AggOp::Avg,
                    "count" => AggOp::Count,
                    "min" => AggOp::Min,
                    "max" => AggOp::Max,
                    "group" => AggOp::Group,
                    "stddev" => AggOp::Stddev,
                    "stdvar" => AggOp::Stdvar,
                    "topk" => AggOp::Topk,
                    "bottomk" => AggOp::Bottomk,
                    "count_values" => AggOp::CountValues,
                    "quantile" => AggOp::Quantile,
                    other => {
                        return Err(QueryError::BadData(format!(
                            "unknown aggregation operator \"{other}\""
                        )))
                    }
                };
                let (mut grouping, without) = match &a.modifier {
                    None => (Vec::new(), false),
                    Some(LabelModifier::Include(l)) => (l.labels.clone(), false),
                    Some(LabelModifier::Exclude(l)) => (l.labels.clone(), true),
                };
                grouping.sort();
                Node::Agg {
                    op,
                    expr: Box::new(self.convert(&a.expr)?),
                    param: match &a.param {
                        Some(p) => Some(Box::new(self.convert(p)?)),
                        None => None,
                    },
                    grouping,
                    without,
                }
            }
            Expr::Binary(b) => {
                let op = match b.op.to_string().as_str() {
                    "+" => BinOp::Add,
                    "-" => BinOp::Sub,
                    "*" => BinOp::Mul,
                    "/" => BinOp::Div,
                    "%" => BinOp::Mod,
                    "^" => BinOp::Pow,
                    "atan2" => BinOp::Atan2,
                    "==" => BinOp::Eq,
                    "!=" => BinOp::Ne,
                    ">" => BinOp::Gt,
                    "<" => BinOp::Lt,
                    ">=" => BinOp::Ge,
                    "<=" => BinOp::Le,
                    "and" => BinOp::And,
                    "or" => BinOp::Or,
                    "unless" => BinOp::Unless,
                    other => {
                        return Err(QueryError::BadData(format!(
                            "unknown binary operator \"{other}\""
                        )))
                    }
                };
                let mut matching = Matching {
                    card: if op.is_set() {
                        Card::ManyToMany
                    } else {
                        Card::OneToOne
                    },
                    on: false,
                    labels: Vec::new(),
                    include: Vec::new(),
                };
                let mut return_bool = false;
                if let Some(m) = &b.modifier {
                    if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                        return Err(QueryError::BadData(
                            "fill modifiers are not PromQL of Prometheus 2.42".to_owned(),
                        ));
                    }
                    return_bool = m.return_bool;
                    match &m.matching {
                        Some(LabelModifier::Include(l)) => {
                            matching.on = true;
                            matching.labels = l.labels.clone();
                        }
                        Some(LabelModifier::Exclude(l)) => matching.labels = l.labels.clone(),
                        None => {}
                    }
                    if !op.is_set() {
                        match &m.card {
                            VectorMatchCardinality::ManyToOne(l) => {
                                matching.card = Card::ManyToOne;
                                matching.include = l.labels.clone();
                            }
                            VectorMatchCardinality::OneToMany(l) => {
                                matching.card = Card::OneToMany;
                                matching.include = l.labels.clone();
                            }
                            _ => {}
                        }
                    }
                }
                let lhs = self.convert(&b.lhs)?;
                let rhs = self.convert(&b.rhs)?;
                if op.is_comparison()
                    && !return_bool
                    && lhs.ty() == Ty::Scalar
                    && rhs.ty() == Ty::Scalar
                {
                    return Err(QueryError::BadData(
                        "comparisons between scalars must use BOOL modifier".to_owned(),
                    ));
                }
                Node::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                    matching,
                    return_bool,
                }
            }
            Expr::Extension(_) => {
                return Err(QueryError::BadData("unsupported expression".to_owned()))
            }
        })
    }
}

/// Refuses the duration syntax later Prometheus versions added and
/// promql-parser accepts, which 2.42 rejects: a bare number where a
/// duration goes (`foo[300]`, `offset 60`), and a duration where a number
/// goes (`1m + 1`). Scans tokens the way the lexer does, skipping strings
/// and comments.
pub(crate) fn check_durations(q: &str) -> Result<(), QueryError> {
    let is_duration = |tok: &str| {
        let mut rest = tok;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
            let unit = ["ms", "s", "m", "h", "d", "w", "y"]
                .iter()
                .find(|u| rest.starts_with(**u))
                .map(|u| u.len());
            match unit {
                Some(n) => rest = &rest[n..],
                None => return false,
            }
        }
        true
    };
    let b = q.as_bytes();
    let mut i = 0;
    let mut brackets = 0usize;
    let mut after_offset = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                after_offset = false;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => {
                brackets += 1;
                i += 1;
            }
            b']' => {
                brackets = brackets.saturating_sub(1);
                i += 1;
            }
            // Inside brackets a colon separates range and step; elsewhere
            // it may begin a metric name.
            c if c.is_ascii_alphabetic() || c == b'_' || (c == b':' && brackets == 0) => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                after_offset = q[start..i].eq_ignore_ascii_case("offset");
                continue;
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let start = i;
                while i < b.len() {
                    let x = b[i];
                    // An exponent's sign belongs to the number (not in hex).
                    let exponent_sign = (x == b'+' || x == b'-')
                        && matches!(b[i - 1], b'e' | b'E')
                        && !q[start..i].starts_with("0x");
                    if !(x.is_ascii_alphanumeric() || x == b'.' || x == b'_' || exponent_sign) {
                        break;
                    }
                    i += 1;
                }
                let tok = &q[start..i];
                let duration_place = brackets > 0 || after_offset;
                if duration_place && !is_duration(tok) {
                    return Err(QueryError::BadData(format!(
                        "parse error: missing unit character in duration \"{tok}\""
                    )));
                }
                if !duration_place && is_duration(tok) {
                    return Err(QueryError::BadData(format!(
                        "parse error: unexpected duration \"{tok}\""
                    )));
                }
                after_offset = false;
                continue;
            }
            b'-' | b' ' | b'\t' | b'\n' | b'\r' => {
                // A sign or space keeps the place a duration may follow in.
                i += 1;
                continue;
            }
            _ => {
                after_offset = false;
                i += 1;
            }
        }
    }
    Ok(())
}
