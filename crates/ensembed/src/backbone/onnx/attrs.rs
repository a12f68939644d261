//! Typed access to an ONNX node's attributes for the planner: defaults, the expected type, and
//! the shared geometry attributes (`strides`, `auto_pad`/`pads`) turned into what the layers
//! take, every error naming the node and the value.

use std::path::Path;

use super::plan::MAX_PAD;
use super::proto::{AttrValue, Node};
use crate::backbone::cnn::Padding;
use crate::error::{Error, Result};

/// Typed access to a node's attributes, errors naming the node.
pub(super) struct Attrs<'a> {
    node: &'a Node,
    path: &'a Path,
    /// The node, for errors.
    pub at: &'a str,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a Node, path: &'a Path, at: &'a str) -> Self {
        Attrs { node, path, at }
    }

    fn get(&self, name: &str) -> Option<&AttrValue> {
        self.node.attributes.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    fn wrong(&self, name: &str, want: &str, v: &AttrValue) -> Error {
        Error::format(self.path, self.at, format!("attribute `{name}` should be {want}, found {}", v.kind()))
    }

    pub fn int(&self, name: &str, dflt: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(dflt),
            Some(AttrValue::Int(i)) => Ok(*i),
            Some(v) => Err(self.wrong(name, "an INT", v)),
        }
    }

    pub fn float(&self, name: &str, dflt: f32) -> Result<f32> {
        match self.get(name) {
            None => Ok(dflt),
            Some(AttrValue::Float(f)) => Ok(*f),
            Some(v) => Err(self.wrong(name, "a FLOAT", v)),
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v.clone())),
            Some(v) => Err(self.wrong(name, "INTS", v)),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttrValue::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(name, "a STRING", v)),
        }
    }

    /// `strides`: equal along both axes, at least 1.
    pub fn stride(&self) -> Result<usize> {
        match self.ints("strides")?.as_deref() {
            None => Ok(1),
            Some(&[a, b]) if a == b && a >= 1 && a as usize <= MAX_PAD => Ok(a as usize),
            Some(s) => Err(Error::format(self.path, self.at, format!("strides {s:?}: equal strides between 1 and {MAX_PAD} are supported"))),
        }
    }

    /// `auto_pad` and `pads` as a [`Padding`].
    pub fn padding(&self) -> Result<Padding> {
        let auto = self.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "SAME_UPPER" => return Ok(Padding::Same),
            "VALID" => return Ok(Padding::Symmetric(0)),
            "NOTSET" => {}
            other => return Err(Error::format(self.path, self.at, format!("auto_pad '{other}' is not supported (NOTSET, SAME_UPPER, VALID are)"))),
        }
        let pads = self.ints("pads")?.unwrap_or_else(|| vec![0; 4]);
        let bad = || Error::format(self.path, self.at, format!("pads {pads:?}: ensembed supports [b, b, a, a] (the same before on both axes, the same after) with values from 0 to {MAX_PAD}"));
        let &[t, l, b, r] = &pads[..] else { return Err(bad()) };
        if t != l || b != r || [t, b].iter().any(|&p| p < 0 || p as usize > MAX_PAD) {
            return Err(bad());
        }
        Ok(if t == b { Padding::Symmetric(t as usize) } else { Padding::Explicit { before: t as usize, after: b as usize } })
    }
}
