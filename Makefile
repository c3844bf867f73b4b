# Thin entry points over scripts/. `make interop` runs the live interoperability checks
# against transformers, peft and llama.cpp (tests/interop/run.sh); it is not part of CI.
.PHONY: all build test run interop

all: build

build:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

run:
	bash scripts/run.sh

interop:
	bash tests/interop/run.sh
