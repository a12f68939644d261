//! Checkpoints of an unfinished fit, so that a run killed at any moment and restarted with
//! `--resume` ends with output byte-identical to an uninterrupted run. A checkpoint holds the
//! whole [`FitState`] — the MLPs, every Adam moment, the memory bank with its optimiser state,
//! the sample order and the shuffle stream's position — as a directory written whole under a
//! temporary name and renamed into place, so a kill during the write leaves the previous
//! checkpoint (or none) intact.

use std::collections::HashMap;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::config::{BankMode, FitConfig};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::fit::{EpochStats, FitState};
use crate::fsio;
use crate::matrix::Matrix;
use crate::model::adam::Adam;
use crate::model::bank::Bank;
use crate::model::EnsembleModel;

const MODEL_FILE: &str = "model.safetensors";
const STATE_FILE: &str = "state.safetensors";
const META_FILE: &str = "state.json";

/// The scalar part of a checkpoint.
#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    config: FitConfig,
    /// Adam step counts per MLP and layer: (weight, bias).
    adam_steps: Vec<Vec<(u64, u64)>>,
    bank_steps: u64,
    /// Position of the shuffle stream, as a decimal string (u128 does not fit JSON numbers).
    shuffle_word_pos: String,
    history: Vec<EpochStats>,
}

