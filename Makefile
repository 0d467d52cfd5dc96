# tandem: the two commands of README.md are `make serve` and `make test`.
BUILD ?= build
BUILD_ASAN ?= build-asan
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps build model test test-unit test-asan serve bench clean

deps:
	./scripts/install-deps

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

model:
	./scripts/fetch-model

# Every test: unit tests, tests against llama.cpp's outputs on the default model, and the
# same suite under ASan/UBSan.
test: build model
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) test-asan

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	cmake -S . -B $(BUILD_ASAN) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DTANDEM_SANITIZE=address,undefined -DTANDEM_CUDA=OFF $(CMAKE_FLAGS)
	cmake --build $(BUILD_ASAN) -j $(JOBS)
	cd $(BUILD_ASAN) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS)

# Until the daemon lands, `make serve` runs the generate tool on the default model.
serve: build model
	$(BUILD)/bin/tandem-generate --model $(MODEL) --chat "$${PROMPT:-Hello! What can you do?}" --max-tokens 128

bench: build model
	./bench/engine/run

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
