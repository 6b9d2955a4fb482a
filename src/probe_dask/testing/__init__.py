"""What tests and benchmarks share: synthetic runs in the users' layout, an independent
float64 reference, a CLI runner and a memory sampler."""
