# geoblock: the two commands of the README, and the benchmark.
.PHONY: run test bench
ARGS ?=
run:    ## set up, then start the proxy on 127.0.0.1:8080 with the shipped rules (mitmdump options: ARGS="...")
	scripts/run-proxy.sh $(ARGS)
test:   ## set up, then run the whole test suite under Python 3.11 and 3.12
	scripts/test.sh
bench:  ## set up, then run the benchmarks (figures in docs/performance.md)
	scripts/bench.sh
