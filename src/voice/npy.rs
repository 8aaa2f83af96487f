//! Reading RVC feature folders: `logs/<name>/3_feature768` (v2) or `3_feature256` (v1), one
//! `frames × dim` float `.npy` per training clip, taken in sorted file-name order as RVC's
//! `train_index` does.

use std::path::{Path, PathBuf};

use ndarray::Array2;

/// Why feature files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// A path could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not a 2-D float `.npy`.
    #[error("{path}: not a 2-D float32/float64 .npy array ({message})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },
    /// Files disagree on the feature dimension.
    #[error("{path}: rows of dimension {found}, but earlier files have {expected}")]
    Dimension {
        /// The file.
        path: PathBuf,
        /// Its dimension.
        found: usize,
        /// The dimension of the files before it.
        expected: usize,
    },
    /// A value is NaN or infinite.
    #[error("{path}: row {row} holds a value that is not finite")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The row.
        row: usize,
    },
    /// A folder holds both feature versions, so which one is meant is unclear.
    #[error("{path} holds both 3_feature256 and 3_feature768: pass the one you want")]
    Ambiguous {
        /// The folder.
        path: PathBuf,
    },
    /// Nothing to read.
    #[error("no .npy feature files in {0}")]
    Empty(String),
}

/// Feature rows read from `.npy` files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NpyRows {
    /// Rows, `frames × dim`, in file order.
    pub rows: Vec<f32>,
    /// Dimension.
    pub dim: usize,
    /// Number of rows.
    pub frames: usize,
    /// The files, in the order read.
    pub files: Vec<PathBuf>,
}

fn sorted_npy_files(dir: &Path) -> Result<Vec<PathBuf>, NpyError> {
    let io = |source| NpyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "npy"))
        .collect();
    // Python's sorted(os.listdir()) orders by code point, which is UTF-8 byte order.
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The `.npy` files `inputs` name: files as given; a directory holding `3_feature768` or
/// `3_feature256` (an RVC experiment folder) means that folder; any other directory means its
/// own `.npy` files; each folder's files in sorted name order.
pub fn resolve_npy_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, NpyError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| NpyError::Io {
            path: input.clone(),
            source,
        })?;
        if !meta.is_dir() {
            out.push(input.clone());
            continue;
        }
        let v1 = input.join("3_feature256");
        let v2 = input.join("3_feature768");
        let dir = match (v1.is_dir(), v2.is_dir()) {
            (true, true) => {
                return Err(NpyError::Ambiguous {
                    path: input.clone(),
                })
            }
            (true, false) => v1,
            (false, true) => v2,
            (false, false) => input.clone(),
        };
        out.extend(sorted_npy_files(&dir)?);
    }
    if out.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(NpyError::Empty(names.join(", ")));
    }
    Ok(out)
}

fn read_matrix(path: &Path) -> Result<Array2<f32>, NpyError> {
    use ndarray_npy::ReadNpyExt;
    let open = || {
        std::fs::File::open(path).map_err(|source| NpyError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    match Array2::<f32>::read_npy(open()?) {
        Ok(a) => Ok(a),
        Err(first) => match Array2::<f64>::read_npy(open()?) {
            Ok(a) => Ok(a.mapv(|v| v as f32)),
            Err(_) => Err(NpyError::Format {
                path: path.to_path_buf(),
                message: first.to_string(),
            }),
        },
    }
}

/// Reads and concatenates `files` (2-D float32 or float64 arrays of one dimension).
/// `progress(done, total)` counts files.
pub fn read_npy_rows(
    files: &[PathBuf],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<NpyRows, NpyError> {
    let mut out = NpyRows::default();
    for (i, path) in files.iter().enumerate() {
        progress(i as u64, files.len() as u64);
        let a = read_matrix(path)?;
        let (n, d) = a.dim();
        if out.files.is_empty() {
            out.dim = d;
        } else if d != out.dim {
            return Err(NpyError::Dimension {
                path: path.clone(),
                found: d,
                expected: out.dim,
            });
        }
        if d == 0 {
            return Err(NpyError::Format {
                path: path.clone(),
                message: "rows of dimension 0".into(),
            });
        }
        for (r, row) in a.rows().into_iter().enumerate() {
            if !row.iter().all(|v| v.is_finite()) {
                return Err(NpyError::NonFinite {
                    path: path.clone(),
                    row: r,
                });
            }
            out.rows.extend(row.iter());
        }
        out.frames += n;
        out.files.push(path.clone());
    }
    progress(files.len() as u64, files.len() as u64);
    if out.frames == 0 {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Err(NpyError::Empty(names.join(", ")));
    }
    Ok(out)
}

/// The feature kind of RVC rows of dimension `dim`: `rvc-v1-256`, `rvc-v2-768`, else `npy-<dim>`.
pub fn rvc_feature_kind(dim: usize) -> String {
    match dim {
        256 => "rvc-v1-256".into(),
        768 => "rvc-v2-768".into(),
        d => format!("npy-{d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::WriteNpyExt;

    fn write(path: &Path, a: &Array2<f32>) {
        a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
    }

    #[test]
    fn experiment_folders_are_read_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let feat = dir.path().join("3_feature256");
        std::fs::create_dir(&feat).unwrap();
        for (name, v) in [("b.npy", 2.0f32), ("a.npy", 1.0), ("10.npy", 0.0)] {
            write(&feat.join(name), &Array2::from_elem((2, 256), v));
        }
        let files = resolve_npy_inputs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["10.npy", "a.npy", "b.npy"]);
        let rows = read_npy_rows(&files, &mut |_, _| {}).unwrap();
        assert_eq!((rows.dim, rows.frames), (256, 6));
        assert_eq!(
            (rows.rows[0], rows.rows[2 * 256], rows.rows[5 * 256]),
            (0.0, 1.0, 2.0)
        );
        assert_eq!(rvc_feature_kind(rows.dim), "rvc-v1-256");
    }

    #[test]
    fn bad_inputs_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        let b = dir.path().join("b.npy");
        write(&a, &Array2::zeros((3, 8)));
        write(&b, &Array2::zeros((3, 9)));
        let e = read_npy_rows(&[a.clone(), b], &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("dimension 9"), "{e}");
        let mut bad = Array2::<f32>::zeros((3, 8));
        bad[[1, 2]] = f32::NAN;
        write(&a, &bad);
        let e = read_npy_rows(std::slice::from_ref(&a), &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let t = dir.path().join("t.npy");
        std::fs::write(&t, b"not numpy").unwrap();
        assert!(matches!(
            read_npy_rows(&[t], &mut |_, _| {}),
            Err(NpyError::Format { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            resolve_npy_inputs(std::slice::from_ref(&empty)),
            Err(NpyError::Empty(_))
        ));
        std::fs::create_dir(empty.join("3_feature256")).unwrap();
        std::fs::create_dir(empty.join("3_feature768")).unwrap();
        assert!(matches!(
            resolve_npy_inputs(&[empty]),
            Err(NpyError::Ambiguous { .. })
        ));
    }
}
