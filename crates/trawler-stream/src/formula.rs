//! Formulas over a window's results: `conversion = purchasers / visitors`.
//!
//! An expression is numbers, names, `+ - * /`, unary minus and
//! parentheses. Names are the job's series (a metric, or one quantile of
//! it such as `order_value_p99`) or other formulas; [`resolve`] orders the
//! formulas so that each comes after everything it reads (a formula of
//! formulas works), and rejects unknown names and cycles at load, naming
//! them. A division by zero, or a missing input, gives no value: a
//! conversion of a window without visitors is absent, not infinite.

use std::collections::BTreeMap;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Number(f64),
    /// A series or another formula, by name (resolved to a slot later).
    Name(String),
    /// `-x`.
    Neg(Box<Expr>),
    /// `a op b`.
    Binary(Box<Expr>, Op, Box<Expr>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl Expr {
    /// Parses `text`; the error says what was expected where.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut p = Parser {
            text,
            bytes: text.as_bytes(),
            at: 0,
        };
        let e = p.expr()?;
        p.skip_ws();
        if p.at != p.bytes.len() {
            return Err(format!(
                "unexpected {:?} at column {} of {text:?}",
                &text[p.at..],
                p.at + 1
            ));
        }
        Ok(e)
    }

    /// Every name the expression reads, in order of appearance.
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            Expr::Number(_) => {}
            Expr::Name(n) => {
                if !out.contains(n) {
                    out.push(n.clone())
                }
            }
            Expr::Neg(e) => e.names(out),
            Expr::Binary(a, _, b) => {
                a.names(out);
                b.names(out);
            }
        }
    }

    /// Evaluates with `value` giving each name's value (`None`: absent).
    pub fn eval(&self, value: &impl Fn(&str) -> Option<f64>) -> Option<f64> {
        let v = match self {
            Expr::Number(n) => *n,
            Expr::Name(n) => value(n)?,
            Expr::Neg(e) => -e.eval(value)?,
            Expr::Binary(a, op, b) => {
                let (a, b) = (a.eval(value)?, b.eval(value)?);
                match op {
                    Op::Add => a + b,
                    Op::Sub => a - b,
                    Op::Mul => a * b,
                    Op::Div => {
                        if b == 0.0 {
                            return None;
                        }
                        a / b
                    }
                }
            }
        };
        v.is_finite().then_some(v)
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.at).copied()
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let op = if c == b'+' { Op::Add } else { Op::Sub };
            left = Expr::Binary(Box::new(left), op, Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while let Some(c @ (b'*' | b'/')) = self.peek() {
            self.at += 1;
            let op = if c == b'*' { Op::Mul } else { Op::Div };
            left = Expr::Binary(Box::new(left), op, Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(b'-') => {
                self.at += 1;
                Ok(Expr::Neg(Box::new(self.factor()?)))
            }
            Some(b'(') => {
                self.at += 1;
                let e = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(format!(
                        "expected ')' at column {} of {:?}",
                        self.at + 1,
                        self.text
                    ));
                }
                self.at += 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => {
                let start = self.at;
                while self.at < self.bytes.len()
                    && (self.bytes[self.at].is_ascii_digit()
                        || matches!(self.bytes[self.at], b'.' | b'e' | b'E'))
                {
                    self.at += 1;
                }
                let t = &self.text[start..self.at];
                t.parse()
                    .map(Expr::Number)
                    .map_err(|_| format!("{t:?} is not a number in {:?}", self.text))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.at;
                while self.at < self.bytes.len()
                    && (self.bytes[self.at].is_ascii_alphanumeric() || self.bytes[self.at] == b'_')
                {
                    self.at += 1;
                }
                Ok(Expr::Name(self.text[start..self.at].to_owned()))
            }
            Some(_) => Err(format!(
                "unexpected {:?} at column {} of {:?}",
                &self.text[self.at..],
                self.at + 1,
                self.text
            )),
            None => Err(format!(
                "{:?} ends where a number, a name or '(' was expected",
                self.text
            )),
        }
    }
}

