//! Feature store and numpy I/O against known answers: `.npy`/`.npz` bytes produced by numpy
//! (embedded below with the Python that produced them), byte-exact comparison of our writer with
//! `np.save`, and every malformed input the importer must reject with a message naming the file
//! and the value. Fixture bytes: `import io, numpy as np` then the snippet in each comment.

use std::path::{Path, PathBuf};

use ensembed::store::npy::{
    read_npy, read_npy_bytes, read_npz, read_npz_bytes, write_npy_f32, write_npy_i64, NpyData,
};
use ensembed::store::{import_numpy, Dtype, Store, StoreWriter};
use ensembed::{Error, Matrix};
use half::f16;

use crate::helpers::{random_matrix, rng};

/// `f = io.BytesIO(); np.save(f, np.array([[1.5, -2], [0.25, 8]], dtype='<f4')); f.getvalue()` (numpy 1.26.4).
const NPY_F32: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }                                                          \x0a\
    \x00\x00\xc0?\x00\x00\x00\xc0\x00\x00\x80>\x00\x00\x00A";

/// `f = io.BytesIO(); np.save(f, np.array([[1, -0.5, 3], [0.25, 2, -8]], dtype='<f2')); f.getvalue()` (numpy 1.26.4).
const NPY_F16: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }                                                          \x0a\
    \x00<\x00\xb8\x00B\x004\x00@\x00\xc8";

/// `f = io.BytesIO(); np.save(f, np.array([[0.5, -1.25]], dtype='<f8')); f.getvalue()` (numpy 1.26.4).
const NPY_F64: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }                                                          \x0a\
    \x00\x00\x00\x00\x00\x00\xe0?\x00\x00\x00\x00\x00\x00\xf4\xbf";

/// `f = io.BytesIO(); np.save(f, np.array([0, 2, 1], dtype='<i8')); f.getvalue()` (numpy 1.26.4).
const NPY_I64: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }                                                            \x0a\
    \x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\
    \x00\x00";

/// `f = io.BytesIO(); np.save(f, np.array([3, 0, 1], dtype='<i4')); f.getvalue()` (numpy 1.26.4).
const NPY_I32: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }                                                            \x0a\
    \x03\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00";

/// `f = io.BytesIO(); np.save(f, np.array([1, 0, 2], dtype='|u1')); f.getvalue()` (numpy 1.26.4).
const NPY_U8: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }                                                            \x0a\
    \x01\x00\x02";

/// `f = io.BytesIO(); np.save(f, np.asfortranarray(np.array([[1, 2, 3], [4, 5, 6]], dtype='<f4'))); f.getvalue()` (numpy 1.26.4).
const NPY_FORTRAN: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }                                                           \x0a\
    \x00\x00\x80?\x00\x00\x80@\x00\x00\x00@\x00\x00\xa0@\x00\x00@@\x00\x00\xc0@";

/// `f = io.BytesIO(); np.save(f, np.array([[1, 2]], dtype='>f4')); f.getvalue()` (numpy 1.26.4).
const NPY_BIG_ENDIAN: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '>f4', 'fortran_order': False, 'shape': (1, 2), }                                                          \x0a\
    ?\x80\x00\x00@\x00\x00\x00";

/// `f = io.BytesIO(); np.savez(f, feats=np.array([[1.5, -2], [0.25, 8]], dtype='<f4'), labels=np.array([0, 2], dtype='<i8')); f.getvalue()` (numpy 1.26.4).
const NPZ_STORED: &[u8] = b"PK\x03\x04-\x00\x00\x00\x00\x00\x00\x00!\x007\xe4BI\xff\xff\xff\xff\xff\xff\xff\xff\x09\x00\
    \x14\x00feats.npy\x01\x00\x10\x00\x90\x00\x00\x00\x00\x00\x00\x00\x90\x00\x00\x00\x00\x00\
    \x00\x00\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }                                                          \x0a\
    \x00\x00\xc0?\x00\x00\x00\xc0\x00\x00\x80>\x00\x00\x00APK\x03\x04-\x00\x00\x00\x00\x00\x00\
    \x00!\x00\x9dmtG\xff\xff\xff\xff\xff\xff\xff\xff\x0a\x00\x14\x00labels.npy\x01\x00\x10\x00\
    \x90\x00\x00\x00\x00\x00\x00\x00\x90\x00\x00\x00\x00\x00\x00\x00\x93NUMPY\x01\x00v\x00{'\
    descr': '<i8', 'fortran_order': False, 'shape': (2,), }                                                            \x0a\
    \x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00PK\x01\x02-\x03-\x00\x00\
    \x00\x00\x00\x00\x00!\x007\xe4BI\x90\x00\x00\x00\x90\x00\x00\x00\x09\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x80\x01\x00\x00\x00\x00feats.npyPK\x01\x02-\x03-\x00\x00\x00\x00\
    \x00\x00\x00!\x00\x9dmtG\x90\x00\x00\x00\x90\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x80\x01\xcb\x00\x00\x00labels.npyPK\x05\x06\x00\x00\x00\x00\x02\x00\x02\
    \x00o\x00\x00\x00\x97\x01\x00\x00\x00\x00";

