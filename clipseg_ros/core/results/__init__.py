"""What a frame's segmentation becomes: masks and the label image (:mod:`.postprocess`),
objects (:mod:`.objects`), camera geometry, 3D positions and clouds (:mod:`.geometry`,
:mod:`.scene`), pixel-centre resampling between grids (:mod:`.grids`) and the overlay image
(:mod:`.overlay`).

May import: core.motion.tracking (a scene carries its tracks); nothing else outside results.
"""
