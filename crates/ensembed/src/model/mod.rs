//! The ensemble model: one MLP per backbone mapping the shared representation to that
//! backbone's feature, plus (for backbones of different widths) the PCA projection that
//! initialises representations. It is everything `embed` needs from training, saved as one
//! safetensors file whose metadata carries the spec, so the weights never travel without the
//! description needed to use them.

pub mod adam;
pub mod bank;
pub mod init;
pub mod loss;
pub mod mlp;

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::baseline::{average_rows, concat_rows};
use crate::config::BiasInit;
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::fsio;
use crate::matrix::Matrix;
use crate::pca::Projection;
use crate::rng::{stream, Purpose};
use mlp::Mlp;

/// A backbone as the model knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub name: String,
    pub dim: usize,
}

/// The shape of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub backbones: Vec<BackboneSpec>,
    /// Representation dimension d.
    pub dim: usize,
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Linear layers per MLP.
    pub depth: usize,
    pub final_relu: bool,
    /// Representations are kept non-negative ([`crate::config::FitConfig::nonneg`]); `embed`
    /// through this model keeps them so too. Absent from specs written before it existed.
    #[serde(default, skip_serializing_if = "crate::config::is_false")]
    pub nonneg: bool,
}

impl ModelSpec {
    /// Layer widths of MLP `j`: d -> hidden -> ... -> d_j.
    pub fn widths(&self, j: usize) -> Vec<usize> {
        let mut w = vec![self.dim];
        w.extend(std::iter::repeat_n(self.hidden, self.depth - 1));
        w.push(self.backbones[j].dim);
        w
    }

    /// True when representations start as the average baseline (all widths equal d);
    /// otherwise they start as the PCA projection of the concatenation.
    pub fn uses_average_init(&self) -> bool {
        self.backbones.iter().all(|b| b.dim == self.dim)
    }
}

/// Per-backbone MLPs and the representation initialiser.
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleModel {
    pub spec: ModelSpec,
    pub mlps: Vec<Mlp>,
    pub projection: Option<Projection>,
}

/// Replaces every row `x` by its nearest point (Euclidean) among the unit vectors with no
/// negative entry: `max(x, 0) / |max(x, 0)|`, or the basis vector of its largest entry when no
/// entry is positive. Rows with nothing to clamp are left exactly as they are, so the average
/// baseline of post-ReLU features (already non-negative, unit norm) passes through unchanged.
///
/// Why this and not `abs` or a shift, for the centred PCA init of mixed widths (about half its
/// entries negative): it is the same projection every constrained step applies, and it keeps
/// the positive half of each principal direction; `abs` would map x and -x (opposite points)
/// to the same vector, and shifting by the minimum would add one common offset that dominates
/// every row, making all rows nearly parallel, which is the very thing the spectrum and
/// neighbour-similarity diagnostics this variant exists for would then measure.
///
/// # Shapes
/// `x`: `[n, d]`, changed in place.
pub fn project_nonneg_unit(x: &mut Matrix) {
    let d = x.cols;
    if d == 0 {
        return;
    }
    for row in x.data.chunks_exact_mut(d) {
        if row.iter().all(|&v| v >= 0.0) {
            continue;
        }
        // The largest entry, before the clamp loses it (see the all-negative case below).
        let top = (0..d).fold(0, |a, k| if row[k] > row[a] { k } else { a });
        let mut norm2 = 0.0f64;
        for v in row.iter_mut() {
            *v = v.max(0.0);
            norm2 += (*v as f64) * (*v as f64);
        }
        if norm2 > 0.0 {
            let inv = (1.0 / norm2.sqrt()) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        } else {
            // No positive entry: |x - u|^2 = |x|^2 + 1 - 2 x.u over non-negative unit u is
            // smallest with all of u on the largest entry of x.
            row[top] = 1.0;
        }
    }
}

/// The safetensors metadata key that marks an ensembed model and carries its spec.
const META_KEY: &str = "ensembed-model-spec";

impl EnsembleModel {
    /// Freshly initialised MLPs (PyTorch's `nn.Linear` init from the seeded stream of each MLP).
    pub fn init(spec: ModelSpec, projection: Option<Projection>, last_bias: BiasInit, seed: u64) -> Self {
        let mlps = (0..spec.backbones.len())
            .map(|j| init::init_mlp(&spec.widths(j), spec.final_relu, last_bias, &mut stream(seed, Purpose::Init(j))))
            .collect();
        EnsembleModel { spec, mlps, projection }
    }

