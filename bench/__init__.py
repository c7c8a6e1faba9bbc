"""voxgate's benchmarks (`make bench`): one module per benchmark, a common runner and report.

Run: `make bench` (all), `make bench BENCH=synthesis,throughput` (some), `QUICK=1` for a short
trial whose report says it is one. Results: bench-results/<UTC time>/report.md and report.json,
copied to bench-results/latest/, with every process's log under logs/.

Adding a benchmark:
- a module here with `KEY`, `NUMBER` (its place in the report), `TITLE`, a docstring that
  starts `Benchmark N, title:` followed by its method (the report prints it), and
  `run(ctx: Context) -> Section`; list it in `BENCHMARKS` in `__main__.py`;
- measure each figure over rounds (`Figure.of(values, unit)`), compare subjects measured in
  the same run with `Figure.ratio` (paired when they ran in alternation), and state targets
  as `Target(label, figure, "<=" or ">=", threshold)`; put tables and notes in the `Section`;
- start what it measures through `processes` (`Server`, `RoundWorker`: own session, log
  file, peak memory, stop by pid) on ports from `free_port()`, and send traffic only to
  loopback (`http_client` refuses anything else);
- keep every phase bounded (`ctx.seconds`, `ctx.rounds` shorten them in a quick run) and
  install what it needs in bench/setup.sh.
The runner records the machine, the commit and the other processes' CPU use during each
benchmark, so figures from a busy machine are recognisable as such.
"""
