"""The typed sections of params.yaml: one dataclass per section, the single home of every key.

params.yaml is the source of every value: :func:`load` requires each key the dataclass declares
(a deleted key is an error naming it, never a silent fallback), rejects unknown ones and checks
types and ranges. The components a section nests (model configs, the optimiser, the index) keep
defaults for library use (tests/test_params.py checks that each equals params.yaml's value); the
model configs are stored in each checkpoint (aladin.models.factory).

Each stage reads its own section plus the shared ``seed`` (training and sampling) and
``tracking``; the data stage reads ``data.seed`` instead, so training can be repeated over
seeds on the same rendered data.
"""
from __future__ import annotations

import os
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import PARAMS_FILE, from_dict, load_params, require, section
from .errors import ConfigError

SPLITS = ("train", "val", "test")    # every dataset's splits, in this order
TRANSFER = "transfer"                # optional (scenes): extra scenes the student alone is distilled on


# -- components: each nests in a section and keeps defaults equal to params.yaml (tested) ---------
Pooling = Literal["first", "mean", "attention"]
Mode = Literal["distill", "distill+triplet", "triplet"]
Kind = Literal["flat", "hnsw", "ivf_flat", "ivf_pq", "sparse"]
KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf_flat", "ivf_pq", "sparse")
Runtime = Literal["torch", "onnx"]     # features.runtime (aladin/features/onnx_runtime.py)


@dataclass(frozen=True)
class AlignmentConfig:
    d: int = 128               # width of the shared region / word space
    layers: int = 1            # transformer encoder layers per modality
    heads: int = 4
    ff: int = 512              # feed-forward width
    dropout: float = 0.1
    pooling: Literal["mrsw", "mravgw", "lse"] = "mrsw"
    temperature: float = 0.1   # of the soft max over regions (pooling: lse)
    # Words summed over: "no_special" leaves out [CLS] and [SEP]. Checkpoints saved before the
    # field existed load as "all", the behaviour they were trained with (models.factory.LEGACY_FIELDS).
    words: Literal["all", "no_special"] = "no_special"

    def validate(self) -> None:
        require(self.d >= 1 and self.d % self.heads == 0, "d", f"must be a positive multiple of heads ({self.heads})")
        require(self.layers >= 0, "layers", "must be >= 0")
        require(self.heads >= 1, "heads", "must be >= 1")
        require(self.ff >= 1, "ff", "must be >= 1")
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(self.temperature > 0, "temperature", "must be > 0")


StudentInputs = Literal["features", "teacher_tokens"]


