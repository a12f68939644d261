//! `ensembed knn`: k-NN accuracy of a backbone, a baseline or learned representations.

use anyhow::{bail, Result};
use ensembed::artifact::{load_train_representations, read_representations};
use ensembed::eval::knn::{evaluate_knn, KnnReport};
use ensembed::features::backbone_matrix;
use ensembed::store::Store;
use ensembed::{baseline, Matrix};

use super::{labels, open_store};
use crate::args::KnnCmdArgs;
use crate::progress::Bars;

pub fn run(a: KnnCmdArgs, progress: &Bars) -> Result<()> {
    let cfg = a.knn.resolve()?;
    let train = open_store(&a.train, "--train")?;
    let test = open_store(&a.test, "--test")?;
    let (ytr, yte) = (labels(&train, "--train")?, labels(&test, "--test")?);
    let mut results: Vec<(String, KnnReport)> = Vec::new();
    if let (Some(tr), Some(te)) = (&a.train_repr, &a.test_repr) {
        let mut xtr = if tr.is_dir() { load_train_representations(tr)? } else { read_representations(tr)? };
        let mut xte = read_representations(te)?;
        xtr.normalize_rows();
        xte.normalize_rows();
        results.push(("representations".into(), evaluate_knn(&xtr, ytr, &xte, yte, &cfg, progress)?));
    } else {
        let methods: Vec<String> = match &a.method {
            Some(m) => vec![m.clone()],
            None => {
                let mut v: Vec<String> = train.backbones().iter().map(|b| b.name.clone()).collect();
                v.extend(["average".into(), "concat".into()]);
                v
            }
        };
        for m in methods {
            let (xtr, xte) = match (representation(&train, &m), representation(&test, &m)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) if a.method.is_none() && m == "average" => {
                    eprintln!("skipping average: {e}");
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            results.push((m, evaluate_knn(&xtr, ytr, &xte, yte, &cfg, progress)?));
        }
    }
    if a.json {
        let obj: serde_json::Map<String, serde_json::Value> =
            results.iter().map(|(m, r)| (m.clone(), serde_json::to_value(r).unwrap())).collect();
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        print!("{:<18}", "method");
        for k in &cfg.ks {
            print!("  {:>8}  {:>8}", format!("top1@{k}"), format!("top5@{k}"));
        }
        println!();
        for (m, r) in &results {
            print!("{m:<18}");
            for s in &r.scores {
                print!("  {:>8.2}  {:>8.2}", 100.0 * s.top1, 100.0 * s.top5);
            }
            println!();
        }
    }
    Ok(())
}

/// A backbone (by name) or a baseline of `store`, rows L2-normalised.
fn representation(store: &Store, method: &str) -> Result<Matrix> {
    Ok(match method {
        "average" => baseline::average(store)?,
        "concat" => baseline::concat(store),
        name => match store.backbone_index(name) {
            Ok(j) => backbone_matrix(store, j),
            Err(e) => bail!("--method {name:?}: not `average`, `concat` or a backbone: {e}"),
        },
    })
}