/// Orders `formulas` (name, expression) so that each comes after the
/// formulas it reads; `series` are the names that need no formula. Errors
/// name the unknown names or the cycle (`a -> b -> a`).
pub fn resolve(series: &[String], formulas: &[(String, Expr)]) -> Result<Vec<usize>, ResolveError> {
    let by_name: BTreeMap<&str, usize> = formulas
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let mut unknown = Vec::new();
    for (name, expr) in formulas {
        let mut names = Vec::new();
        expr.names(&mut names);
        for n in names {
            if !series.contains(&n) && !by_name.contains_key(n.as_str()) {
                unknown.push((name.clone(), n));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(ResolveError::Unknown(unknown));
    }
    // Depth-first, with the path kept for the cycle's message.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        i: usize,
        formulas: &[(String, Expr)],
        by_name: &BTreeMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), ResolveError> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Open => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..]
                    .iter()
                    .map(|&p| formulas[p].0.clone())
                    .collect();
                cycle.push(formulas[i].0.clone());
                return Err(ResolveError::Cycle(cycle));
            }
            Mark::New => {}
        }
        marks[i] = Mark::Open;
        path.push(i);
        let mut names = Vec::new();
        formulas[i].1.names(&mut names);
        for n in names {
            if let Some(&j) = by_name.get(n.as_str()) {
                visit(j, formulas, by_name, marks, path, order)?;
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; formulas.len()];
    let mut order = Vec::with_capacity(formulas.len());
    for i in 0..formulas.len() {
        visit(
            i,
            formulas,
            &by_name,
            &mut marks,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// Why the formulas cannot be ordered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// (formula, name it reads that is neither a series nor a formula).
    #[error("unknown names: {}", .0.iter().map(|(f, n)| format!("`{n}` in formula `{f}`")).collect::<Vec<_>>().join(", "))]
    Unknown(Vec<(String, String)>),
    /// Formulas that read each other, in order, the first repeated last.
    #[error("formulas form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_and_evaluates_with_precedence() {
        let e = Expr::parse("a + b * 2 - -(c / 4)").unwrap();
        let v = e.eval(&|n| match n {
            "a" => Some(1.0),
            "b" => Some(3.0),
            "c" => Some(8.0),
            _ => None,
        });
        assert_eq!(v, Some(1.0 + 6.0 + 2.0));
        assert_eq!(Expr::parse("x / 0").unwrap().eval(&|_| Some(1.0)), None);
        assert_eq!(
            Expr::parse("x / y")
                .unwrap()
                .eval(&|n| (n == "x").then_some(1.0)),
            None
        );
    }

    #[test]
    fn refuses_malformed_expressions() {
        for bad in ["", "a +", "(a", "a b", "a $ b", "1..2"] {
            assert!(Expr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn orders_formulas_of_formulas() {
        let f = vec![
            ("rpc".to_string(), Expr::parse("rpv / conversion").unwrap()),
            (
                "rpv".to_string(),
                Expr::parse("revenue / visitors").unwrap(),
            ),
            (
                "conversion".to_string(),
                Expr::parse("buyers / visitors").unwrap(),
            ),
        ];
        let order = resolve(&names(&["revenue", "visitors", "buyers"]), &f).unwrap();
        let pos = |n: &str| order.iter().position(|&i| f[i].0 == n).unwrap();
        assert!(pos("rpv") < pos("rpc") && pos("conversion") < pos("rpc"));
    }

    #[test]
    fn names_cycles_and_unknown_names() {
        let f = vec![
            ("a".to_string(), Expr::parse("b + 1").unwrap()),
            ("b".to_string(), Expr::parse("c * 2").unwrap()),
            ("c".to_string(), Expr::parse("a / x").unwrap()),
        ];
        let err = resolve(&names(&["x"]), &f).unwrap_err();
        assert_eq!(err, ResolveError::Cycle(names(&["a", "b", "c", "a"])));
        assert_eq!(err.to_string(), "formulas form a cycle: a -> b -> c -> a");
        let f = vec![("a".to_string(), Expr::parse("nope / x").unwrap())];
        let err = resolve(&names(&["x"]), &f).unwrap_err();
        assert_eq!(err.to_string(), "unknown names: `nope` in formula `a`");
    }
}
