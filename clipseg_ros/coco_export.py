"""COCO exports of labelled frames, with run-length encoded masks (``pycocotools``).

No ROS, no torch. Two files that labelling tools (CVAT, Label Studio, ...) import:

- ``coco_semantic.json``: per image and prompt present in its label image, one annotation whose
  mask is exactly the label's pixels of that prompt (the label decodes back from them).
- ``coco_instances.json``: per object (a connected region of one prompt's thresholded mask, as
  in :mod:`clipseg_ros.objects`), its own mask, box, area and ``score`` (the object's max
  probability). Objects of different prompts may overlap, as the prompts' masks do.

Category ids are prompt index + 1, which is also the label value.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from pycocotools import mask as coco_mask


def encode_mask(mask: np.ndarray) -> dict:
    """A (H, W) bool/uint8 mask as COCO RLE {"size": [H, W], "counts": str} (a column-major
    mask is encoded without a copy)."""
    rle = coco_mask.encode(np.asfortranarray(mask.view(np.uint8) if mask.dtype == bool else mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_box_and_area(rle: dict) -> tuple[list[float], int]:
    compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in coco_mask.toBbox(compressed)], int(coco_mask.area(compressed))


def categories(prompts: Sequence[str]) -> list[dict]:
    return [{"id": k + 1, "name": p, "supercategory": "clipseg"} for k, p in enumerate(prompts)]


def semantic_annotations(label: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """One annotation per label value present in ``label`` (0 = none is left out)."""
    out = []
    for value in np.unique(label):
        if value == 0:
            continue
        rle = encode_mask(label == value)
        bbox, area = rle_box_and_area(rle)
        out.append({"id": first_id + len(out), "image_id": image_id, "category_id": int(value),
                    "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0})
    return out


def coco_document(prompts: Sequence[str], images: Sequence[dict], annotations: Iterable[dict],
                  description: str) -> dict:
    return {"info": {"description": description}, "licenses": [], "categories": categories(prompts),
            "images": list(images), "annotations": list(annotations)}


def instance_annotations(objects: Sequence[dict], image_id: int, first_id: int) -> list[dict]:
    """From a frame record's objects (each with ``rle``, ``prompt_index``, ``max_score``)."""
    out = []
    for obj in objects:
        bbox, area = rle_box_and_area(obj["rle"])
        out.append({"id": first_id + len(out), "image_id": image_id, "category_id": int(obj["prompt_index"]) + 1,
                    "segmentation": obj["rle"], "area": area, "bbox": bbox, "iscrowd": 0,
                    "score": float(obj["max_score"])})
    return out