/// `f = io.BytesIO(); np.savez_compressed(f, feats=np.array([[1.5, -2], [0.25, 8]], dtype='<f4'), labels=np.array([0, 2], dtype='<i8')); f.getvalue()` (numpy 1.26.4).
const NPZ_DEFLATED: &[u8] =
    b"PK\x03\x04-\x00\x00\x00\x08\x00\x00\x00!\x007\xe4BI\xff\xff\xff\xff\xff\xff\xff\xff\x09\x00\
    \x14\x00feats.npy\x01\x00\x10\x00\x90\x00\x00\x00\x00\x00\x00\x00T\x00\x00\x00\x00\x00\x00\
    \x00\x9b\xec\x17\xea\x1b\x10\xc9\xc8P\xc6P\xad\x9e\x92Z\x9c\x5c\xa4n\xa5\xa0n\x93f\xa2\xae\
    \xa3\xa0\x9e\x96_TR\x94\x98\x17\x9f_\x94\x92\x0a\x12wK\xcc)N\x05\x8a\x17g$\x16\xa4\x02\xf9\
    \x1aF:\x0aF\x9a:\x0a\xb5\x0ad\x03.\x06\x86\x03\xf6\x0c@\x82\x81\xa1\xc1\x0eH;\x02\x00PK\x03\
    \x04-\x00\x00\x00\x08\x00\x00\x00!\x00\x9dmtG\xff\xff\xff\xff\xff\xff\xff\xff\x0a\x00\x14\
    \x00labels.npy\x01\x00\x10\x00\x90\x00\x00\x00\x00\x00\x00\x00I\x00\x00\x00\x00\x00\x00\x00\
    \x9b\xec\x17\xea\x1b\x10\xc9\xc8P\xc6P\xad\x9e\x92Z\x9c\x5c\xa4n\xa5\xa0n\x93i\xa1\xae\xa3\
    \xa0\x9e\x96_TR\x94\x98\x17\x9f_\x94\x92\x0a\x12wK\xcc)N\x05\x8a\x17g$\x16\xa4\x02\xf9\x1a\
    F:\x9a:\x0a\xb5\x0a\x14\x00.\x06(`\x82\xd2\x00PK\x01\x02-\x03-\x00\x00\x00\x08\x00\x00\x00\
    !\x007\xe4BIT\x00\x00\x00\x90\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \x80\x01\x00\x00\x00\x00feats.npyPK\x01\x02-\x03-\x00\x00\x00\x08\x00\x00\x00!\x00\x9dmt\
    GI\x00\x00\x00\x90\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01\x8f\
    \x00\x00\x00labels.npyPK\x05\x06\x00\x00\x00\x00\x02\x00\x02\x00o\x00\x00\x00\x14\x01\x00\
    \x00\x00\x00";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A `.npy` with an arbitrary header, for inputs numpy would refuse to write (or that we want
/// to corrupt). The header is padded like numpy's, so the data starts at byte 128.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    header.push_str(&" ".repeat(127 - 10 - header.len()));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The error and its message, asserting that the message names every string in `must`.
fn failure<T: std::fmt::Debug>(r: ensembed::Result<T>, must: &[&str]) -> (Error, String) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for m in must {
        assert!(msg.contains(m), "message {msg:?} should contain {m:?}");
    }
    (e, msg)
}

/// Entry names of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After a failed import into `dir/out`: neither the store nor its temporary directory exists.
fn assert_nothing_written(dir: &Path) {
    let left: Vec<String> = entries(dir).into_iter().filter(|e| e.contains("out")).collect();
    assert!(left.is_empty(), "a failed import left {left:?} behind");
}

fn f32_data(d: &NpyData) -> &[f32] {
    match d {
        NpyData::F32(v) => v,
        other => panic!("expected f32 data, got {}", other.descr()),
    }
}

// ---------------------------------------------------------------------------------------------
// .npy / .npz known answers

