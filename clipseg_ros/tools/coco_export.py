"""COCO exports of labelled frames: run-length encoded masks (``pycocotools``), and optionally
polygons.

No ROS, no torch. Two files that COCO tools import (pycocotools, CVAT, FiftyOne read RLE):

- ``coco_semantic.json``: per image and prompt present in its label image, one annotation whose
  mask is exactly the label's pixels of that prompt (the label decodes back from them).
- ``coco_instances.json``: per object (a connected region of one prompt's thresholded mask, as
  in :mod:`clipseg_ros.core.results.objects`), its own mask, box, area and ``score`` (the object's max
  probability). Objects of different prompts may overlap, as the prompts' masks do.

Category ids are prompt index + 1, which is also the label value.

Label Studio's COCO importer reads ``segmentation`` as polygons only (RLE "not yet supported"):
``--coco-polygons`` writes ``coco_semantic_polygons.json`` and ``coco_instances_polygons.json``
beside them, the same annotations with each mask as the polygons of its regions' outer
boundaries (pixel edges, so they rasterise back to the mask within a pixel; a hole inside a region
is filled: COCO polygons cannot cut one out, the RLE files keep it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as coco_mask


def encode_mask(mask: np.ndarray) -> dict:
    """A (H, W) bool/uint8 mask as COCO RLE {"size": [H, W], "counts": str} (a column-major
    mask is encoded without a copy)."""
    rle = coco_mask.encode(np.asfortranarray(mask.view(np.uint8) if mask.dtype == bool else mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer boundaries of a (H, W) mask's 8-connected regions as COCO polygons ([x1, y1, x2,
    y2, ...], at least 3 points each), in pixel-edge coordinates (pixel (x, y) spans x..x+1).

    Contours are traced on the mask upsampled 2x (every pixel a 2x2 block, so one-pixel regions
    and lines have an inside) and mapped back by (q + 0.5) / 2: each edge then lies a quarter
    pixel outside the centres of the region's boundary pixels, concave or not, so the polygon
    holds exactly the region's pixel centres."""
    import cv2

    big = np.repeat(np.repeat(np.pad(mask.astype(np.uint8), 1), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = (contour[:, 0, :].astype(np.float64) + 0.5) / 2.0 - 1.0  # back to the unpadded grid
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def polygon_annotation(annotation: dict) -> dict:
    """The same annotation with its RLE ``segmentation`` as polygons (see the module doc)."""
    rle = annotation["segmentation"]
    mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return dict(annotation, segmentation=mask_polygons(mask))


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


def instance_annotations(objects: Sequence[dict], image_id: int, first_id: int) -> list[dict]:
    """From a frame record's objects (each with ``rle``, ``prompt_index``, ``max_score``)."""
    out = []
    for obj in objects:
        bbox, area = rle_box_and_area(obj["rle"])
        out.append({"id": first_id + len(out), "image_id": image_id, "category_id": int(obj["prompt_index"]) + 1,
                    "segmentation": obj["rle"], "area": area, "bbox": bbox, "iscrowd": 0,
                    "score": float(obj["max_score"])})
    return out
