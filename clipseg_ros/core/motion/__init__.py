"""Time: masks carried between model frames by optical flow (:mod:`.propagation`), temporal
smoothing and the per-camera timeline of model and propagated frames (:mod:`.temporal`), object
tracks with stable ids (:mod:`.tracking`).

May import: core.results.
"""
