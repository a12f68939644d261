//! Command-line flags exactly as the user typed them (clap derive), kept apart from the
//! validated settings the commands run on: `resolve` methods turn these into library configs,
//! filling defaults from METHOD.md and rejecting bad values with the flag's name.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ensembed::config::{BankMode, BiasInit, EmbedConfig, FitConfig, FitOverrides, Preset};
use ensembed::eval::knn::{KnnConfig, Vote};

/// Learn one nearest-neighbour representation per image from an ensemble of pretrained backbones.
#[derive(Parser, Debug)]
#[command(name = "ensembed", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads (default: all cores). Outputs are byte-identical for the same seed, data
    /// and thread count.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole job on real data shipped with ensembed: extract 1,500 CIFAR-10 images
    /// through three MobileNets, fit, embed and compare.
    Demo(DemoArgs),
    /// Build a feature store from numpy files (.npy, or FILE.npz:ARRAY).
    Import(ImportArgs),
    /// Write a store's features, a baseline, labels or learned representations to .npy.
    Export(ExportArgs),
    /// Fit the per-backbone MLPs and the training representations.
    Fit(FitCmdArgs),
    /// Learn representations of new samples through a fitted model's frozen MLPs.
    Embed(EmbedArgs),
    /// k-NN accuracy of one representation of a train and a test store.
    Knn(KnnCmdArgs),
    /// Every backbone, the average, the concatenation and ours, scored by k-NN in one table.
    Compare(CompareArgs),
    /// The paper's diagnostics: recovery cosine, singular-value spectra, neighbour statistics.
    Analyze(AnalyzeArgs),
    /// Describe a store or a model directory.
    Info(InfoArgs),
    /// Comparison and diagnostics as a report directory: report.json, figures, index.html.
    Report(ReportArgs),
    /// Draw a report's figures and page again from its report.json (after a plotting change),
    /// without fitting.
    Redraw(RedrawArgs),
    /// Run the comparison for several values of one fit parameter (resumable) and plot ours.
    Sweep(SweepArgs),
    /// Cut a store into N stores of contiguous rows (to embed or extract on many machines).
    Shard(ShardArgs),
    /// Join stores with the same backbones into one, rows in the order given.
    Merge(MergeArgs),
    /// A smaller store: some backbones and/or the first N rows of every class.
    Subset(SubsetArgs),
    /// Extract pooled features of images (a folder or a list file) through pretrained backbones
    /// (ONNX models, TFLite models or PyTorch checkpoints), resumably.
    Extract(ExtractArgs),
    /// Top-5 classes of images through a backbone's classifier head (checks a model loads right).
    Classify(ClassifyArgs),
    /// List the backbone file formats and architectures `extract` and `classify` can load.
    Backbones,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// NAME=FILE or FILE (named after the file): an .onnx model, a .tflite model or a PyTorch
    /// checkpoint (see `ensembed backbones`). Repeat.
    #[arg(long = "backbone", required = true, value_name = "[NAME=]FILE")]
    pub backbones: Vec<String>,
    /// The images: a folder DIR/<class>/<image> (sorted class folders give the labels), a plain
    /// folder of images (no labels), or a list file with `path[,label]` per line (paths
    /// relative to the list file; labels all integers or all class names).
    #[arg(long, value_name = "DIR|LIST")]
    pub images: PathBuf,
    /// Output store.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per batch (also the unit a killed run resumes from).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Replace an existing store.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted extraction (its work is kept in .OUT.extract-partial beside the
    /// output) instead of starting over; it must use the same images, backbones and batch.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// The backbone (an .onnx or .tflite model, or a PyTorch checkpoint, with a classifier head).
    #[arg(long)]
    pub backbone: PathBuf,
    /// Class names, one per line (index 0 first), e.g. imagenet_labels.txt. A file with one
    /// line more than the head has classes starts with a background class the head lacks: it is
    /// skipped.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Images to classify.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Input preprocessing of PyTorch-checkpoint backbones, over each architecture's default
