//! `ensembed shard` and `ensembed merge`: cut a store into pieces that independent jobs can
//! process (lazy `embed` is independent per sample), and join the pieces back; and `ensembed
//! subset`, a smaller store for reduced-scale experiments and sub-ensembles.

use anyhow::Result;
use ensembed::store::{merge_stores, shard_store, subset_store, Store, Subset};

use super::open_store;
use crate::args::{MergeArgs, ShardArgs, SubsetArgs};

pub fn shard(a: ShardArgs) -> Result<()> {
    let store = open_store(&a.store, "--store")?;
    let parts = shard_store(&store, a.parts, &a.out, a.overwrite)?;
    eprintln!("wrote {} shards of {} samples under {}", parts.len(), store.len(), a.out.display());
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let stores = a.stores.iter().map(|p| open_store(p, "STORES")).collect::<Result<Vec<Store>>>()?;
    merge_stores(&stores, &a.out, a.overwrite)?;
    eprintln!("wrote {} ({} samples from {} stores)", a.out.display(), stores.iter().map(Store::len).sum::<usize>(), stores.len());
    Ok(())
}

pub fn subset(a: SubsetArgs) -> Result<()> {
    let store = open_store(&a.store, "--store")?;
    let subset = Subset { backbones: a.backbones, per_class: a.per_class };
    let out = subset_store(&store, &subset, &a.out, a.overwrite)?;
    let kept = Store::open(&out)?;
    eprintln!("wrote {} ({} of {} samples, backbones {})", out.display(), kept.len(), store.len(),
        kept.backbones().iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", "));
    Ok(())
}
