//! `ensembed shard` and `ensembed merge`: cut a store into pieces that independent jobs can
//! process (lazy `embed` is independent per sample), and join the pieces back.

use anyhow::Result;
use ensembed::store::{merge_stores, shard_store, Store};

use super::open_store;
use crate::args::{MergeArgs, ShardArgs};

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
