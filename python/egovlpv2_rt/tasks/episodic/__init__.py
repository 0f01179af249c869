"""Ego4D episodic memory: EgoNLQ (natural-language queries) and EgoMQ (moment queries).

Metadata readers, the window planner, feature extraction (MQ dual-video features, NLQ
query-conditioned fused features computed once per clip and fused per query), the span and
detection heads trained on those features, and synthetic data in the Ego4D formats.
"""
