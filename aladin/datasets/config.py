"""Parameters of the real-data sources: one sub-section of params.yaml `data:` per source.

Paths are the user's own downloads (nothing is fetched). Empty string = not given. All three
sub-sections may sit in params.yaml at once: `validate` checks ranges only, `check_selected`
(called by :func:`aladin.datasets.prepare`) the paths of the source actually selected.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import require
from ..data.manifest import SPLITS

__all__ = ["SPLITS", "KarpathyConfig", "PrecompConfig", "VinvlTsvConfig"]


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