#[test]
fn npy_f32_known_answer() {
    let a = read_npy_bytes(NPY_F32, Path::new("f32.npy")).unwrap();
    assert_eq!(a.shape, [2, 2]);
    assert_eq!(f32_data(&a.data), [1.5, -2.0, 0.25, 8.0]);
    let m = a.to_f32_matrix(Path::new("f32.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (2, 2));
    assert_eq!(m.row(1), [0.25, 8.0]);
}

#[test]
fn npy_f16_known_answer() {
    let a = read_npy_bytes(NPY_F16, Path::new("f16.npy")).unwrap();
    assert_eq!(a.shape, [2, 3]);
    let NpyData::F16(h) = &a.data else {
        panic!("expected f16, got {}", a.data.descr())
    };
    assert_eq!(h[2], f16::from_f32(3.0));
    let m = a.to_f32_matrix(Path::new("f16.npy")).unwrap();
    assert_eq!(m.data, [1.0, -0.5, 3.0, 0.25, 2.0, -8.0]);
}

#[test]
fn npy_f64_is_converted_to_f32() {
    let a = read_npy_bytes(NPY_F64, Path::new("f64.npy")).unwrap();
    assert_eq!(a.data, NpyData::F64(vec![0.5, -1.25]));
    assert_eq!(a.to_f32_matrix(Path::new("f64.npy")).unwrap().data, [0.5, -1.25]);
    // A finite f64 outside the f32 range is refused rather than turned into infinity.
    let big = npy("<f8", "(1, 1)", &1e300f64.to_le_bytes());
    let big = read_npy_bytes(&big, Path::new("big.npy")).unwrap();
    failure(big.to_f32_matrix(Path::new("big.npy")), &["big.npy", "1e300"]);
}

#[test]
fn npy_integer_labels_known_answer() {
    let p = Path::new("labels.npy");
    assert_eq!(read_npy_bytes(NPY_I64, p).unwrap().to_i64(p).unwrap(), [0, 2, 1]);
    assert_eq!(read_npy_bytes(NPY_I32, p).unwrap().to_i64(p).unwrap(), [3, 0, 1]);
    let u8s = read_npy_bytes(NPY_U8, p).unwrap();
    assert_eq!(u8s.data, NpyData::U8(vec![1, 0, 2]));
    assert_eq!(u8s.to_i64(p).unwrap(), [1, 0, 2]);
    // Float labels are refused, not truncated.
    let (e, _) = failure(
        read_npy_bytes(NPY_F32, p).unwrap().to_i64(p),
        &["labels.npy", "<f4"],
    );
    assert_format(&e, "descr");
}

#[test]
fn npy_fortran_order_is_transposed_to_c_order() {
    let a = read_npy_bytes(NPY_FORTRAN, Path::new("fortran.npy")).unwrap();
    assert_eq!(a.shape, [2, 3]);
    assert_eq!(f32_data(&a.data), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn npz_stored_and_deflated_known_answer() {
    for (bytes, what) in [(NPZ_STORED, "savez"), (NPZ_DEFLATED, "savez_compressed")] {
        let arrays = read_npz_bytes(bytes, Path::new("a.npz")).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["feats", "labels"], "{what}");
        assert_eq!(arrays[0].1.shape, [2, 2], "{what}");
        assert_eq!(f32_data(&arrays[0].1.data), [1.5, -2.0, 0.25, 8.0], "{what}");
        assert_eq!(arrays[1].1.data, NpyData::I64(vec![0, 2]), "{what}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "a.npz", NPZ_DEFLATED);
    assert_eq!(read_npz(&p).unwrap().len(), 2);
}

#[test]
fn write_npy_is_byte_identical_to_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let m = Matrix::from_vec(2, 2, vec![1.5, -2.0, 0.25, 8.0]).unwrap();
    let p = dir.path().join("m.npy");
    write_npy_f32(&p, &m).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), NPY_F32);
    let q = dir.path().join("l.npy");
    write_npy_i64(&q, &[0, 2, 1]).unwrap();
    assert_eq!(std::fs::read(&q).unwrap(), NPY_I64);
    // Only the two outputs: the temporary files were renamed away.
    assert_eq!(entries(dir.path()), ["l.npy", "m.npy"]);
}

#[test]
fn npy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_matrix(&mut rng(1), 37, 5);
    let p = dir.path().join("r.npy");
    write_npy_f32(&p, &m).unwrap();
    assert_eq!(read_npy(&p).unwrap().to_f32_matrix(&p).unwrap(), m);
    let empty = Matrix::zeros(0, 3);
    write_npy_f32(&p, &empty).unwrap();
    assert_eq!(read_npy(&p).unwrap().shape, [0, 3]);
}

#[test]
fn streamed_writers_are_byte_identical_to_whole_buffer_serialisation() {
    use std::collections::HashMap;

    use ensembed::artifact::{write_representations, RepresentationWriter};
    use safetensors::tensor::{Dtype as St, TensorView};
    let dir = tempfile::tempdir().unwrap();
    // Tensors of several dtypes and names, given out of order: the streamed data must follow
    // the order safetensors' header gives them.
    let (f, g): (Vec<f32>, Vec<f32>) = ((0..12).map(|i| i as f32 * 0.5).collect(), vec![1.0, -2.0, 3.0, -4.0]);
    let (u, l): (Vec<u32>, Vec<u64>) = (vec![7, 8, 9], vec![1, 2]);
    let tensors = vec![
        ("b.f".to_string(), TensorView::new(St::F32, vec![3, 4], bytemuck::cast_slice(&f)).unwrap()),
        ("a.u".to_string(), TensorView::new(St::U32, vec![3], bytemuck::cast_slice(&u)).unwrap()),
        ("c.l".to_string(), TensorView::new(St::U64, vec![2], bytemuck::cast_slice(&l)).unwrap()),
        ("a.f".to_string(), TensorView::new(St::F32, vec![2, 2], bytemuck::cast_slice(&g)).unwrap()),
    ];
    let meta = HashMap::from([("k".to_string(), "v".to_string())]);
    let p = dir.path().join("t.safetensors");
    ensembed::fsio::write_safetensors(&p, &tensors, Some(meta.clone())).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), safetensors::serialize(tensors.clone(), Some(meta)).unwrap());

    // Representations: whole, in uneven blocks, and resumed after a cut, against numpy's layout
    // (write_npy_f32, checked against np.save above) and safetensors::serialize.
    let m = random_matrix(&mut rng(4), 23, 5);
    for ext in ["npy", "safetensors"] {
        let want = if ext == "npy" {
            let q = dir.path().join("want.npy");
            write_npy_f32(&q, &m).unwrap();
            std::fs::read(&q).unwrap()
        } else {
            let view = TensorView::new(St::F32, vec![23, 5], bytemuck::cast_slice(&m.data)).unwrap();
            let meta = HashMap::from([("format".to_string(), "ensembed-representations".to_string())]);
            safetensors::serialize([("representations", view)], Some(meta)).unwrap()
        };
        let p = dir.path().join(format!("r.{ext}"));
        write_representations(&p, &m).unwrap();
        assert!(std::fs::read(&p).unwrap() == want, "{ext}: whole");
        let mut w = RepresentationWriter::create(&p, 23, 5).unwrap();
        m.data.chunks(4 * 5).for_each(|rows| w.write_rows(rows).unwrap());
        w.finish().unwrap();
        assert!(std::fs::read(&p).unwrap() == want, "{ext}: in blocks of 4 rows");
        let tmp = dir.path().join(format!(".r.{ext}.partial"));
        let mut w = RepresentationWriter::resumable(&p, &tmp, 23, 5, 0).unwrap();
        w.write_rows(&m.data[..9 * 5]).unwrap();
        w.sync().unwrap();
        drop(w);
        assert!(tmp.exists(), "a resumable writer keeps its file when dropped unfinished");
        let mut w = RepresentationWriter::resumable(&p, &tmp, 23, 5, 7).unwrap();
        assert_eq!(w.rows_written(), 7);
        w.write_rows(&m.data[7 * 5..]).unwrap();
        w.finish().unwrap();
        assert!(std::fs::read(&p).unwrap() == want, "{ext}: resumed after 7 of 9 rows");
        assert!(!tmp.exists());
        // Too many rows, too few, or a resume point past what the file holds: errors with the
        // counts, and no temporary file left.
        let q = dir.path().join(format!("short.{ext}"));
        let mut w = RepresentationWriter::create(&q, 2, 5).unwrap();
        let e = w.write_rows(&m.data[..15]).unwrap_err().to_string();
        assert!(e.contains('2') && e.contains("15"), "{e}");
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains('2') && e.contains('0'), "{e}");
        let mut w = RepresentationWriter::resumable(&q, &tmp, 23, 5, 0).unwrap();
        w.write_rows(&m.data[..3 * 5]).unwrap();
        w.sync().unwrap();
        drop(w);
        let e = RepresentationWriter::resumable(&q, &tmp, 23, 5, 30).unwrap_err().to_string();
        assert!(e.contains("30 rows"), "{e}");
        std::fs::remove_file(&tmp).unwrap();
        assert!(!q.exists());
    }
    assert_eq!(entries(dir.path()), ["r.npy", "r.safetensors", "t.safetensors", "want.npy"]);
}

