"""Prompts: which are active and the only way to change them (:mod:`.prompt_book`), example
images turned into prompt images (:mod:`.visual_prompts`), the prompt store on disk
(:mod:`.store`) and the policy that keeps the two in step (:mod:`.keeper`: restore at start,
save after each change, what a failing store means).

May import: core.model.preprocessing, core.atomic_files. The prompt book knows nothing of the
store or of example images: an image prompt is a prompt image plus whatever its keeper attaches.
"""
