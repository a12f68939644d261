//! `ensembed compare`: the paper's table on the user's own stores.

use anyhow::Result;
use ensembed::artifact::load_model_dir;
use ensembed::compare::{compare, CompareConfig};

use super::{labels, open_store};
use crate::args::CompareArgs;
use crate::progress::Bars;

pub fn run(a: CompareArgs, progress: &Bars) -> Result<()> {
    let knn = a.knn.resolve()?;
    let model = a.model.as_deref().map(load_model_dir).transpose()?;
    // A transferred model brings its own training settings unless flags override them.
    let fit = match &model {
        Some((_, record)) => a.fit.resolve_from(&record.config)?,
        None => a.fit.resolve()?,
    };
    let linear = a.linear.then(ensembed::eval::LinearConfig::default);
    let cfg = CompareConfig { fit, knn, linear, ..CompareConfig::default() };
    let train = open_store(&a.train, "--train")?;
    let test = open_store(&a.test, "--test")?;
    train.validate_values()?;
    test.validate_values()?;
    let (ytr, yte) = (labels(&train, "--train")?, labels(&test, "--test")?);
    let result = compare(&train, ytr, &test, yte, model.as_ref().map(|(m, _)| m), &cfg, progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result.to_json())?);
    } else {
        print!("{}", result.table());
    }
    Ok(())
}
