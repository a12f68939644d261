//! The fit parameters `ensembed sweep` can vary, and how one swept value changes a resolved
//! [`FitConfig`]. Kept in the library so that the accepted names and values are validated with
//! the same [`Error::Config`] messages as every other setting.

use crate::config::{BankMode, BiasInit, FitConfig};
use crate::error::{Error, Result};

/// The names `--param` accepts (the CLI flag names without `--`).
pub const SWEEP_PARAMS: &[&str] = &[
    "depth", "lr", "lr-bank", "batch", "epochs", "weight-decay", "bank", "warmup", "last-bias", "final-relu", "seed", "hidden",
    "dim", "nonneg",
];

fn parse<T: std::str::FromStr>(param: &str, value: &str, what: &str) -> Result<T> {
    value.trim().parse().map_err(|_| Error::config(param, value, format!("must be {what}")))
}

/// `base` with `param` set to `value`, validated. For `batch`, unless `lr_scaling` is false, the
/// learning rates follow the linear scaling rule: lr = base lr * batch / 256 (and the bank's
/// own rate likewise when it is set).
pub fn apply_sweep_value(base: &FitConfig, param: &str, value: &str, lr_scaling: bool) -> Result<FitConfig> {
    let mut c = base.clone();
    match param {
        "depth" => c.depth = parse(param, value, "an integer")?,
        "lr" => c.lr = parse(param, value, "a number")?,
        "lr-bank" => c.lr_bank = Some(parse(param, value, "a number")?),
        "batch" => {
            c.batch = parse(param, value, "an integer")?;
            if lr_scaling {
                let f = c.batch as f32 / 256.0;
                c.lr = base.lr * f;
                c.lr_bank = base.lr_bank.map(|l| l * f);
            }
        }
        "epochs" => c.epochs = parse(param, value, "an integer")?,
        "weight-decay" => c.weight_decay = parse(param, value, "a number")?,
        "bank" => {
            c.bank = match value.trim() {
                "dense" => BankMode::Dense,
                "lazy" => BankMode::Lazy,
                _ => return Err(Error::config(param, value, "must be dense or lazy")),
            }
        }
        "warmup" => c.warmup = Some(parse(param, value, "an integer")?),
        "last-bias" => {
            c.last_bias = match value.trim() {
                "torch" => BiasInit::Torch,
                "zero" => BiasInit::Zero,
                _ => return Err(Error::config(param, value, "must be torch or zero")),
            }
        }
        "final-relu" => c.final_relu = parse(param, value, "true or false")?,
        "seed" => c.seed = parse(param, value, "an integer")?,
        "hidden" => c.hidden = Some(parse(param, value, "an integer")?),
        "dim" => c.dim = Some(parse(param, value, "an integer")?),
        "nonneg" => c.nonneg = parse(param, value, "true or false")?,
        _ => return Err(Error::config("param", param, format!("must be one of {}", SWEEP_PARAMS.join(", ")))),
    }
    c.validate()?;
    Ok(c)
}
