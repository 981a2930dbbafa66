"""Placeholder: being written."""
TASKS: tuple[str, ...] = ()
MAX_EPISODE_STEPS = 1000
