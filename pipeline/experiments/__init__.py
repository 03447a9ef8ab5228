"""Commands and studies beyond the stages: the claims grid, the benchmark, the gradient-bias experiment."""
