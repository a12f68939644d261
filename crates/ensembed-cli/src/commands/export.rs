//! `ensembed export`: anything ensembed holds, back out to numpy.

use anyhow::{bail, Result};
use ensembed::artifact::{load_train_representations, write_representations};
use ensembed::baseline;
use ensembed::store::npy::write_npy_i64;

use super::{labels, open_store};
use crate::args::{BaselineKind, ExportArgs};

pub fn run(a: ExportArgs) -> Result<()> {
    let m = if let Some(model) = &a.model {
        load_train_representations(model)?
    } else {
        let Some(path) = &a.store else { bail!("give --store STORE or --model MODEL") };
        let store = open_store(path, "--store")?;
        if a.labels {
            let l: Vec<i64> = labels(&store, "--store")?.iter().map(|&v| v as i64).collect();
            write_npy_i64(&a.out, &l)?;
            eprintln!("wrote {} ({} labels)", a.out.display(), l.len());
            return Ok(());
        }
        match (&a.backbone, a.baseline) {
            (Some(name), _) => {
                let j = store.backbone_index(name)?;
                let mut m = ensembed::Matrix::zeros(store.len(), store.backbones()[j].dim);
                for i in 0..store.len() {
                    store.read_row(j, i, m.row_mut(i));
                }
                if a.normalize {
                    m.normalize_rows();
                }
                m
            }
            (None, Some(BaselineKind::Average)) => baseline::average(&store)?,
            (None, Some(BaselineKind::Concat)) => baseline::concat(&store),
            (None, None) => bail!("say what to export: --backbone NAME, --baseline average|concat or --labels"),
        }
    };
    write_representations(&a.out, &m)?;
    eprintln!("wrote {} ([{}, {}])", a.out.display(), m.rows, m.cols);
    Ok(())
}
