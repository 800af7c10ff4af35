#!/bin/bash
# bench/net/run.sh: the network benchmarks alone (echo and http), now part
# of the suite: the same as `bash bench/run.sh echo http`, or
# `make bench BENCH="echo http"` (BENCHMARKS.md). QUICK=1 and the suite's
# other knobs work as there.
exec bash "$(dirname "$0")/../run.sh" echo http "$@"