// ---------------------------------------------------------------------------------------------
// .npy rejections

fn assert_format(e: &Error, want_field: &str) {
    match e {
        Error::Format { field, .. } => assert_eq!(field, want_field, "{e}"),
        other => panic!("expected Error::Format on `{want_field}`, got {other:?}"),
    }
}

#[test]
fn npy_big_endian_is_rejected() {
    let (e, _) = failure(
        read_npy_bytes(NPY_BIG_ENDIAN, Path::new("be.npy")),
        &["be.npy", "'>f4'", "big-endian"],
    );
    assert_format(&e, "descr");
}

#[test]
fn npy_bad_descr_is_rejected() {
    let complex = npy("<c8", "(1,)", &[0; 8]);
    let (e, _) = failure(read_npy_bytes(&complex, Path::new("c.npy")), &["c.npy", "'<c8'"]);
    assert_format(&e, "descr");
    let object = npy("|O", "(1,)", &[0; 8]);
    let (e, _) = failure(read_npy_bytes(&object, Path::new("o.npy")), &["o.npy", "'|O'"]);
    assert_format(&e, "descr");
    let garbage = b"not a numpy file at all";
    let (e, _) = failure(read_npy_bytes(garbage, Path::new("g.npy")), &["g.npy"]);
    assert_format(&e, "magic");
}

#[test]
fn npy_truncated_is_rejected_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "short.npy", &NPY_F32[..NPY_F32.len() - 3]);
    let (e, _) = failure(
        read_npy(&p),
        &["short.npy", "(2, 2)", "16 bytes", "13 bytes", "truncated"],
    );
    assert_format(&e, "shape");
}

#[test]
fn npy_shape_overflow_is_rejected_before_allocating() {
    let huge = npy("<f4", "(18446744073709551615, 2)", &[0; 8]);
    let (e, _) = failure(
        read_npy_bytes(&huge, Path::new("huge.npy")),
        &["huge.npy", "18446744073709551615", "overflows"],
    );
    assert_format(&e, "shape");
    // Declares 4 GB but holds 8 bytes: refused by the size check, nothing allocated.
    let big = npy("<f4", "(1000000000,)", &[0; 8]);
    failure(
        read_npy_bytes(&big, Path::new("big.npy")),
        &["big.npy", "4000000000 bytes", "8 bytes"],
    );
}

#[test]
fn npz_entry_whose_header_disagrees_with_its_size_is_rejected() {
    // The stored archive with feats' header edited from (2, 2) to (2, 3): the entry still holds
    // 16 bytes of data, which is caught from the zip directory's size before reading the data.
    let text_from = b"'shape': (2, 2)";
    let at = NPZ_STORED
        .windows(text_from.len())
        .position(|w| w == text_from)
        .unwrap();
    let mut bytes = NPZ_STORED.to_vec();
    bytes[at + 13] = b'3';
    let (e, _) = failure(
        read_npz_bytes(&bytes, Path::new("x.npz")),
        &["x.npz:feats", "24 bytes", "16 bytes"],
    );
    assert_format(&e, "shape");
}

#[test]
fn npy_version_2_header_is_read() {
    let v1 = npy("<f4", "(1, 2)", &f32_bytes(&[3.0, -1.0]));
    let header = &v1[10..128];
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend((header.len() as u32 + 2).to_le_bytes());
    v2.extend(header);
    v2.extend(b"  ");
    v2.extend(&v1[128..]);
    let a = read_npy_bytes(&v2, Path::new("v2.npy")).unwrap();
    assert_eq!(
        (a.shape.as_slice(), f32_data(&a.data)),
        (&[1, 2][..], &[3.0, -1.0][..])
    );
}

