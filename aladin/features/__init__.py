"""Feature extraction: frozen pretrained backbones turn images into region sets and captions into
token sequences, the inputs of both ALADIN heads.

- ``load_vision_backbone(name_or_path, image_size, device)``: 'efficientnet-lite0' (grid cells as
  regions) or a local Hugging Face ViT / CLIP / DINOv2 directory (patch tokens as regions).
- ``load_text_backbone(name_or_path, max_tokens, device)``: 'all-MiniLM-L6-v2' or a local
  Hugging Face BERT-like directory (every word piece, [CLS]/[SEP] included).
- Both loaders take ``runtime`` (``features.runtime``: torch | onnx, see ``onnx_runtime.py``);
  ``store_backbones`` rebuilds a store's backbones on the runtime that extracted it.
- ``text_batch`` / ``image_batch``: raw queries -> ``aladin.store.Batch`` at search time.
- ``extract_features``: the features stage (dataset.json -> features/{train,val,test}).

Nothing here touches the network: packaged weights or local directories only.
"""
from .extract import extract_features
from .query import image_batch, store_backbones, text_batch
from .text import TextBackbone, load_text_backbone
from .vision import VisionBackbone, grid_boxes, load_vision_backbone

__all__ = ["extract_features", "image_batch", "store_backbones", "text_batch", "TextBackbone",
           "load_text_backbone", "VisionBackbone", "grid_boxes", "load_vision_backbone"]
