"""The models: the alignment head (teacher, alignment.py), the matching head (student,
matching.py), the cross-encoder baseline (cross_encoder.py), the frozen-teacher-token inputs the
last two can share (token_inputs.py), and the factory that builds and loads any of them from a
config stored in its checkpoint (factory.py)."""
