"""scalinglab: neural scaling-law experiments in JAX."""