def require_transformer(cfg: Any, width: str, sizes: tuple[str, ...]) -> None:
    """The checks every transformer config shares: positive sizes, heads dividing the width, a dropout rate."""
    for name in sizes:
        require(getattr(cfg, name) > 0, name, "must be > 0")
    require(getattr(cfg, width) % cfg.heads == 0, "heads", f"must divide {width}={getattr(cfg, width)}")
    require(0.0 <= cfg.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class MatchingConfig:
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    ff: int = 256
    dropout: float = 0.1
    shared: bool = True            # one encoder (+ pooling + projection) for both modalities
    pooling: Pooling = "attention"
    dim: int = 128                 # D, the size of the global embedding
    inputs: StudentInputs = "features"   # features: the backbones' | teacher_tokens: the frozen teacher
                                         # encoders' contextual tokens (the paper's layout)

    def validate(self) -> None:
        require_transformer(self, "d_model", ("d_model", "layers", "heads", "ff", "dim"))


@dataclass(frozen=True)
class CodebookConfig:
    codes: int = 2048              # K, the size of the global embedding (aladin/models/codebook.py)
    kmeans_iters: int = 25         # spherical k-means of the teacher's training word vectors
    lr: float = 1e-4               # the codebook student's learning rate, in place of optim.lr

    def validate(self) -> None:
        require(self.codes >= 2, "codes", "must be >= 2")
        require(self.kmeans_iters >= 1, "kmeans_iters", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")


StudentKind = Literal["codebook", "transformer"]
CrossFusion = Literal["grounding", "transformer"]


@dataclass(frozen=True)
class CrossEncoderConfig:
    fusion: CrossFusion = "grounding"          # grounding: words grounded on regions read their neighbours'
                                               # places (cheap, learns here) | transformer: one joint
                                               # transformer over regions + words (VinVL-style)
    ground_temperature: float = 0.01           # grounding: softmax over regions of the teacher's cosines
    before: int = 3                            # grounding: words each word reads before it ...
    after: int = 4                             # ... and after it
    width: int = 128                           # transformer: fusion width, depth, heads, MLP width
    layers: int = 2
    heads: int = 4
    ff: int = 256
    dropout: float = 0.1
    inputs: StudentInputs = "teacher_tokens"   # fusion layers over: the frozen teacher encoders'
                                               # tokens (ALBEF/BLIP-style) | the backbones' features
    residual: bool = True                      # score = teacher score + fusion head (zero at init,
                                               # BLIP's ITM + first stage) | the fusion head alone

    def validate(self) -> None:
        require(self.fusion in ("grounding", "transformer"), "fusion", "must be grounding or transformer")
        if self.fusion == "transformer":
            require_transformer(self, "width", ("width", "layers", "heads", "ff"))
        else:
            require(self.ground_temperature > 0, "ground_temperature", "must be > 0")
            require(self.before >= 1 and self.after >= 1, "before", "before and after must be >= 1")
            require(self.inputs == "teacher_tokens", "inputs",
                    "fusion grounding needs teacher_tokens (it grounds words on regions by the teacher's cosines)")
        require(not self.residual or self.inputs == "teacher_tokens", "residual",
                "needs inputs: teacher_tokens (the teacher's score is the residual's base)")


@dataclass
class OptimConfig:
    epochs: int
    batch_size: int
    lr: float
    lr_decay_epochs: list[int]                                 # multiply lr by lr_gamma from these epochs on
    lr_gamma: float = 0.1
    grad_clip: float = 2.0                                     # max grad L2 norm; 0 = off
    weight_decay: float = 0.0

    def validate(self) -> None:
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.batch_size >= 2, "batch_size", "must be >= 2 (in-batch negatives)")
        require(self.lr > 0, "lr", "must be > 0")
        require(all(e >= 1 for e in self.lr_decay_epochs), "lr_decay_epochs", "epochs count from 0; use >= 1")
        require(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_gamma ** sum(epoch >= e for e in self.lr_decay_epochs)


@dataclass(frozen=True)
class LossConfig:
    mode: Mode = "distill"
    temperature: float = 0.1            # student side; the reference's scale 6.0 is 1/6
    teacher_temperature: float = 0.1    # teacher side; the reference uses the raw MrSw sums (1.0)
    triplet_weight: float = 0.1         # mode distill+triplet only
    margin: float = 0.2                 # triplet hinge margin
    warmup_epochs: int = 3              # triplet modes: epochs summing the hinge over all negatives, then the hardest
    contrastive_weight: float = 0.0     # labelled multi-positive InfoNCE beside distillation (0 = off)

    def validate(self) -> None:
        require(self.contrastive_weight >= 0, "contrastive_weight", "must be >= 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.teacher_temperature > 0, "teacher_temperature", "must be > 0")
        require(self.triplet_weight >= 0, "triplet_weight", "must be >= 0")
        require(self.margin >= 0, "margin", "must be >= 0")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")


@dataclass(frozen=True)
class IndexConfig:
    kind: Kind = "sparse"
    hnsw_m: int = 32             # graph degree: memory and recall up, build time up
    ef_construction: int = 80
    ef_search: int = 128         # search-time beam width: recall up, latency up
    nlist: int = 64              # IVF cells (needs at least that many vectors)
    nprobe: int = 8              # IVF cells visited per query
    pq_m: int = 32               # PQ sub-vectors (= code bytes at 8 bits); must divide the dim
    pq_nbits: int = 8
    threads: int = 1             # faiss threads while building; 1 keeps HNSW graphs reproducible

    def validate(self) -> None:
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "threads"):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(self.nprobe <= self.nlist, "nprobe", f"must be <= nlist={self.nlist}")
        require(1 <= self.pq_nbits <= 16, "pq_nbits", "must be in [1, 16]")


# -- real-data sources: one sub-section of `data:` each (paths are the user's own downloads) --------
@dataclass(frozen=True)
class KarpathyConfig:
    """`data.karpathy`: images + a Karpathy split file (dataset_coco.json / dataset_flickr30k.json)."""

    annotations: str = ""          # the Karpathy split file
    images: str = ""               # image folder: <images>/<filepath>/<filename> (COCO) or <images>/<filename>
    restval: bool = True           # COCO: the 30,504 'restval' images join train (113,287 in all)
    val_images: int = 0            # > 0: keep the first N val images (1000 = the usual 1K validation)
    coco_captions: list[str] = field(default_factory=list)  # captions_{train,val}2014.json: ECCV/CxC ids

    def validate(self) -> None:
        require(self.val_images >= 0, "val_images", "must be >= 0 (0 = all)")

    def check_selected(self) -> None:
        require(bool(self.annotations), "annotations", "path to dataset_coco.json / dataset_flickr30k.json required")
        require(bool(self.images), "images", "path to the image folder required")


@dataclass(frozen=True)
class PrecompConfig:
    """`data.precomp`: SCAN/VSE++ bottom-up features `{name}_ims.npy` (N, 36, 2048) + `{name}_caps.txt`."""

    root: str = ""                 # folder holding the files (e.g. data/coco_precomp)
    train: str = "train"           # file prefix of each split
    val: str = "dev"
    test: str = "test"             # coco_precomp: 'testall' is the 5K test, 'test' its first 1K
    val_images: int = 0            # > 0: keep the first N val images
    coco_captions: list[str] = field(default_factory=list)  # needs `{name}_ids.txt` with COCO image ids

    def validate(self) -> None:
        require(self.val_images >= 0, "val_images", "must be >= 0 (0 = all)")

    def check_selected(self) -> None:
        require(bool(self.root), "root", "path to the precomputed-features folder required")


@dataclass(frozen=True)
class VinvlTsvConfig:
    """`data.vinvl_tsv`: VinVL region features `features.tsv` (id, box count, base64 float32 (n, dim+6)).

    Captions come either from one Karpathy split file (`captions`, which also defines the splits)
    or from one file per split (`{split}_captions`: JSON {image_id: [captions]} or VinVL's `.pt`).
    """

    features: str = ""             # features.tsv
    imageid2idx: str = ""          # default: imageid2idx.json next to features.tsv
    dim: int = 2048                # appearance width; each box row holds dim + 6 floats
    max_regions: int = 50          # rows with more boxes keep the first max_regions (highest scores)
    captions: str = ""             # a Karpathy split file
    train_captions: str = ""
    val_captions: str = ""
    test_captions: str = ""
    restval: bool = True           # with a Karpathy `captions` file, as in data.karpathy
    val_images: int = 0
    coco_captions: list[str] = field(default_factory=list)

    def validate(self) -> None:
        require(self.dim > 0, "dim", "must be > 0")
        require(self.max_regions > 0, "max_regions", "must be > 0")
        require(self.val_images >= 0, "val_images", "must be >= 0 (0 = all)")

    def check_selected(self) -> None:
        require(bool(self.features), "features", "path to features.tsv required")
        per_split = [self.train_captions, self.val_captions, self.test_captions]
        require(bool(self.captions) != any(per_split), "captions",
                "give either `captions` (a Karpathy file) or train_/val_/test_captions, not both")
        require(bool(self.captions) or all(per_split), "captions",
                "train_captions, val_captions and test_captions are all required")


# -- shared parts ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Compute:
    device: str                  # auto = CUDA when present
    threads: int                 # torch intra-op threads; 0 = torch's default

    def validate(self) -> None:
        require(self.threads >= 0, "threads", "must be >= 0 (0 = default)")


@dataclass(frozen=True, kw_only=True)
class Training(Compute):
    nproc: int                   # DDP processes (torchrun); optim.batch_size is per process

    def validate(self) -> None:
        super().validate()
        require(self.nproc >= 1, "nproc", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TrackingParams:
    enabled: bool
    experiment: str              # MLflow experiment; store: sqlite:///mlflow.db at the repo root


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DataParams:
    source: Literal["scenes", "karpathy", "precomp", "vinvl_tsv"]
    seed: int                    # the scenes generator's seed (training seeds are the top-level `seed`)
    captions_per_image: int
    # scenes only
    n_train: int
    n_val: int
    n_test: int                  # the COCO 5K and 1K (5 folds) protocols need exactly 5000
    image_size: int
    family_size: int             # scenes per family (same attribute words, different bindings)
    n_transfer: int              # extra training scenes for distillation only (the teacher never sees them)
    workers: int                 # rendering processes; 0 = one per usable CPU core (same output)
    # real datasets (docs/COCO.md): only the sub-section named by `source` is used
    karpathy: KarpathyConfig
    precomp: PrecompConfig
    vinvl_tsv: VinvlTsvConfig

    def validate(self) -> None:
        for split in SPLITS:
            require(getattr(self, f"n_{split}") > 0, f"n_{split}", "must be > 0")
        require(64 <= self.image_size <= 1024, "image_size", "must be in [64, 1024] (objects must stay legible)")
        require(1 <= self.captions_per_image <= 10, "captions_per_image", "must be in [1, 10]")
        require(1 <= self.family_size <= 8, "family_size", "must be in [1, 8]")
        require(self.n_transfer >= 0, "n_transfer", "must be >= 0 (0 = no transfer set)")
        require(self.workers >= 0, "workers", "must be >= 0 (0 = one per CPU core)")


@dataclass(frozen=True, kw_only=True)
class FeaturesParams:
    vision_backbone: str         # efficientnet-lite0 or a local Hugging Face vision model directory
    efficientnet_blocks: list[int]   # hypercolumn blocks; [] = the final head map
    text_backbone: str           # all-MiniLM-L6-v2 or a local Hugging Face BERT-like model directory
    image_size: int              # backbone input side (pixels)
    max_tokens: int              # word pieces per caption, [CLS] and [SEP] included
    batch_size: int
    num_workers: int             # image decoding processes (0 = in the main process)
    device: str
    runtime: Runtime             # the backbones' inference runtime: torch (eager) | onnx (ONNX Runtime, CPU)

    def validate(self) -> None:
        require(32 <= self.image_size <= 1024, "image_size", f"must be in [32, 1024], got {self.image_size}")
        require(3 <= self.max_tokens <= 512, "max_tokens", f"must be in [3, 512], got {self.max_tokens}")
        require(1 <= self.batch_size <= 4096, "batch_size", f"must be in [1, 4096], got {self.batch_size}")
        require(0 <= self.num_workers <= 32, "num_workers", f"must be in [0, 32], got {self.num_workers}")


# -- training -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TeacherParams(Training):
    model: AlignmentConfig
    optim: OptimConfig
    margin: float                # triplet hinge margin
    warmup_epochs: int           # epochs summing the hinge over all negatives before the hardest (VSE++)
    score_chunk_mb: float        # similarity block per scoring step (cache-sized is fastest)

    def validate(self) -> None:
        super().validate()
        require(self.margin >= 0, "margin", "must be >= 0")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        require(self.score_chunk_mb > 0, "score_chunk_mb", "must be > 0")


@dataclass(frozen=True)
class BatchesConfig:
    """`distill.batches`: teacher-neighbour batch composition (aladin.training.batching)."""

    group: int = 1               # pairs per group: an anchor + pairs of its teacher neighbours; 1 = uniform
    pool: int = 8                # the anchor caption's top-`pool` teacher images the group draws from

    def validate(self) -> None:
        require(self.group >= 1, "group", "must be >= 1 (1 = uniform random batches)")
        require(self.pool >= self.group - 1, "pool", f"must be >= group - 1 = {self.group - 1}")


@dataclass(frozen=True)
class ListsConfig:
    """`distill.lists`: each pair's teacher candidates join the batch's lists (aladin.training.lists)."""

    hard: int = 0                # per pair: wrong images of its caption, wrong captions of its image; 0 = in-batch
    pool: int = 16               # drawn uniformly from the teacher's top-`pool` of each
    siblings: bool = False       # scenes: each pair's image also brings its family's other scenes

    def validate(self) -> None:
        require(self.hard >= 0, "hard", "must be >= 0 (0 = in-batch lists only)")
        require(self.pool >= self.hard, "pool", f"must be >= hard = {self.hard}")


@dataclass(frozen=True, kw_only=True)
class DistillParams(LossConfig, Training):
    """The student's section: its loss keys (mode, temperatures, ...) are LossConfig's."""

    student: StudentKind         # codebook (the teacher's score factorised) | transformer (`model`, the paper's)
    codebook: CodebookConfig
    model: MatchingConfig
    optim: OptimConfig
    batches: BatchesConfig
    lists: ListsConfig
    teacher_cache: bool          # teacher train embeddings computed once (vs a forward per batch)

    def validate(self) -> None:
        LossConfig.validate(self)
        Training.validate(self)
        require(self.batches.group <= self.optim.batch_size, "batches.group",
                f"must be <= optim.batch_size={self.optim.batch_size}")
        require(self.batches.group == 1 or self.mode != "triplet", "batches.group",
                "teacher-neighbour batches need the teacher: 1 with mode triplet")
        require(self.lists.hard == 0 or self.mode != "triplet", "lists.hard",
                "teacher candidates need the teacher: 0 with mode triplet")
        require(self.student == "transformer" or self.mode != "triplet", "student",
                "the codebook is the teacher's: transformer with mode triplet")

    @property
    def kind(self) -> str:
        """The student's model kind (aladin.models.factory.MODELS)."""
        return "codebook" if self.student == "codebook" else "matching"

    @property
    def head_config(self) -> "CodebookConfig | MatchingConfig":
        return self.codebook if self.student == "codebook" else self.model

    @property
    def student_optim(self) -> OptimConfig:
        """The student's schedule: `optim`, at codebook.lr for the codebook (the triplet baseline and
        the transformer were tuned at optim.lr)."""
        return dataclasses.replace(self.optim, lr=self.codebook.lr) if self.student == "codebook" else self.optim

    @property
    def loss(self) -> LossConfig:
        return LossConfig(**{k: getattr(self, k) for k in LossConfig.__dataclass_fields__})


# The distill keys the "without distillation" student reads (its params in dvc.yaml, checked by a
# test): a distillation-only key such as `temperature` must not re-run it.
# It is always the transformer (`model`): a student with no teacher has no codebook.
TRIPLET_BASELINE_KEYS = ("model", "optim", "margin", "warmup_epochs", "device", "threads", "nproc")


@dataclass(frozen=True, kw_only=True)
class CrossParams(Training):
    enabled: bool
    model: CrossEncoderConfig
    optim: OptimConfig
    pool: int                    # lists: the student's top-`pool` items per query (+ the pair's own item)
    hard_negatives: int          # 0: every wrong item of that list; n: n drawn by the teacher's softmax
    random_negatives: int        # per query and direction, drawn from all wrong items
    foil_negatives: bool         # scenes: each caption's verified foil, a negative of its image's list
    temperature: float           # of that softmax (ALBEF-style sampling) and of the lists' loss
    margin: float                # real data: list items kept below margin x the positive's teacher score
    select_images: int           # per-epoch selection: all pairs of the first N val images
    eval_images: int             # reported metrics: fold 0 of val, this many images
    eval_text_queries: int       # sampled captions, each against all eval_images images (0 = all)
    eval_image_queries: int      # sampled images, each against all fold captions (0 = all)
    eval_batch_size: int         # pairs per fusion batch when scoring

    def validate(self) -> None:
        super().validate()
        require(self.pool >= 1, "pool", "must be >= 1")
        require(0 <= self.hard_negatives <= self.pool, "hard_negatives", f"must be in [0, pool={self.pool}]")
        require(self.random_negatives >= 0, "random_negatives", "must be >= 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(0 < self.margin <= 1, "margin", "must be in (0, 1]")
        for name in ("select_images", "eval_images", "eval_batch_size"):
            require(getattr(self, name) >= 2, name, "must be >= 2")
        for name in ("eval_text_queries", "eval_image_queries"):
            require(getattr(self, name) >= 0, name, "must be >= 0")


# -- search and evaluation ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class IndexParams(IndexConfig):
    """The index's own config (stored in index/manifest.json) plus how the stage encodes."""

    batch_size: int              # student encoding batch
    device: str

    def validate(self) -> None:
        super().validate()
        require(self.batch_size > 0, "batch_size", "must be > 0")

    @property
    def index(self) -> IndexConfig:
        return IndexConfig(**{k: getattr(self, k) for k in IndexConfig.__dataclass_fields__})


TOP_K = 10                       # R@1/5/10 need a top-10 list


@dataclass(frozen=True, kw_only=True)
class EvaluateParams(Compute):
    rerank_k: int                # two-stage: student candidates per query re-ranked by the teacher
    rerank_depths: list[int]     # two-stage depth sweep (full test set), for the trade-off plot
    chunk_mb: float              # teacher similarity block per scoring step
    batch_size: int
    cross_fold_images: int       # cross-encoder row: fold 0 of the 1K protocol
    cross_text_queries: int      # sampled caption queries, each against all fold images (0 = all)
    cross_image_queries: int     # sampled image queries, each against all fold captions (0 = all)
    cross_rerank_k: int          # cross-encoder as re-ranker of the student's top-k, every fold-0 query

    def validate(self) -> None:
        super().validate()
        require(self.rerank_k >= TOP_K, "rerank_k", f"must be >= {TOP_K} (R@10 is read from the re-ranked list)")
        require(all(d > 0 for d in self.rerank_depths), "rerank_depths", "must be > 0")
        require(self.chunk_mb > 0, "chunk_mb", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.cross_fold_images > 0, "cross_fold_images", "must be > 0")
        require(self.cross_rerank_k >= TOP_K, "cross_rerank_k", f"must be >= {TOP_K}")


@dataclass(frozen=True, kw_only=True)
class LatencyParams:
    threads: int                 # torch and faiss threads; fixed so runs compare
    n_queries: int               # timed single text queries per measurement
    n_image_queries: int         # timed single image queries per measurement
    teacher_queries: int         # fixed query sample for the exhaustive teacher (slow)
    warmup: int
    batch_size: int              # batched throughput
    throughput_queries: int
    k: int
    sizes: list[int]             # student text-query scaling, images
    teacher_sizes: list[int]
    image_query_sizes: list[int]
    index_kinds: list[Kind]
    noise: float                 # norm of the perturbation of synthetic copies
    scaling_kind: Kind           # the approximate index timed beside flat as N grows
    scaling_nlist: int
    scaling_nprobe: int
    cross_queries: int           # fixed query sample for the cross-encoder (one pass per pair)
    cross_sizes: list[int]
    device: str

    def validate(self) -> None:
        for name in ("threads", "n_queries", "n_image_queries", "teacher_queries", "batch_size",
                     "throughput_queries", "k"):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(self.warmup >= 0, "warmup", "must be >= 0")
        for name in ("sizes", "teacher_sizes", "image_query_sizes"):
            require(len(getattr(self, name)) > 0 and min(getattr(self, name)) > 0, name, "must be positive sizes")
        require(all(kd in KINDS for kd in self.index_kinds), "index_kinds", f"must be among {list(KINDS)}")
        require(self.noise >= 0, "noise", "must be >= 0")
        require(self.cross_queries > 0 and min(self.cross_sizes, default=1) > 0, "cross_queries",
                "cross_queries and cross_sizes must be > 0")
        require(0 < self.scaling_nprobe <= self.scaling_nlist <= min(self.sizes), "scaling_nprobe",
                "need 0 < scaling_nprobe <= scaling_nlist <= the smallest size")


SECTIONS: dict[str, type] = {
    "tracking": TrackingParams, "data": DataParams, "features": FeaturesParams, "teacher": TeacherParams,
    "distill": DistillParams, "cross": CrossParams, "index": IndexParams, "evaluate": EvaluateParams,
    "latency": LatencyParams,
}


def load(name: str, path: str | os.PathLike = PARAMS_FILE) -> Any:
    """Section `name` of params.yaml as its dataclass; every key required (see module doc)."""
    return from_dict(SECTIONS[name], section(name, path), name, strict=True)


def validate_all(path: str | os.PathLike = PARAMS_FILE) -> None:
    """Every section and the seed, loaded and checked: the first stage runs this, so that a bad
    value stops `dvc repro` before DVC deletes a later stage's outputs to re-run it."""
    seed(path)
    for name in SECTIONS:
        load(name, path)


def seed(path: str | os.PathLike = PARAMS_FILE) -> int:
    """The shared seed of training and sampling (the data stage uses data.seed)."""
    value = load_params(path).get("seed")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{path}: 'seed' must be an integer, got {value!r}")
    return value
