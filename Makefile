# geoblock: the two commands of the README, and the benchmark.
.PHONY: run test bench
run:    ## set up, then start the proxy on 127.0.0.1:8080 with the shipped rules
	scripts/run-proxy.sh
test:   ## set up, then run the whole test suite under Python 3.11 and 3.12
	scripts/test.sh
bench:  ## set up, then run the benchmarks (figures in docs/performance.md)
	scripts/bench.sh
