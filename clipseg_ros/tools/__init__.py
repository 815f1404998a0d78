"""Offline programs: the demo (:mod:`.demo`, the node on sample images), the labeller
(:mod:`.label` = ``clipseg-label``, with :mod:`.label_sources` for folders, videos and bags,
:mod:`.label_bag`, :mod:`.label_outputs` and :mod:`.coco_export`), graphs exported ahead of time
(:mod:`.prepare` = ``clipseg-prepare``), a supervisor for node processes (:mod:`.child_node`) and synthetic moving scenes for tests and benchmarks
(:mod:`.synthetic_motion`), synthetic RGB-D scenes with a known mask
(:mod:`.synthetic_scenes`) and mask scores (:mod:`.mask_scores`).

May import: core and ros.
"""
