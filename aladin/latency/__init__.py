"""Latency: what each timing stage measures, split by what the measurement depends on.

- :mod:`.encoders` (stage `latency_encoders`): the bare backbones on one raw query, the floor
  every method pays. Depends on the backbones only.
- :mod:`.teacher` (stage `latency_teacher`): exhaustive teacher scoring of one query as the
  collection grows. Depends on the teacher and the backbones.
- :mod:`.scaling` (stage `latency_scaling`): index search alone as the collection grows, on
  synthetic vectors of the student's width (:mod:`.queries`). Independent of the student's weights.
- :mod:`.system` and :mod:`.cross` (stage `latency`): the search system end to end on the real
  test collection, per index kind and re-rank depth, and the cross-encoder's rows. The only part
  a student ablation re-runs.

:mod:`.report` joins them into metrics/latency.json with the targets; :mod:`.plots` draws them.
Timing conventions: :mod:`.timing`.
"""
