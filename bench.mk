# Benchmarks and the long fault campaign; the Makefile includes this file.
#   make bench        every part of the benchmark (about 4 minutes on 2 cores) -> var/bench.json
#   make bench-quick  parts 1, 2 and 4 at reduced size (under 90 s) -> var/bench-quick.json
#   make soak         the fault campaign at full size: 200 runs per fault, 10,000 malformed
#                     messages, a 10 s coordinator outage (SOAK_ROUNDS=n repeats it n times)
SOAK_ROUNDS ?= 1

.PHONY: bench bench-quick soak

bench: $(STAMP)
	@mkdir -p var
	$(BIN)/python -m bench --json var/bench.json

bench-quick: $(STAMP)
	@mkdir -p var
	$(BIN)/python -m bench --quick --json var/bench-quick.json

soak: $(STAMP)
	FLOWCRAFT_SOAK=1 FLOWCRAFT_SOAK_ROUNDS=$(SOAK_ROUNDS) $(BIN)/pytest -q -p no:cacheprovider tests/fault
