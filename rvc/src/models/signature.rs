//! Reading a session's inputs and outputs and checking them by name, dtype and rank.

use crate::error::{ModelKind, Port, RvcError};
use ort::value::{Outlet, TensorElementType};
use std::path::Path;

/// One declared input or output.
#[derive(Debug, Clone)]
pub(crate) struct PortInfo {
    /// Its position in the session's list.
    pub index: usize,
    pub name: String,
    /// `None` for non-tensors (sequences, maps).
    pub ty: Option<TensorElementType>,
    /// Declared dimensions, `-1` where dynamic.
    pub shape: Vec<i64>,
}

pub(crate) fn describe(outlets: &[Outlet]) -> Vec<PortInfo> {
    outlets
        .iter()
        .enumerate()
        .map(|(index, outlet)| PortInfo {
            index,
            name: outlet.name().to_string(),
            ty: outlet.dtype().tensor_type(),
            shape: outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// One expected dimension.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim {
    /// Any size (named for messages).
    Any(&'static str),
    /// Exactly this size when static.
    Is(i64),
    /// One of these sizes when static.
    OneOf(&'static [i64]),
}

impl Dim {
    fn accepts(self, found: i64) -> bool {
        if found < 0 {
            return true; // dynamic: only a run can tell
        }
        match self {
            Dim::Any(_) => true,
            Dim::Is(n) => found == n,
            Dim::OneOf(ns) => ns.contains(&found),
        }
    }

    fn text(self) -> String {
        match self {
            Dim::Any(name) => name.to_string(),
            Dim::Is(n) => n.to_string(),
            Dim::OneOf(ns) => ns
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }
}

/// The ONNX name of an element type (`float32`, `int64`, …).
pub(crate) fn type_name(ty: Option<TensorElementType>) -> String {
    use TensorElementType as T;
    let Some(ty) = ty else {
        return "a non-tensor type".into();
    };
    match ty {
        T::Float32 => "float32",
        T::Float64 => "float64",
        T::Float16 => "float16",
        T::Bfloat16 => "bfloat16",
        T::Int8 => "int8",
        T::Int16 => "int16",
        T::Int32 => "int32",
        T::Int64 => "int64",
        T::Uint8 => "uint8",
        T::Uint16 => "uint16",
        T::Uint32 => "uint32",
        T::Uint64 => "uint64",
        T::Bool => "bool",
        T::String => "string",
        other => return other.to_string(),
    }
    .into()
}

pub(crate) fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| if d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn expected_text(dims: &[Dim]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.text()).collect();
    format!("[{}]", dims.join(", "))
}

/// Checks one port's dtype and shape.
pub(crate) fn check(
    model: ModelKind,
    path: &Path,
    port: Port,
    info: &PortInfo,
    ty: TensorElementType,
    dims: &[Dim],
) -> Result<(), RvcError> {
    if info.ty != Some(ty) {
        return Err(RvcError::WrongType {
            model,
            path: path.to_path_buf(),
            port,
            name: info.name.clone(),
            found: type_name(info.ty),
            expected: type_name(Some(ty)),
        });
    }
    let fits = info.shape.len() == dims.len()
        && info
            .shape
            .iter()
            .zip(dims)
            .all(|(&found, &dim)| dim.accepts(found));
    if !fits {
        return Err(RvcError::WrongShape {
            model,
            path: path.to_path_buf(),
            port,
            name: info.name.clone(),
            found: shape_text(&info.shape),
            expected: expected_text(dims),
        });
    }
    Ok(())
}

/// The port called `name`, or an error listing what there is.
pub(crate) fn find<'a>(
    model: ModelKind,
    path: &Path,
    port: Port,
    infos: &'a [PortInfo],
    name: &str,
) -> Result<&'a PortInfo, RvcError> {
    infos
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| RvcError::MissingPort {
            model,
            path: path.to_path_buf(),
            port,
            name: name.to_string(),
            found: infos.iter().map(|i| i.name.clone()).collect(),
        })
}

/// The first port, or an error saying there is none.
pub(crate) fn first<'a>(
    model: ModelKind,
    path: &Path,
    port: Port,
    infos: &'a [PortInfo],
    what: &str,
) -> Result<&'a PortInfo, RvcError> {
    infos.first().ok_or_else(|| RvcError::MissingPort {
        model,
        path: path.to_path_buf(),
        port,
        name: what.to_string(),
        found: Vec::new(),
    })
}

/// Refuses inputs beyond the ones a model takes.
pub(crate) fn only(
    model: ModelKind,
    path: &Path,
    infos: &[PortInfo],
    expected: &[&str],
) -> Result<(), RvcError> {
    match infos.iter().find(|i| !expected.contains(&i.name.as_str())) {
        Some(extra) => Err(RvcError::UnexpectedInput {
            model,
            path: path.to_path_buf(),
            name: extra.name.clone(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
        }),
        None => Ok(()),
    }
}
