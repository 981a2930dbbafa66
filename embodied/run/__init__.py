"""Running agents: rollouts, evaluation, videos (the trainer loop arrives with the algorithms)."""
