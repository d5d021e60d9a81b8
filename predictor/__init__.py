"""latkit's predictors: encodings, samplers, surrogate models, transfer and metrics (arriving in [4/5])."""
