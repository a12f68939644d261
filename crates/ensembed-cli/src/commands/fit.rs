//! `ensembed fit`: a store in, a model directory out. After every epoch the whole training
//! state is checkpointed beside the output (`.OUT.ckpt`), so a killed run continues with
//! `--resume`; the checkpoint is removed once the model is written. The last line compares the
//! process's peak RSS with the memory the fit needs (`ensembed::memory`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ensembed::artifact::save_model_dir;
use ensembed::checkpoint::{load_checkpoint, save_checkpoint};
use ensembed::fit::{fit_from, FitState};
use ensembed::memory::{self, fit_memory, process_memory, store_feature_bytes};

use super::open_store;
use crate::args::FitCmdArgs;
use crate::progress::Bars;

/// Where the checkpoint of a fit writing `out` lives.
fn checkpoint_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    out.with_file_name(format!(".{name}.ckpt"))
}

pub fn run(a: FitCmdArgs, progress: &Bars) -> Result<()> {
    let cfg = a.fit.resolve()?;
    if a.out.exists() && !a.overwrite {
        bail!("{} already exists (pass --overwrite to replace it)", a.out.display());
    }
    let store = open_store(&a.train, "--train")?;
    store.validate_values()?;
    let ckpt = checkpoint_dir(&a.out);
    let state = if a.resume && ckpt.exists() {
        let state = load_checkpoint(&ckpt, &cfg, &store).with_context(|| format!("cannot resume from {}", ckpt.display()))?;
        eprintln!("resuming from {} after epoch {}", ckpt.display(), state.epochs_done());
        state
    } else {
        if ckpt.exists() {
            eprintln!("note: replacing the checkpoint of an earlier interrupted fit ({}); pass --resume to continue it", ckpt.display());
        }
        FitState::new(&store, &cfg)?
    };
    let out = fit_from(&store, &cfg, state, progress, &mut |s| save_checkpoint(&ckpt, s, &cfg))?;
    save_model_dir(&a.out, &out, &cfg, Some(&a.train.display().to_string()), a.overwrite)
        .with_context(|| format!("cannot write the model to {}", a.out.display()))?;
    std::fs::remove_dir_all(&ckpt).with_context(|| format!("cannot remove the checkpoint {}", ckpt.display()))?;
    let last = out.history.last().map(|h| h.loss).unwrap_or(f64::NAN);
    eprintln!(
        "wrote {} (dim {}, {} backbones, final loss {last:.5}, recovery cosine {:.4})",
        a.out.display(),
        out.model.spec.dim,
        out.model.mlps.len(),
        1.0 - last
    );
    let dims: Vec<usize> = store.backbones().iter().map(|b| b.dim).collect();
    let bound = fit_memory(store.len(), &dims, &cfg);
    eprintln!("{}", memory::report(&bound, store_feature_bytes(&store), "mapped store", process_memory()));
    Ok(())
}