// ---------------------------------------------------------------------------------------------
// Import and store reading

#[test]
fn import_f32_then_read_rows_labels_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_matrix(&mut rng(2), 20, 6);
    let b = random_matrix(&mut rng(3), 20, 3);
    let pa = dir.path().join("a.npy");
    let pb = dir.path().join("b.npy");
    write_npy_f32(&pa, &a).unwrap();
    write_npy_f32(&pb, &b).unwrap();
    let labels: Vec<i32> = (0..20).map(|i| i % 4).collect();
    let pl = write(
        dir.path(),
        "l.npy",
        &npy(
            "<i4",
            "(20,)",
            &labels.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        ),
    );
    let ids: String = (0..20).map(|i| format!("img/{i:03}.jpg\n")).collect();
    let pi = write(dir.path(), "ids.txt", ids.as_bytes());
    let out = dir.path().join("out");
    let bb = vec![("a-net".to_string(), pa), ("b.v2".to_string(), pb)];

    let store = import_numpy(&out, &bb, Some(&pl), Some(&pi), false).unwrap();
    assert_eq!(store.len(), 20);
    assert_eq!(store.backbones()[0].name, "a-net");
    assert_eq!(
        (store.backbones()[0].dim, store.backbones()[0].dtype),
        (6, Dtype::F32)
    );
    assert_eq!(
        (store.backbones()[1].dim, store.backbones()[1].dtype),
        (3, Dtype::F32)
    );
    let mut row = vec![0.0; 6];
    for i in 0..20 {
        store.read_row(0, i, &mut row);
        assert_eq!(row, a.row(i));
    }
    assert_eq!(
        store.labels().unwrap(),
        labels.iter().map(|&x| x as u32).collect::<Vec<_>>()
    );
    assert_eq!(store.ids().unwrap()[7], "img/007.jpg");
    assert_eq!(store.backbone_index("b.v2").unwrap(), 1);
    failure(store.backbone_index("c"), &["`backbone` = c", "a-net", "b.v2"]);
    store.validate_values().unwrap();

    // Reopening sees the same thing, and nothing but the store was left beside the inputs.
    let again = Store::open(&out).unwrap();
    assert_eq!(again.manifest(), store.manifest());
    assert_eq!(entries(dir.path()), ["a.npy", "b.npy", "ids.txt", "l.npy", "out"]);
    assert_eq!(
        entries(&out),
        [
            "a-net.safetensors",
            "b.v2.safetensors",
            "ids.txt",
            "labels.safetensors",
            "manifest.json"
        ]
    );
}

#[test]
fn import_keeps_f16_as_f16() {
    let dir = tempfile::tempdir().unwrap();
    let p16 = write(dir.path(), "h.npy", NPY_F16);
    let out = dir.path().join("out");
    let store = import_numpy(&out, &[("h".into(), p16)], None, None, false).unwrap();
    assert_eq!(store.backbones()[0].dtype, Dtype::F16);
    let mut row = vec![0.0; 3];
    store.read_row(0, 1, &mut row);
    assert_eq!(row, [0.25, 2.0, -8.0]);
    // Half the bytes of f32: 2 rows x 3 columns x 2 bytes of data after the header.
    let len = std::fs::metadata(out.join("h.safetensors")).unwrap().len();
    assert!(len < 8 + 128 + 12 + 1, "{len} bytes");
    assert!(store.labels().is_none() && store.ids().is_none() && store.classes().is_none());
}

#[test]
fn import_selects_arrays_from_npz() {
    let dir = tempfile::tempdir().unwrap();
    let z = write(dir.path(), "x.npz", NPZ_DEFLATED);
    let feats = PathBuf::from(format!("{}:feats", z.display()));
    let labels = PathBuf::from(format!("{}:labels", z.display()));
    let store = import_numpy(
        &dir.path().join("out"),
        &[("f".into(), feats)],
        Some(&labels),
        None,
        false,
    )
    .unwrap();
    let mut row = vec![0.0; 2];
    store.read_row(0, 0, &mut row);
    assert_eq!(row, [1.5, -2.0]);
    assert_eq!(store.labels().unwrap(), [0, 2]);
    let missing = PathBuf::from(format!("{}:nope", z.display()));
    failure(
        import_numpy(
            &dir.path().join("out2"),
            &[("f".into(), missing)],
            None,
            None,
            false,
        ),
        &["x.npz", "`nope`", "feats, labels"],
    );
    // A bare npz with several arrays is ambiguous.
    failure(
        import_numpy(&dir.path().join("out3"), &[("f".into(), z)], None, None, false),
        &["x.npz", "select one"],
    );
}

#[test]
fn gather_normalized_gives_unit_rows_matching_manual_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_matrix(&mut rng(4), 300, 7);
    let mut w = StoreWriter::create(&dir.path().join("s"), 300, false).unwrap();
    w.add_backbone_f32("f32", &m, Dtype::F32).unwrap();
    w.add_backbone_f32("f16", &m, Dtype::F16).unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();

    let idx: Vec<usize> = (0..200).map(|k| (k * 37) % 300).collect();
    for j in 0..2 {
        let mut out = vec![0.0; idx.len() * 7];
        store.gather_normalized(j, &idx, &mut out);
        let all = store.features_normalized(j);
        for (o, &i) in out.chunks_exact(7).zip(&idx) {
            let norm: f64 = o.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-6,
                "row {i} of backbone {j} has norm {norm}"
            );
            let mut manual: Vec<f32> = m.row(i).to_vec();
            if j == 1 {
                manual.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
            }
            let n = manual.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;
            manual.iter_mut().for_each(|x| *x /= n);
            for (a, b) in o.iter().zip(&manual) {
                assert!((a - b).abs() < 1e-6, "row {i}: {a} vs {b}");
            }
            assert_eq!(o, all.row(i));
        }
    }
}