/// Writes `state` (fitted with `cfg`) to the checkpoint directory `dir`, replacing any older one.
pub fn save_checkpoint(dir: &Path, state: &FitState, cfg: &FitConfig) -> Result<()> {
    fsio::write_dir_atomic(dir, |tmp| {
        state.model.save(&tmp.join(MODEL_FILE))?;
        let mut tensors: Vec<(String, StDtype, Vec<usize>, &[u8])> = Vec::new();
        for (j, layers) in state.adams.iter().enumerate() {
            for (l, (w, b)) in layers.iter().enumerate() {
                for (name, adam) in [("weight", w), ("bias", b)] {
                    let (m, v, _) = adam.parts();
                    tensors.push((format!("adam.{j}.{l}.{name}.m"), StDtype::F32, vec![m.len()], bytemuck::cast_slice(m)));
                    tensors.push((format!("adam.{j}.{l}.{name}.v"), StDtype::F32, vec![v.len()], bytemuck::cast_slice(v)));
                }
            }
        }
        let repr = state.bank.repr();
        let (bm, bv, _, row_steps) = state.bank.parts();
        let order: Vec<u64> = state.order.iter().map(|&i| i as u64).collect();
        tensors.push(("bank.repr".into(), StDtype::F32, vec![repr.rows, repr.cols], bytemuck::cast_slice(&repr.data)));
        tensors.push(("bank.m".into(), StDtype::F32, vec![bm.len()], bytemuck::cast_slice(bm)));
        tensors.push(("bank.v".into(), StDtype::F32, vec![bv.len()], bytemuck::cast_slice(bv)));
        tensors.push(("bank.row_steps".into(), StDtype::U32, vec![row_steps.len()], bytemuck::cast_slice(row_steps)));
        tensors.push(("order".into(), StDtype::U64, vec![order.len()], bytemuck::cast_slice(&order)));
        let path = tmp.join(STATE_FILE);
        let views = tensors
            .iter()
            .map(|(name, dt, shape, data)| {
                let view = TensorView::new(*dt, shape.clone(), data).map_err(|e| Error::format(&path, name.as_str(), e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        // Streamed from the state itself: serialising first would hold a second copy of the
        // bank and its moments.
        fsio::write_safetensors(&path, &views, None::<HashMap<String, String>>)?;
        let meta = Meta {
            format: "ensembed-fit-checkpoint".into(),
            version: 1,
            config: cfg.clone(),
            adam_steps: state.adams.iter().map(|ls| ls.iter().map(|(w, b)| (w.steps(), b.steps())).collect()).collect(),
            bank_steps: state.bank.parts().2,
            shuffle_word_pos: state.shuffle.get_word_pos().to_string(),
            history: state.history.clone(),
        };
        fsio::write_atomic(&tmp.join(META_FILE), &serde_json::to_vec_pretty(&meta).expect("meta serialises"))?;
        Ok(())
    })
}

/// Reads the checkpoint in `dir` back, checking that it was made with `cfg` on features shaped
/// like `feats`.
pub fn load_checkpoint(dir: &Path, cfg: &FitConfig, feats: &dyn FeatureSet) -> Result<FitState> {
    let meta_path = dir.join(META_FILE);
    let meta: Meta = serde_json::from_slice(&fsio::read(&meta_path)?).map_err(|e| Error::format(&meta_path, "json", e.to_string()))?;
    if &meta.config != cfg {
        let (a, b) = (serde_json::to_value(&meta.config).unwrap(), serde_json::to_value(cfg).unwrap());
        let field = a.as_object().unwrap().iter().find(|(k, v)| b.get(k.as_str()) != Some(v)).map(|(k, v)| (k.clone(), v.clone()));
        let (k, v) = field.unwrap_or_default();
        return Err(Error::format(&meta_path, format!("config.{k}"), format!("the checkpoint was made with {k} = {v}, this run has {}; rerun without --resume to start over", b[&k])));
    }
    let model = EnsembleModel::load(&dir.join(MODEL_FILE))?;
    model.check_features(feats)?;
    let path = dir.join(STATE_FILE);
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    // Mapped rather than read, so that restoring holds the state once (the copies below), not
    // twice. SAFETY: read-only map dropped on return; as for any mmap, another process
    // truncating the file meanwhile is outside what we can guard against.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&path, "header", e.to_string()))?;
    let raw = |name: &str, dt: StDtype, len: usize| -> Result<&[u8]> {
        let t = st.tensor(name).map_err(|_| Error::format(&path, name, "tensor missing"))?;
        let elems: usize = t.shape().iter().product();
        if t.dtype() != dt || elems != len {
            return Err(Error::format(&path, name, format!("expected {dt:?} with {len} values, found {:?} {:?}", t.dtype(), t.shape())));
        }
        Ok(t.data())
    };
    let f32s = |name: &str, len: usize| -> Result<Vec<f32>> {
        Ok(raw(name, StDtype::F32, len)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    // No optimiser can have taken more steps than the whole configured fit has: a larger count
    // (say u64::MAX from a damaged file) would overflow on the next step.
    let steps_per_epoch = feats.len().div_ceil(cfg.batch.clamp(1, feats.len().max(1)));
    let max_steps = (cfg.epochs as u64).saturating_mul(steps_per_epoch as u64);
    let check_steps = |field: &str, t: u64| -> Result<u64> {
        if t > max_steps {
            return Err(Error::format(&meta_path, field, format!("{t} steps, more than the {max_steps} of the whole fit ({} epochs of {steps_per_epoch})", cfg.epochs)));
        }
        Ok(t)
    };
    let mut adams = Vec::new();
    for (j, mlp) in model.mlps.iter().enumerate() {
        let steps = meta.adam_steps.get(j).ok_or_else(|| Error::format(&meta_path, "adam_steps", format!("no entry for MLP {j}")))?;
        let mut layers = Vec::new();
        for (l, layer) in mlp.layers.iter().enumerate() {
            let &(tw, tb) = steps.get(l).ok_or_else(|| Error::format(&meta_path, "adam_steps", format!("no entry for MLP {j} layer {l}")))?;
            let (tw, tb) = (check_steps("adam_steps", tw)?, check_steps("adam_steps", tb)?);
            let (nw, nb) = (layer.weight.len(), layer.bias.len());
            let w = Adam::from_parts(f32s(&format!("adam.{j}.{l}.weight.m"), nw)?, f32s(&format!("adam.{j}.{l}.weight.v"), nw)?, tw);
            let b = Adam::from_parts(f32s(&format!("adam.{j}.{l}.bias.m"), nb)?, f32s(&format!("adam.{j}.{l}.bias.v"), nb)?, tb);
            layers.push((w, b));
        }
        adams.push(layers);
    }
    let (n, d) = (feats.len(), model.spec.dim);
    let nd = n.checked_mul(d).ok_or_else(|| Error::format(dir.join(MODEL_FILE), "dim", format!("{n} samples times dim {d} overflows")))?;
    let repr = Matrix::from_vec(n, d, f32s("bank.repr", nd)?)?;
    let row_len = if cfg.bank == BankMode::Lazy { n } else { 0 };
    let row_steps: Vec<u32> = raw("bank.row_steps", StDtype::U32, row_len)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if let Some((i, &t)) = row_steps.iter().enumerate().find(|(_, &t)| t as u64 > max_steps) {
        return Err(Error::format(&path, "bank.row_steps", format!("row {i} has {t} steps, more than the {max_steps} of the whole fit")));
    }
    let bank_steps = check_steps("bank_steps", meta.bank_steps)?;
    let bank = Bank::from_parts(repr, f32s("bank.m", nd)?, f32s("bank.v", nd)?, bank_steps, row_steps, cfg.bank)
        .with_nonneg(model.spec.nonneg);
    let order: Vec<usize> = raw("order", StDtype::U64, n)?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
    let mut seen = vec![false; n];
    for &i in &order {
        if i >= n || std::mem::replace(&mut seen[i], true) {
            return Err(Error::format(&path, "order", format!("not a permutation of 0..{n} (entry {i})")));
        }
    }
    let pos: u128 = meta.shuffle_word_pos.parse().map_err(|_| Error::format(&meta_path, "shuffle_word_pos", meta.shuffle_word_pos.clone()))?;
    let mut shuffle: ChaCha8Rng = crate::rng::stream(cfg.seed, crate::rng::Purpose::Shuffle);
    shuffle.set_word_pos(pos);
    if meta.history.len() > cfg.epochs {
        return Err(Error::format(&meta_path, "history", format!("{} epochs done, more than the {} configured", meta.history.len(), cfg.epochs)));
    }
    Ok(FitState { model, adams, bank, order, shuffle, history: meta.history })
}
