//! `ensembed compare`: the paper's table on the user's own stores.

use anyhow::Result;
use ensembed::compare::compare;

use super::{comparison_config, labels, open_store};
use crate::args::CompareArgs;
use crate::progress::Bars;

pub fn run(a: CompareArgs, progress: &Bars) -> Result<()> {
    let (cfg, model) = comparison_config(&a.fit, &a.knn, a.linear, a.model.as_deref())?;
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
