//! Reading a job's resolved parameters with the checks every external
//! engine makes before a GPU is touched: whole numbers, finite
//! non-negative floats, booleans, strings, each refusal naming the
//! parameter and the value.

use loraflow_core::catalogue::{ParamValue, Params};

use super::error::{Error, Result};

/// Typed access to a job's parameters; `None` when the job does not set one.
pub struct Reader<'a>(pub &'a Params);

impl Reader<'_> {
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.0.get(name)
    }

    pub fn uint(&self, name: &str) -> Result<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(ParamValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(v) => Err(Error::param(
                name,
                format!("{v} must be a whole number of 0 or more"),
            )),
        }
    }

    pub fn u32(&self, name: &str) -> Result<Option<u32>> {
        self.uint(name)?
            .map(|v| u32::try_from(v).map_err(|_| Error::param(name, format!("{v} is too large"))))
            .transpose()
    }

    /// A whole number of at least 1.
    pub fn positive(&self, name: &str) -> Result<Option<u32>> {
        match self.u32(name)? {
            Some(0) => Err(Error::param(name, "0 must be at least 1")),
            v => Ok(v),
        }
    }

    pub fn float(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(Error::param(
                    name,
                    format!("{v} must be a finite number of 0 or more"),
                )),
            },
        }
    }

    /// A probability: a float from 0 to 1.
    pub fn probability(&self, name: &str) -> Result<Option<f64>> {
        match self.float(name)? {
            Some(p) if p > 1.0 => Err(Error::param(
                name,
                format!("{p} is a probability and must be at most 1"),
            )),
            p => Ok(p),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(ParamValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::param(name, format!("{v} must be true or false"))),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(ParamValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(Error::param(name, format!("{v} must be a string"))),
        }
    }

    /// A string that must be one of `table`'s names (matched as `exact` says);
    /// `what` describes the table in the refusal ("an sd-scripts scheduler").
    pub fn choice<T: Copy>(
        &self,
        name: &str,
        table: &[(&str, T)],
        exact: bool,
        what: &str,
    ) -> Result<Option<T>> {
        let Some(s) = self.string(name)? else {
            return Ok(None);
        };
        table
            .iter()
            .find(|(n, _)| {
                if exact {
                    *n == s
                } else {
                    n.eq_ignore_ascii_case(s)
                }
            })
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| {
                Error::param(
                    name,
                    format!(
                        "{s:?} is not {what}; use one of {}",
                        table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    }

    /// A trigger word, trimmed; blank is none.
    pub fn trigger_word(&self) -> Result<Option<String>> {
        Ok(self
            .string("trigger_word")?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }
}