#[test]
fn writer_round_trips_labels_classes_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_matrix(&mut rng(5), 4, 2);
    let mut w = StoreWriter::create(&dir.path().join("nested/s"), 4, false).unwrap();
    w.add_backbone_f32("x", &m, Dtype::F32).unwrap();
    let classes = vec!["cat".to_string(), "dog".to_string(), "emu".to_string()];
    failure(
        w.set_labels(&[0, 1, 3, 0], Some(classes.clone())),
        &["3", "row 2", "number of classes, 3"],
    );
    w.set_labels(&[0, 1, 2, 0], Some(classes.clone())).unwrap();
    failure(
        w.set_ids(vec!["a".into(), "b\nc".into(), "d".into(), "e".into()]),
        &["\"b\\nc\"", "row 1"],
    );
    w.set_ids(vec!["a".into(), "".into(), "c d".into(), "é".into()])
        .unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();
    assert_eq!(store.labels().unwrap(), [0, 1, 2, 0]);
    assert_eq!(store.classes().unwrap(), classes);
    assert_eq!(store.num_classes(), Some(3));
    assert_eq!(store.ids().unwrap(), ["a", "", "c d", "é"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("nested/s/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "ensembed-store");
    assert_eq!(manifest["backbones"][0]["dtype"], "f32");
    assert_eq!(manifest["backbones"][0]["file"], "x.safetensors");
}

#[test]
fn writer_refuses_non_stores_and_replaces_stores_only_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_matrix(&mut rng(6), 3, 2);
    let build = |path: &Path, overwrite: bool, name: &str| -> ensembed::Result<PathBuf> {
        let mut w = StoreWriter::create(path, 3, overwrite)?;
        w.add_backbone_f32(name, &m, Dtype::F32)?;
        w.finish()
    };
    let other = dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.jpg"), b"x").unwrap();
    for overwrite in [false, true] {
        let (e, _) = failure(build(&other, overwrite, "a"), &["photos", "not a feature store"]);
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
    }
    assert_eq!(entries(&other), ["keep.jpg"]);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    build(&empty, false, "a").unwrap();
    let (e, _) = failure(
        build(&empty, false, "b"),
        &["empty", "already holds a feature store"],
    );
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    build(&empty, true, "b").unwrap();
    assert_eq!(Store::open(&empty).unwrap().backbones()[0].name, "b");
    assert_eq!(
        entries(dir.path()),
        ["empty", "photos"],
        "no temporary or old directory is left"
    );

    // A writer dropped without finish leaves nothing.
    let mut w = StoreWriter::create(&dir.path().join("dropped"), 3, false).unwrap();
    w.add_backbone_f32("a", &m, Dtype::F32).unwrap();
    drop(w);
    assert_eq!(entries(dir.path()), ["empty", "photos"]);
}

// ---------------------------------------------------------------------------------------------
// Import rejections: right variant, a message naming the file and the value, nothing left.

/// Imports `bytes` as the single backbone `b` from `dir/name`.
fn import_one(dir: &Path, name: &str, bytes: &[u8]) -> ensembed::Result<Store> {
    let p = write(dir, name, bytes);
    import_numpy(&dir.join("out"), &[("b".into(), p)], None, None, false)
}

#[test]
fn import_rejects_nan_with_file_row_col_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = npy("<f4", "(2, 3)", &f32_bytes(&[1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0]));
    let (e, _) = failure(
        import_one(dir.path(), "nan.npy", &bytes),
        &["nan.npy", "NaN", "backbone `b`"],
    );
    assert!(matches!(e, Error::NonFinite { row: 1, col: 1, .. }), "{e:?}");
    assert_nothing_written(dir.path());
}

#[test]
fn import_rejects_inf_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = npy("<f2", "(2, 2)", &f16_bytes(&[1.0, f32::NEG_INFINITY, 3.0, 4.0]));
    let (e, _) = failure(import_one(dir.path(), "inf.npy", &bytes), &["inf.npy", "-inf"]);
    assert!(matches!(e, Error::NonFinite { row: 0, col: 1, .. }), "{e:?}");
    assert_nothing_written(dir.path());
}

#[test]
fn import_rejects_all_zero_row() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = npy("<f4", "(3, 2)", &f32_bytes(&[1.0, 2.0, 0.0, -0.0, 5.0, 6.0]));
    let (e, _) = failure(
        import_one(dir.path(), "zero.npy", &bytes),
        &["zero.npy", "row 1", "all zeros"],
    );
    assert!(matches!(e, Error::ZeroRow { row: 1, .. }), "{e:?}");
    assert_nothing_written(dir.path());
}

#[test]
fn import_rejects_different_row_counts_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "five.npy",
        &npy("<f4", "(5, 1)", &f32_bytes(&[1.0; 5])),
    );
    let b = write(
        dir.path(),
        "four.npy",
        &npy("<f4", "(4, 1)", &f32_bytes(&[1.0; 4])),
    );
    let r = import_numpy(
        &dir.path().join("out"),
        &[("a".into(), a), ("b".into(), b)],
        None,
        None,
        false,
    );
    let (e, _) = failure(r, &["five.npy", "four.npy", "5 rows", "4 rows"]);
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert_nothing_written(dir.path());
}

