"""winclip.benchmarks: `winclip-bench` and the benchmark scripts; recorded results sit beside them."""
