"""Reward models and labelers: reward learning from preferences, demonstrations, language,
an LLM's code (:mod:`embodied.rewards.text2reward`) or a VLM's judgement."""