#[test]
fn import_rejects_labels_of_wrong_length_and_negative_labels() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.npy", &npy("<f4", "(3, 1)", &f32_bytes(&[1.0; 3])));
    let bb = [("a".to_string(), a)];
    let truncated = write(dir.path(), "short.npy", &NPY_U8[..NPY_U8.len() - 1]);
    failure(
        import_numpy(&dir.path().join("out"), &bb, Some(&truncated), None, false),
        &["short.npy", "truncated"],
    );
    let two = write(dir.path(), "two.npy", &npy("|u1", "(2,)", &[0, 1]));
    let (e, _) = failure(
        import_numpy(&dir.path().join("out"), &bb, Some(&two), None, false),
        &["two.npy", "a.npy", "3 labels", "2 labels"],
    );
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    let neg = write(
        dir.path(),
        "neg.npy",
        &npy(
            "<i8",
            "(3,)",
            &[0i64, -1, 2]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    );
    let (e, _) = failure(
        import_numpy(&dir.path().join("out"), &bb, Some(&neg), None, false),
        &["neg.npy", "-1", "row 1"],
    );
    assert_format(&e, "labels");
    let ids = write(dir.path(), "ids.txt", b"x\ny\n");
    let (e, _) = failure(
        import_numpy(&dir.path().join("out"), &bb, None, Some(&ids), false),
        &["ids.txt", "3 lines", "2 lines"],
    );
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert_nothing_written(dir.path());
}

#[test]
fn import_rejects_duplicate_and_unsafe_backbone_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.npy", &npy("<f4", "(1, 1)", &f32_bytes(&[1.0])));
    for (names, value) in [
        (vec!["x", "x"], "`x`"),
        (vec!["x", "X"], "`X`"),
        (vec!["../x"], "`../x`"),
        (vec!["a/b"], "`a/b`"),
        (vec![".hidden"], "`.hidden`"),
        (vec![""], "``"),
        (vec!["labels"], "`labels`"),
    ] {
        let bb: Vec<(String, PathBuf)> = names.iter().map(|n| (n.to_string(), a.clone())).collect();
        let (e, _) = failure(
            import_numpy(&dir.path().join("out"), &bb, None, None, false),
            &[value],
        );
        assert!(matches!(e, Error::Config { .. }), "{names:?}: {e:?}");
    }
    assert_eq!(entries(dir.path()), ["a.npy"], "nothing was written anywhere");
}

// ---------------------------------------------------------------------------------------------
// Damaged stores

fn small_store(dir: &Path) -> PathBuf {
    let m = random_matrix(&mut rng(7), 10, 4);
    let mut w = StoreWriter::create(&dir.join("s"), 10, false).unwrap();
    w.add_backbone_f32("feat", &m, Dtype::F32).unwrap();
    w.set_labels(&[0; 10], None).unwrap();
    w.finish().unwrap()
}

#[test]
fn open_rejects_truncated_safetensors_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let s = small_store(dir.path());
    let f = s.join("feat.safetensors");
    let full = std::fs::read(&f).unwrap();
    std::fs::write(&f, &full[..full.len() - 5]).unwrap();
    let want = full.len().to_string();
    let got = (full.len() - 5).to_string();
    let (e, _) = failure(Store::open(&s), &["feat.safetensors", &want, &got, "truncated"]);
    assert_format(&e, "length");
}

#[test]
fn open_rejects_manifest_entries_outside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = small_store(dir.path());
    let manifest = s.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    for (from, to, field) in [
        (
            "\"feat.safetensors\"",
            "\"../feat.safetensors\"",
            "backbones[0].file",
        ),
        ("\"feat.safetensors\"", "\"..\"", "backbones[0].file"),
        ("\"feat.safetensors\"", "\"/etc/passwd\"", "backbones[0].file"),
        ("\"labels.safetensors\"", "\"sub/labels.safetensors\"", "labels"),
        ("\"name\": \"feat\"", "\"name\": \"../feat\"", "backbones[0].name"),
    ] {
        std::fs::write(&manifest, text.replace(from, to)).unwrap();
        let value = to.trim_matches('"').rsplit('"').next().unwrap();
        let (e, _) = failure(Store::open(&s), &["manifest.json", value]);
        assert_format(&e, field);
    }
    // Tensor shape disagreeing with the manifest.
    std::fs::write(&manifest, text.replace("\"dim\": 4", "\"dim\": 5")).unwrap();
    let (e, _) = failure(Store::open(&s), &["feat.safetensors", "[10, 4]", "[10, 5]"]);
    assert_format(&e, "shape");
}