/// (`ensembed backbones` lists them; TFLite models refuse these flags).
#[derive(Args, Debug, Default, Clone)]
pub struct PreprocessArgs {
    /// Resize the shorter image side to N pixels (Pillow bilinear, aspect ratio kept).
    #[arg(long, value_name = "N")]
    pub resize: Option<usize>,
    /// Centre-crop N x N pixels after resizing.
    #[arg(long, value_name = "N")]
    pub crop: Option<usize>,
    /// Per-channel mean of [0, 1] pixels, R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation of [0, 1] pixels, R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    pub std: Option<[f32; 3]>,
}

impl PreprocessArgs {
    pub fn resolve(&self) -> ensembed::backbone::cnn::PreprocessOverride {
        ensembed::backbone::cnn::PreprocessOverride {
            resize: self.resize,
            crop: self.crop,
            mean: self.mean,
            std: self.std,
        }
    }
}

/// `a,b,c` as three floats.
fn parse_rgb(s: &str) -> std::result::Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    <[f32; 3]>::try_from(v.as_slice()).map_err(|_| format!("expected three comma-separated numbers (R,G,B), got {}", v.len()))
}

#[derive(Args, Debug)]
pub struct ShardArgs {
    /// Store to cut.
    #[arg(long)]
    pub store: PathBuf,
    /// Number of shards.
    #[arg(long)]
    pub parts: usize,
    /// Output directory: OUT/part-0000, OUT/part-0001, ...
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing shards.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Output store.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output store.
    #[arg(long)]
    pub overwrite: bool,
    /// Stores to join, in order.
    #[arg(required = true)]
    pub stores: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SubsetArgs {
    /// Store to take from.
    #[arg(long)]
    pub store: PathBuf,
    /// Output store.
    #[arg(long)]
    pub out: PathBuf,
    /// Backbones to keep, comma-separated, in this order [default: all].
    #[arg(long, value_delimiter = ',')]
    pub backbones: Vec<String>,
    /// Keep the first N rows (in store order) of every class [default: all rows].
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Replace an existing output store.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Training store.
    #[arg(long)]
    pub train: PathBuf,
    /// Test store.
    #[arg(long)]
    pub test: PathBuf,
    /// Fitted model directory (its training representations are used as they are).
    #[arg(long)]
    pub model: PathBuf,
    /// Learned test representations from `embed` [default: embedded here with the model's settings].
    #[arg(long)]
    pub test_repr: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub knn: KnnArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Compare the shipped MobileNetV2 features (data/demo/*.npz) instead of extracting the
    /// shipped images through the shipped MobileNetV1s.
    #[arg(long)]
    pub shipped_features: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Output store directory.
    #[arg(long)]
    pub out: PathBuf,
    /// NAME=FILE: one backbone's features, [n, d] f32/f16 (.npy, or FILE.npz:ARRAY). Repeat.
    #[arg(long = "backbone", required = true, value_name = "NAME=FILE")]
    pub backbones: Vec<String>,
    /// Integer class labels, [n] (.npy or FILE.npz:ARRAY).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Text file with one id per line.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Replace an existing store.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Store to read (with --backbone, --baseline or --labels).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Model directory whose learned training representations to export.
    #[arg(long, conflicts_with = "store")]
    pub model: Option<PathBuf>,
    /// Backbone to export (L2-normalised with --normalize).
    #[arg(long, conflicts_with_all = ["baseline", "labels"])]
    pub backbone: Option<String>,
    /// A baseline representation.
    #[arg(long, value_enum, conflicts_with = "labels")]
    pub baseline: Option<BaselineKind>,
    /// Export the labels (int64).
    #[arg(long)]
    pub labels: bool,
    /// L2-normalise each row of an exported backbone.
    #[arg(long)]
    pub normalize: bool,
    /// Output .npy (or .safetensors for representations).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BaselineKind {
    Average,
    Concat,
}

#[derive(Args, Debug)]
pub struct FitCmdArgs {
    /// Training feature store.
    #[arg(long)]
    pub train: PathBuf,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing model directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted fit from its checkpoint (`.OUT.ckpt` beside OUT); the result is
    /// byte-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub fit: FitArgs,
}

/// Training flags; each defaults to METHOD.md.
#[derive(Args, Debug, Default, Clone)]
pub struct FitArgs {
    /// Named defaults the other flags start from: `paper` is METHOD.md exactly, `ensembed` our
    /// tuned settings (README, "Results") [default: paper].
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// Passes over the training set [default: 50].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Samples per step [default: 256].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate [default: 3e-4].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Learning rate of the representations [default: --lr].
    #[arg(long, allow_negative_numbers = true)]
    pub lr_bank: Option<f32>,
    /// L2 weight decay of the MLPs [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Linear layers per MLP, 1..8 [default: 2].
    #[arg(long)]
    pub depth: Option<usize>,
    /// Hidden width [default: the representation dimension].
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Representation dimension [default: the largest backbone width].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Memory-bank optimiser semantics [default: dense].
    #[arg(long, value_enum)]
    pub bank: Option<BankArg>,
    /// Epochs in which only the MLPs learn [default: epochs / 2].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// ReLU after the last layer: true or false [default: true].
    #[arg(long)]
    pub final_relu: Option<bool>,
    /// Initialisation of the last layer's bias [default: torch].
    #[arg(long, value_enum)]
    pub last_bias: Option<LastBiasArg>,
    /// Random seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the representations non-negative (projected gradient; the paper's like-for-like
    /// variant of its spectrum figure) [default: off].
    #[arg(long)]
    pub nonneg: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PresetArg {
    Paper,
    Ensembed,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Self {
        match p {
            PresetArg::Paper => Preset::Paper,
            PresetArg::Ensembed => Preset::Ensembed,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BankArg {
    Dense,
    Lazy,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LastBiasArg {
    Torch,
    Zero,
}

impl From<BankArg> for BankMode {
    fn from(b: BankArg) -> Self {
        match b {
            BankArg::Dense => BankMode::Dense,
            BankArg::Lazy => BankMode::Lazy,
        }
    }
}

impl FitArgs {
    /// The training config: flags over the named preset (or the default one), validated.
    pub fn resolve(&self) -> Result<FitConfig> {
        self.resolve_from(&Preset::DEFAULT.config())
    }

    /// The training config: flags over `base` (over the preset instead, when one is named),
    /// validated.
    pub fn resolve_from(&self, base: &FitConfig) -> Result<FitConfig> {
        let preset_config;
        let base = match self.preset {
            Some(p) => {
                preset_config = Preset::from(p).config();
                &preset_config
            }
            None => base,
        };
        let overrides = FitOverrides {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            lr_bank: self.lr_bank,
            weight_decay: self.weight_decay,
            depth: self.depth,
            hidden: self.hidden,
            dim: self.dim,
            bank: self.bank.map(Into::into),
            warmup: self.warmup,
            final_relu: self.final_relu,
            last_bias: self.last_bias.map(|b| match b {
                LastBiasArg::Zero => BiasInit::Zero,
                LastBiasArg::Torch => BiasInit::Torch,
            }),
            seed: self.seed,
            nonneg: self.nonneg.then_some(true),
        };
        Ok(overrides.apply(base)?)
    }
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model directory written by `fit`.
    #[arg(long)]
    pub model: PathBuf,
    /// Feature store of the samples to embed (same backbones as the model's).
    #[arg(long)]
    pub features: PathBuf,
    /// Output representations: .npy or .safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimisation epochs [default: the model's training epochs].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate [default: the model's representation learning rate].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Rows per step [default: the model's batch].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Bank semantics [default: the model's].
    #[arg(long, value_enum)]
    pub bank: Option<BankArg>,
    /// Lazy bank: rows embedded, then written to the output, at a time (rounded up to whole
    /// batches); memory holds one chunk of results, not all of them.
    #[arg(long, default_value_t = 4096, value_name = "ROWS")]
    pub chunk_rows: usize,
    /// Lazy bank: continue an interrupted run from its last written chunk (`.OUT.partial`
    /// beside the output); the result is byte-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
}

impl EmbedArgs {
    /// Inference settings: the model's training settings, overridden by flags.
    pub fn resolve(&self, fit: &FitConfig) -> Result<EmbedConfig> {
        let mut cfg = EmbedConfig::from_fit(fit);
        if let Some(e) = self.epochs {
            cfg.epochs = e;
        }
        if let Some(l) = self.lr {
            cfg.lr = l;
        }
        if let Some(b) = self.batch {
            cfg.batch = b;
        }
        if let Some(b) = self.bank {
            cfg.bank = b.into();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// k-NN flags; defaults from METHOD.md.
#[derive(Args, Debug, Clone)]
pub struct KnnArgs {
    /// Neighbour counts, comma-separated.
    #[arg(long = "k", value_delimiter = ',', default_values_t = [10, 20, 100, 200])]
    pub ks: Vec<usize>,
    /// Temperature T of the vote weight exp(s/T).
    #[arg(long = "t", default_value_t = 0.07, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Vote rule.
    #[arg(long, value_enum, default_value = "weighted")]
    pub vote: VoteArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VoteArg {
    Weighted,
    Majority,
}

impl KnnArgs {
    /// The k-NN config; `k` beyond the training set is reported by the evaluation itself.
    pub fn resolve(&self) -> Result<KnnConfig> {
        if self.ks.is_empty() {
            bail!("--k needs at least one value");
        }
        Ok(KnnConfig {
            ks: self.ks.clone(),
            temperature: self.temperature,
            vote: match self.vote {
                VoteArg::Weighted => Vote::Weighted,
                VoteArg::Majority => Vote::Majority,
            },
            ..KnnConfig::default()
        })
    }
}

#[derive(Args, Debug)]
pub struct KnnCmdArgs {
    /// Training store (labels, and features unless --train-repr).
    #[arg(long)]
    pub train: PathBuf,
    /// Test store (labels, and features unless --test-repr).
    #[arg(long)]
    pub test: PathBuf,
    /// Representation to score: a backbone name, `average` or `concat` [default: every one].
    #[arg(long)]
    pub method: Option<String>,
    /// Learned train representations (.npy/.safetensors, or a model directory).
    #[arg(long, requires = "test_repr")]
    pub train_repr: Option<PathBuf>,
    /// Learned test representations (.npy/.safetensors from `embed`).
    #[arg(long, requires = "train_repr")]
    pub test_repr: Option<PathBuf>,
    #[command(flatten)]
    pub knn: KnnArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Training store (with labels).
    #[arg(long)]
    pub train: PathBuf,
    /// Test store (with labels).
    #[arg(long)]
    pub test: PathBuf,
    /// Use this fitted model's MLPs instead of fitting (transfer).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub knn: KnnArgs,
    /// Also score every method by the linear probe (logistic regression, weight decay chosen on
    /// 10% of train held out).
    #[arg(long)]
    pub linear: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A store or model directory.
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Training store (with labels).
    #[arg(long)]
    pub train: PathBuf,
    /// Test store (with labels).
    #[arg(long)]
    pub test: PathBuf,
    /// Use this fitted model's MLPs instead of fitting (transfer).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Also fit with the representations kept non-negative and show it as `ours-nonneg` beside
    /// ours: the paper's like-for-like singular values and neighbour similarity (section 5).
    #[arg(long)]
    pub nonneg_variant: bool,
    /// Also embed train and test through this model's MLPs (fitted on another store with the
    /// same backbones: the paper's transfer setting) and show them as `ours-transfer` beside
    /// ours, embedded with the same settings as ours so that only the MLPs differ.
    #[arg(long)]
    pub transfer_model: Option<PathBuf>,
    /// Output directory: report.json, fig/*.svg, fig/*.png, index.html.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output directory (only once the new report is complete).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub knn: KnnArgs,
    /// Also score every method by the linear probe.
    #[arg(long)]
    pub linear: bool,
}

#[derive(Args, Debug)]
pub struct RedrawArgs {
    /// A report directory written by `ensembed report`.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Training store (with labels).
    #[arg(long)]
    pub train: PathBuf,
    /// Test store (with labels).
    #[arg(long)]
    pub test: PathBuf,
    /// Fit parameter to vary: depth, lr, lr-bank, batch, epochs, weight-decay, bank, warmup,
    /// last-bias, final-relu, seed, hidden, dim or nonneg.
    #[arg(long)]
    pub param: String,
    /// Values of the parameter, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, allow_negative_numbers = true)]
    pub values: Vec<String>,
    /// Output directory: runs/<param>=<value>.json per run (existing ones are reused), sweep.json,
    /// sweep.svg, sweep.png.
    #[arg(long)]
    pub out: PathBuf,
    /// With --param batch: keep the learning rate instead of lr = lr * batch / 256.
    #[arg(long)]
    pub no_lr_scaling: bool,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub knn: KnnArgs,
}