    /// Checks that `feats` has the backbones this model was fitted on, in the same order and
    /// with the same widths.
    pub fn check_features(&self, feats: &dyn FeatureSet) -> Result<()> {
        let (names, dims) = (feats.names(), feats.dims());
        let want: Vec<String> = self.spec.backbones.iter().map(|b| format!("{}[{}]", b.name, b.dim)).collect();
        let have: Vec<String> = names.iter().zip(&dims).map(|(n, d)| format!("{n}[{d}]")).collect();
        if want != have {
            return Err(Error::shape("backbones of the features against the model", want.join(", "), have.join(", ")));
        }
        Ok(())
    }

    /// Initial representations of rows `rows`: the average baseline, or the PCA projection of
    /// the concatenation for mixed widths; for a non-negative model, each then projected onto
    /// the non-negative unit sphere ([`project_nonneg_unit`]).
    ///
    /// # Shapes
    /// returns `[rows.len(), dim]`.
    pub fn initial_representations(&self, feats: &dyn FeatureSet, rows: &[usize], threads: usize) -> Result<Matrix> {
        let mut x = match &self.projection {
            None => average_rows(feats, rows)?,
            Some(p) => p.apply(&concat_rows(feats, rows), threads),
        };
        if self.spec.nonneg {
            project_nonneg_unit(&mut x);
        }
        Ok(x)
    }

    /// Writes the model as one safetensors file (atomically); the spec rides in its metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (j, mlp) in self.mlps.iter().enumerate() {
            for (l, layer) in mlp.layers.iter().enumerate() {
                tensors.push((format!("mlp.{j}.{l}.weight"), vec![layer.fan_out, layer.fan_in], &layer.weight));
                tensors.push((format!("mlp.{j}.{l}.bias"), vec![layer.fan_out], &layer.bias));
            }
        }
        if let Some(p) = &self.projection {
            tensors.push(("projection.mean".into(), vec![p.mean.len()], &p.mean));
            tensors.push((
                "projection.components".into(),
                vec![p.components.rows, p.components.cols],
                &p.components.data,
            ));
        }
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                let view = TensorView::new(StDtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .map_err(|e| Error::format(path, name.as_str(), e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        // One metadata key: safetensors writes metadata from a HashMap, whose order varies
        // from run to run, and the same model must give the same bytes.
        let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&self.spec).expect("spec serialises"))]);
        // Streamed from the weights: no second copy of them (ensembed::memory's bound).
        fsio::write_safetensors(path, &views, Some(meta))
    }

    /// Reads a model written by [`EnsembleModel::save`], checking every tensor's shape against
    /// the spec.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fsio::read(path)?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = format!("__metadata__.{META_KEY}");
        let spec_json = meta
            .get(META_KEY)
            .ok_or_else(|| Error::format(path, field.as_str(), "missing: not a model written by ensembed"))?;
        let spec: ModelSpec = serde_json::from_str(spec_json).map_err(|e| Error::format(path, field.as_str(), e.to_string()))?;
        // A zero width anywhere would let a tensor of zero elements stand for any other width (a
        // 100-byte file could then declare dim = 2^60 and make `embed` allocate for it): every
        // width must be at least 1, so each is bounded by the bytes of a weight tensor.
        if spec.backbones.is_empty()
            || !(1..=8).contains(&spec.depth)
            || spec.dim == 0
            || spec.hidden == 0
            || spec.backbones.iter().any(|b| b.dim == 0)
        {
            return Err(Error::format(path, field.as_str(), format!("invalid spec {spec_json}")));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, "tensors", e.to_string()))?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| Error::format(path, name, "tensor missing"))?;
            if t.dtype() != StDtype::F32 || t.shape() != shape {
                return Err(Error::format(
                    path,
                    name,
                    format!("expected F32 {shape:?}, found {:?} {:?}", t.dtype(), t.shape()),
                ));
            }
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let mut mlps = Vec::new();
        for j in 0..spec.backbones.len() {
            let widths = spec.widths(j);
            let mut layers = Vec::new();
            for l in 0..spec.depth {
                let (fan_in, fan_out) = (widths[l], widths[l + 1]);
                layers.push(mlp::Linear {
                    weight: read(&format!("mlp.{j}.{l}.weight"), &[fan_out, fan_in])?,
                    bias: read(&format!("mlp.{j}.{l}.bias"), &[fan_out])?,
                    fan_in,
                    fan_out,
                });
            }
            mlps.push(Mlp { layers, final_relu: spec.final_relu });
        }
        let projection = if spec.uses_average_init() {
            None
        } else {
            let total = spec
                .backbones
                .iter()
                .try_fold(0usize, |acc, b| acc.checked_add(b.dim))
                .ok_or_else(|| Error::format(path, field.as_str(), "the backbone widths overflow"))?;
            Some(Projection {
                mean: read("projection.mean", &[total])?,
                components: Matrix::from_vec(total, spec.dim, read("projection.components", &[total, spec.dim])?)?,
            })
        };
        Ok(EnsembleModel { spec, mlps, projection })
    }
}