#[test]
fn validate_values_reports_backbone_row_col_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = random_matrix(&mut rng(8), 3000, 4);
    m.row_mut(2500)[3] = f32::INFINITY;
    m.row_mut(2900).fill(0.0);
    let mut w = StoreWriter::create(&dir.path().join("s"), 3000, false).unwrap();
    w.add_backbone_f32("ok", &random_matrix(&mut rng(9), 3000, 2), Dtype::F16)
        .unwrap();
    w.add_backbone_f32("bad", &m, Dtype::F16).unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();
    let (e, _) = failure(
        store.validate_values(),
        &["bad.safetensors", "backbone `bad`", "inf", "row 2500", "column 3"],
    );
    assert!(
        matches!(
            e,
            Error::NonFinite {
                row: 2500,
                col: 3,
                ..
            }
        ),
        "{e:?}"
    );

    m.row_mut(2500)[3] = 1.0;
    let mut w = StoreWriter::create(&dir.path().join("s"), 3000, true).unwrap();
    w.add_backbone_f32("bad", &m, Dtype::F32).unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();
    let (e, _) = failure(store.validate_values(), &["bad.safetensors", "row 2900"]);
    assert!(matches!(e, Error::ZeroRow { row: 2900, .. }), "{e:?}");
}

#[test]
fn shards_merge_back_into_the_same_store() {
    use ensembed::store::{merge_stores, shard_store};
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(21);
    let n = 23;
    let a = random_matrix(&mut r, n, 5);
    let b = random_matrix(&mut r, n, 3);
    let half: Vec<f16> = b.data.iter().map(|&v| f16::from_f32(v)).collect();
    let src = dir.path().join("src");
    let mut w = StoreWriter::create(&src, n, false).unwrap();
    w.add_backbone_f32("a", &a, Dtype::F32).unwrap();
    w.add_backbone_f16("b", 3, &half).unwrap();
    w.set_labels(&(0..n as i64).map(|i| i % 4).collect::<Vec<_>>(), Some(vec!["w".into(), "x".into(), "y".into(), "z".into()])).unwrap();
    w.set_ids((0..n).map(|i| format!("img/{i}.jpg")).collect()).unwrap();
    w.finish().unwrap();
    let store = Store::open(&src).unwrap();
    let parts = shard_store(&store, 4, &dir.path().join("shards"), false).unwrap();
    let shards: Vec<Store> = parts.iter().map(|p| Store::open(p).unwrap()).collect();
    // Contiguous, near-equal pieces: 23 rows in 4 parts are 5, 6, 6, 6.
    assert_eq!(shards.iter().map(Store::len).collect::<Vec<_>>(), [5, 6, 6, 6]);
    assert_eq!(shards[1].ids().unwrap()[0], "img/5.jpg");
    assert_eq!(shards[3].backbones()[1].dtype, Dtype::F16);
    let merged = merge_stores(&shards, &dir.path().join("merged"), false).unwrap();
    // The merged store is the original, byte for byte.
    for f in ["manifest.json", "a.safetensors", "b.safetensors", "labels.safetensors", "ids.txt"] {
        assert!(std::fs::read(src.join(f)).unwrap() == std::fs::read(merged.join(f)).unwrap(), "{f} differs after shard + merge");
    }
    // Stores of other backbones do not merge, and the error names both.
    let other = dir.path().join("other");
    let mut w = StoreWriter::create(&other, 2, false).unwrap();
    w.add_backbone_f32("a", &random_matrix(&mut r, 2, 5), Dtype::F32).unwrap();
    w.finish().unwrap();
    let (_, msg) = failure(merge_stores(&[Store::open(&src).unwrap(), Store::open(&other).unwrap()], &dir.path().join("bad"), false), &["other", "src"]);
    assert!(msg.contains("b[3, f16]"), "{msg}");
    assert!(!dir.path().join("bad").exists());
    let (_, _) = failure(shard_store(&store, 24, &dir.path().join("too-many"), false), &["parts", "24", "23"]);
}

#[test]
fn subset_keeps_named_backbones_and_the_first_rows_of_each_class() {
    use ensembed::store::{subset_store, Subset};
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(22);
    let n = 10;
    let a = random_matrix(&mut r, n, 5);
    let b = random_matrix(&mut r, n, 3);
    let src = dir.path().join("src");
    let mut w = StoreWriter::create(&src, n, false).unwrap();
    w.add_backbone_f32("a", &a, Dtype::F32).unwrap();
    w.add_backbone_f32("b", &b, Dtype::F32).unwrap();
    // Labels 0 1 0 2 0 1 1 0 2 2: the first two of each class are rows 0 2 | 1 5 | 3 8.
    let labels = [0i64, 1, 0, 2, 0, 1, 1, 0, 2, 2];
    w.set_labels(&labels, None).unwrap();
    w.set_ids((0..n).map(|i| format!("{i}.jpg")).collect()).unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();
    let subset = Subset { backbones: vec!["b".into()], per_class: Some(2) };
    let out = Store::open(&subset_store(&store, &subset, &dir.path().join("sub"), false).unwrap()).unwrap();
    let rows = [0usize, 1, 2, 3, 5, 8];
    assert_eq!(out.ids().unwrap(), rows.map(|i| format!("{i}.jpg")));
    assert_eq!(out.labels().unwrap(), rows.map(|i| labels[i] as u32));
    assert_eq!(out.backbones().len(), 1);
    let mut got = vec![0.0; 3];
    for (k, &i) in rows.iter().enumerate() {
        out.read_row(0, k, &mut got);
        assert_eq!(got, b.row(i));
    }
    // Bad selections name the value and what exists; nothing is written.
    let bad = Subset { backbones: vec!["c".into()], per_class: None };
    let (_, msg) = failure(subset_store(&store, &bad, &dir.path().join("bad"), false), &["c", "a, b"]);
    assert!(!dir.path().join("bad").exists(), "{msg}");
    let zero = Subset { backbones: vec![], per_class: Some(0) };
    failure(subset_store(&store, &zero, &dir.path().join("bad"), false), &["per_class", "0"]);
}
